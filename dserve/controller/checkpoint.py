"""The controller's goal state on disk, so a restarted scheduler restores it.

Written after every change to the goal state (deploy, config deploy, delete,
proxy options) durably: to a temporary file in the same directory, fsync'd,
``os.replace``d over the old one, then the directory fsync'd so the rename
itself survives a power loss. It holds applications (code, arguments,
options, user_config), the last declarative config and the proxy options set
at runtime, never live replica addresses: Dask workers do not outlive their
scheduler, so replicas are always recreated.

A file that cannot be read is never overwritten: ``set_aside`` moves it to
``<path>.corrupt-<unix time>`` for the operator to inspect.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any, Dict, Optional

import cloudpickle

__all__ = ["save", "load", "set_aside", "CheckpointError"]

logger = logging.getLogger("dserve.controller")

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """The state file exists but cannot be used (unreadable, corrupt, unknown format)."""


def save(path: str, state: Dict[str, Any]) -> None:
    data = cloudpickle.dumps({"format": FORMAT_VERSION, **state})
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dserve-state-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (POSIX); platforms that cannot open a directory skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # e.g. a filesystem without directory fsync
        logger.info("dserve: could not fsync the directory %s: %s", directory, exc)
    finally:
        os.close(fd)


def load(path: str) -> Optional[Dict[str, Any]]:
    """The saved state; ``None`` when there is no file; ``CheckpointError`` when the file
    cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{type(exc).__name__}: {exc}") from None
    try:
        state = cloudpickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises
        raise CheckpointError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"unknown format {found!r} (this dserve reads format {FORMAT_VERSION})")
    return state


def set_aside(path: str) -> str:
    """Move an unusable state file to ``<path>.corrupt-<unix time>`` (never over an
    earlier one); returns the new path. Raises ``OSError`` when it cannot be moved."""
    stamp = int(time.time())
    while os.path.exists(f"{path}.corrupt-{stamp}"):
        stamp += 1
    target = f"{path}.corrupt-{stamp}"
    os.rename(path, target)
    _fsync_directory(os.path.dirname(os.path.abspath(path)) or ".")
    return target
