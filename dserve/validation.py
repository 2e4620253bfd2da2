"""Rules for user-given names, route prefixes and replica counts (Ray Serve's, plus what
dserve's keys and limits need).

``dserve.config`` re-exports them; they live apart so that the rules read in one place.
"""
from __future__ import annotations

import unicodedata
from typing import Any, Optional

__all__ = ["MAX_NAME_LENGTH", "MAX_REPLICAS_PER_DEPLOYMENT", "validate_num_replicas", "validate_name",
           "validate_route_prefix"]

MAX_NAME_LENGTH = 256  # application and deployment names, and route prefixes, are at most this long
MAX_REPLICAS_PER_DEPLOYMENT = 2000  # a larger num_replicas / max_replicas is rejected (measured: README "Scale")


def validate_num_replicas(value: Any, field: str = "num_replicas") -> Any:
    """``num_replicas`` is an int >= 0 and at most ``MAX_REPLICAS_PER_DEPLOYMENT``,
    "auto" or None."""
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{field} must be >= 0")
    if isinstance(value, int) and value > MAX_REPLICAS_PER_DEPLOYMENT:
        raise ValueError(f"{field} must be at most {MAX_REPLICAS_PER_DEPLOYMENT} (dserve's limit per deployment, "
                         f"see README \"Scale\"), got {value}")
    return value


def _control_character(text: str) -> Optional[str]:
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def validate_name(value: Any, field: str) -> str:
    """Ray Serve's rules for an application or deployment name, plus what dserve's keys
    need: a non-empty string, not only whitespace, without ``#`` (the controller's keys are
    ``app#deployment``), without control characters, at most ``MAX_NAME_LENGTH`` long.
    ``field`` ("application name", "deployment name") starts the error message."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise ValueError(f"{field} must not be empty or only whitespace, got {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{field} must be at most {MAX_NAME_LENGTH} characters, got {len(value)}")
    if "#" in value:
        raise ValueError(f"{field} must not contain '#', got {value!r}")
    bad = _control_character(value)
    if bad is not None:
        raise ValueError(f"{field} must not contain control characters (found {bad!r}), got {value!r}")
    return value


def validate_route_prefix(prefix: Optional[str]) -> Optional[str]:
    """Ray Serve's rules for a route prefix (None means: no HTTP route), plus: no control
    characters, no ``#`` or ``?`` (a request path never holds them), at most
    ``MAX_NAME_LENGTH`` long."""
    if prefix is None:
        return prefix
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ValueError(f'route_prefix must start with "/", got {prefix!r}')
    if len(prefix) > MAX_NAME_LENGTH:
        raise ValueError(f"route_prefix must be at most {MAX_NAME_LENGTH} characters, got {len(prefix)}")
    bad = _control_character(prefix)
    if bad is not None:
        raise ValueError(f"route_prefix must not contain control characters (found {bad!r}), got {prefix!r}")
    if "#" in prefix or "?" in prefix:
        raise ValueError(f"route_prefix must not contain '#' or '?', got {prefix!r}")
    if prefix != "/" and prefix.endswith("/"):
        raise ValueError(f'route_prefix must not end with "/" unless it is "/", got {prefix!r}')
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"route_prefix may not contain wildcards, got {prefix!r}")
    return prefix
