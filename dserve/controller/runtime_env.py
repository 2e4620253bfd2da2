"""``runtime_env`` on Dask: cluster-wide environment plugins, applied before replicas start.

``env_vars`` → ``distributed.diagnostics.plugin.Environ``, ``working_dir`` /
``py_modules`` (``"."``, relative or absolute directories, zip files) →
``UploadDirectory``, which lands them on every worker's ``sys.path`` (named and
deduplicated by content, so two directories with the same name do not collide
and a changed directory is uploaded again), ``pip`` → ``PipInstall``. Each restarts
the workers (nannies needed) and so every replica on them: they apply to the
whole cluster, not to one deployment as in Ray. An environment already applied
is not applied again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:
    from .plugin import Controller

__all__ = ["apply_runtime_env"]


def _as_directory(path: str) -> str:
    """An absolute directory to upload: Dask's ``UploadDirectory`` puts the directory's own
    name on the workers' ``sys.path``, so ``"."`` and relative paths are made absolute, and
    a zip file is unpacked first."""
    path = os.path.abspath(path)
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        target = tempfile.mkdtemp(prefix="dserve-working-dir-")
        with zipfile.ZipFile(path) as archive:
            archive.extractall(target)
        return target
    return path


def _key(kind: str, value: Any) -> str:
    return kind + "-" + hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


async def apply_runtime_env(controller: "Controller", runtime_env: Dict[str, Any]) -> None:
    if not runtime_env:
        return
    from distributed.diagnostics.plugin import Environ, PipInstall, UploadDirectory

    applied = controller.applied_envs  # environments already applied to the cluster
    plugins = []
    env_vars = runtime_env.get("env_vars")
    if env_vars:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            raise ValueError("runtime_env.env_vars must map strings to strings")
        plugins.append((_key("env", env_vars), lambda: Environ(env_vars)))
    for directory in [runtime_env.get("working_dir")] + list(runtime_env.get("py_modules") or []):
        if not directory:
            continue
        if not os.path.exists(directory):
            raise ValueError(
                f"runtime_env directory {directory!r} does not exist on the scheduler's host "
                "(dserve uploads local directories or zip files; URLs are not supported)"
            )
        upload = UploadDirectory(_as_directory(directory), update_path=True, restart_workers=True)
        # by content: a changed directory is uploaded again, the same content once
        plugins.append((_key("dir", hashlib.sha1(upload.data).hexdigest()), lambda u=upload: u))
    pip = runtime_env.get("pip")
    if pip:
        packages = pip if isinstance(pip, list) else pip.get("packages", [])
        plugins.append((_key("pip", packages), lambda: PipInstall(packages, restart_workers=True)))
    for key, make in plugins:
        if key in applied:
            continue
        await controller.client.register_plugin(make(), name=f"dserve-{key}")
        applied.add(key)
