"""Token authentication for the REST admin API, modelled on Ray's ``RAY_AUTH_MODE``.

``DSERVE_AUTH_MODE`` is ``token`` (the default) or ``disabled``. The token comes
from, highest first: ``DSERVE_AUTH_TOKEN``; the file ``DSERVE_AUTH_TOKEN_PATH``
names (unreadable or empty is a fatal error, never a silent fallback); the
default file ``~/.dserve/auth_token`` (``$DSERVE_HOME/auth_token``). The process
that starts a controller calls ``ensure_token``: with auth on and no token
anywhere it generates one, writes it to the default file with mode 0600 and
logs where it is (never the token itself). Every client dserve ships (the CLI,
``dserve start``'s readiness poll) finds the token the same way.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
from typing import Optional

from .exceptions import RayServeException

__all__ = [
    "AuthError", "auth_enabled", "home_dir", "default_token_path", "load_token", "ensure_token",
    "bearer_header", "token_matches", "HOW_TO_SUPPLY",
]

logger = logging.getLogger("dserve")

TOKEN_MODE, DISABLED_MODE = "token", "disabled"
HOW_TO_SUPPLY = ("send 'Authorization: Bearer <token>'; dserve's CLI reads the token from DSERVE_AUTH_TOKEN, "
                 "the file named by DSERVE_AUTH_TOKEN_PATH, or ~/.dserve/auth_token")


class AuthError(RayServeException):
    """The auth settings are unusable (unknown mode, unreadable or empty token file)."""


def auth_enabled() -> bool:
    """``DSERVE_AUTH_MODE``: token (default) or disabled."""
    mode = os.environ.get("DSERVE_AUTH_MODE", TOKEN_MODE).strip().lower()
    if mode not in (TOKEN_MODE, DISABLED_MODE):
        raise AuthError(f"DSERVE_AUTH_MODE must be {TOKEN_MODE!r} or {DISABLED_MODE!r}, not {mode!r}")
    return mode == TOKEN_MODE


def home_dir() -> str:
    """dserve's per-user directory (``DSERVE_HOME``, default ``~/.dserve``)."""
    return os.environ.get("DSERVE_HOME") or os.path.join(os.path.expanduser("~"), ".dserve")


def default_token_path() -> str:
    return os.path.join(home_dir(), "auth_token")


def _read(path: str, what: str) -> str:
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as exc:
        raise AuthError(f"cannot read the auth token file {path} ({what}): {exc.strerror or exc}") from None
    if not token:
        raise AuthError(f"the auth token file {path} ({what}) is empty")
    return token


def load_token() -> Optional[str]:
    """The token from the environment or the token files, or ``None`` when there is none."""
    token = os.environ.get("DSERVE_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("DSERVE_AUTH_TOKEN_PATH")
    if path:
        return _read(path, "DSERVE_AUTH_TOKEN_PATH")
    default = default_token_path()
    if os.path.exists(default):
        return _read(default, "the default token file")
    return None


def ensure_token() -> Optional[str]:
    """For the process that starts a controller: the token, generated (0600, at the default
    path) when auth is on and none exists; ``None`` when auth is disabled."""
    if not auth_enabled():
        return None
    token = load_token()
    if token:
        return token
    path = default_token_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return _read(path, "the default token file")
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    logger.info("dserve: generated a REST API auth token in %s (mode 0600)", path)
    return token


def bearer_header(token: Optional[str]) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_matches(header_value: bytes, token: str) -> bool:
    """Constant-time comparison of an ``Authorization`` header with the expected bearer token."""
    return hmac.compare_digest(header_value, f"Bearer {token}".encode())
