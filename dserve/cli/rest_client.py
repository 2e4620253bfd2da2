"""The CLI's side of the REST admin API: which address, which token, one request.

The address is ``-a/--address``, else ``DSERVE_REST_ADDRESS``, else the REST API of
the cluster ``dserve start`` launched, else ``http://127.0.0.1:52365``. Every failure
becomes a one-line ``click.ClickException``, never a traceback.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import click
import httpx

import dserve.launcher as launcher
from ..auth import HOW_TO_SUPPLY, AuthError, bearer_header, load_token
from ..config import DEFAULT_HOST, DEFAULT_REST_PORT

__all__ = ["DEFAULT_REST", "rest_address", "request"]

DEFAULT_REST = f"http://{DEFAULT_HOST}:{DEFAULT_REST_PORT}"
REST_TIMEOUT_S = 60.0


def rest_address(address: Optional[str]) -> str:
    if address:
        return address.rstrip("/")
    env = os.environ.get("DSERVE_REST_ADDRESS")
    if env:
        return env.rstrip("/")
    launched = launcher.launched()
    if launched and launched.get("rest_address"):
        return launched["rest_address"]
    return DEFAULT_REST


def _token() -> Optional[str]:
    """The REST token: ``DSERVE_REST_TOKEN`` (compatibility), else the auth token sources."""
    try:
        return os.environ.get("DSERVE_REST_TOKEN") or load_token()
    except AuthError as exc:
        raise click.ClickException(str(exc)) from None


def request(method: str, address: Optional[str], path: str, **kwargs: Any) -> httpx.Response:
    base = rest_address(address)
    headers = bearer_header(_token())
    try:
        response = httpx.request(method, base + path, headers=headers, timeout=REST_TIMEOUT_S, **kwargs)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the dserve REST API at {base}: {exc}") from None
    if response.status_code == 401:
        raise click.ClickException(f"the REST API refused the request (401): {HOW_TO_SUPPLY}")
    if response.status_code >= 400:
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        raise click.ClickException(detail.splitlines()[0] if detail else f"HTTP {response.status_code}")
    return response
