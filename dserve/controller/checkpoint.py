"""The controller's goal state on disk, so a restarted scheduler restores it.

Written after every change to the goal state (deploy, config deploy, delete)
atomically: to a temporary file, fsync'd, then ``os.replace``d over the old
one. It holds applications (code, arguments, options, user_config), the last
declarative config and the controller's options, never live replica
addresses: Dask workers do not outlive their scheduler, so replicas are
always recreated.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Dict, Optional

import cloudpickle

__all__ = ["save", "load"]

logger = logging.getLogger("dserve.controller")

FORMAT_VERSION = 1


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


def load(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            state = cloudpickle.loads(f.read())
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged file must not stop the scheduler
        logger.error("dserve: could not read the state file %s (%r); starting empty", path, exc)
        return None
    if state.get("format") != FORMAT_VERSION:
        logger.error("dserve: state file %s has an unknown format; starting empty", path)
        return None
    return state
