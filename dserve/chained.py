"""Responses passed as arguments of another handle call (chained calls).

A ``DeploymentResponse`` given directly as an argument is replaced by its result before the
call is sent. One nested a level down, in a list, tuple or dict argument, becomes a
``ResolvedResponse`` that the receiver ``await``s, as it would the object reference Ray
passes there. dserve has no object store, so its value is fetched before the call is sent
rather than by the receiver. The response class is a parameter: this module is a leaf.
"""
from __future__ import annotations

import asyncio
from typing import Any, Tuple

__all__ = ["ResolvedResponse", "has_responses", "resolve_responses"]


class ResolvedResponse:
    """A nested response's value, for the receiver to ``await``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        return asyncio.sleep(0, self.value).__await__()

    def __repr__(self) -> str:
        return f"ResolvedResponse({self.value!r})"


def _holds(value: Any, response: type) -> bool:
    kind = type(value)
    if kind is list or kind is tuple or kind is dict:
        return any(isinstance(v, response) for v in (value.values() if kind is dict else value))
    return isinstance(value, response)


def has_responses(args: tuple, kwargs: dict, response: type) -> bool:
    """Whether any argument is, or directly holds, a ``response``."""
    return any(_holds(a, response) for a in args) or any(_holds(v, response) for v in kwargs.values())


async def _resolve(value: Any, response: type) -> Any:
    if isinstance(value, response):
        return await value
    kind = type(value)
    if kind is dict:
        return {k: ResolvedResponse(await v) if isinstance(v, response) else v for k, v in value.items()}
    if kind is list or kind is tuple:
        return kind([ResolvedResponse(await v) if isinstance(v, response) else v for v in value])
    return value


async def resolve_responses(args: tuple, kwargs: dict, response: type) -> Tuple[tuple, dict]:
    """The arguments with every response replaced (see the module docstring)."""
    return (tuple([await _resolve(a, response) for a in args]),
            {k: await _resolve(v, response) for k, v in kwargs.items()})
