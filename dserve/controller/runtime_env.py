"""``runtime_env`` on Dask: cluster-wide environment plugins, applied before replicas start.

``env_vars`` → ``distributed.diagnostics.plugin.Environ``, ``working_dir`` /
``py_modules`` (``"."``, relative or absolute directories, zip files) →
:class:`ShipDirectory`, which lands them on every worker's ``sys.path`` (named and
deduplicated by content, so two directories with the same name do not collide
and a changed directory is uploaded again), ``pip`` → ``PipInstall``. Each restarts
the workers (nannies needed) and so every replica on them: they apply to the
whole cluster, not to one deployment as in Ray. An environment already applied
is not applied again.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any, Dict

from distributed.diagnostics.plugin import NannyPlugin

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["apply_runtime_env", "ShipDirectory"]

_SKIPPED = {".git", "__pycache__", ".pytest_cache", ".mypy_cache",
            "dask-scratch-space", "dask-worker-space"}  # Dask's local directories, if inside the code


def _skipped(name: str) -> bool:
    """A directory left out: tool caches, Dask's scratch space and earlier unpacked copies
    (a scratch directory inside the working_dir would otherwise ship itself, growing)."""
    return name in _SKIPPED or name.startswith(("dserve-code-", ".dserve-code-"))


def _archive(path: str, under_own_name: bool) -> bytes:
    """``path`` as zip bytes: a zip file as it is; a directory's contents (``.git``, bytecode,
    Dask's scratch space left out), at the archive's root for a ``working_dir`` or under the directory's
    own name for a ``py_modules`` entry (so ``import <name>`` works); a lone ``.py`` file
    under its own name."""
    path = os.path.abspath(path)
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            return f.read()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if os.path.isfile(path):
            archive.write(path, os.path.basename(path))
            return buffer.getvalue()
        prefix = os.path.basename(path.rstrip(os.sep)) if under_own_name else ""
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not _skipped(d))
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")):
                    continue
                full = os.path.join(root, name)
                archive.write(full, os.path.join(prefix, os.path.relpath(full, path)))
    return buffer.getvalue()


def _unpack(base: str, digest: str, data: bytes) -> str:
    """Extract ``data`` once per host into ``base/dserve-code-<digest>``. Nannies of one host
    share ``base`` and run this at the same moment, so each extracts into its own temporary
    directory and renames it into place; the first rename wins and the others drop theirs."""
    target = os.path.join(base, f"dserve-code-{digest}")
    if os.path.isdir(target):
        return target
    os.makedirs(base, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".dserve-code-{digest}-", dir=base)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extractall(scratch)
        os.rename(scratch, target)
    except OSError:
        if not os.path.isdir(target):
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


class ShipDirectory(NannyPlugin):
    """A nanny plugin that puts a directory's (or zip file's) contents on the worker's
    ``sys.path`` and restarts the worker. Unlike Dask's ``UploadDirectory`` it is safe for
    several nannies sharing one local directory, and it skips ``.git``/bytecode by name
    rather than any path that merely contains ``tests`` or ``docs``."""

    restart = True
    idempotent = True

    def __init__(self, path: str, under_own_name: bool = False) -> None:
        self.data = _archive(path, under_own_name)
        self.digest = hashlib.sha1(self.data).hexdigest()[:12]

    def setup(self, nanny: Any) -> None:
        root = _unpack(nanny.local_directory, self.digest, self.data)
        if root not in sys.path:
            sys.path.insert(0, root)


def _key(kind: str, value: Any) -> str:
    return kind + "-" + hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


async def apply_runtime_env(controller: "Controller", runtime_env: Dict[str, Any]) -> None:
    if not runtime_env:
        return
    from distributed.diagnostics.plugin import Environ, PipInstall

    applied = controller.applied_envs  # environments already applied to the cluster
    plugins = []
    env_vars = runtime_env.get("env_vars")
    if env_vars:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            raise ValueError("runtime_env.env_vars must map strings to strings")
        plugins.append((_key("env", env_vars), lambda: Environ(env_vars)))
    directories = [(runtime_env.get("working_dir"), False)]
    directories += [(module, True) for module in runtime_env.get("py_modules") or []]
    for directory, under_own_name in directories:
        if not directory:
            continue
        if not os.path.exists(directory):
            raise ValueError(
                f"runtime_env directory {directory!r} does not exist on the scheduler's host "
                "(dserve uploads local directories or zip files; URLs are not supported)"
            )
        upload = ShipDirectory(directory, under_own_name)
        # by content: a changed directory is uploaded again, the same content once
        plugins.append((_key("dir", upload.digest), lambda u=upload: u))
    pip = runtime_env.get("pip")
    if pip:
        packages = pip if isinstance(pip, list) else pip.get("packages", [])
        plugins.append((_key("pip", packages), lambda: PipInstall(packages, restart_workers=True)))
    for key, make in plugins:
        if key in applied:
            continue
        await controller.client.register_plugin(make(), name=f"dserve-{key}")
        applied.add(key)
