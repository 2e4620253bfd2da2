"""``dserve run``: deploy applications (a config file, or an import path with ``key=value``
args), print their progress until RUNNING and, by default, serve in the foreground
until Ctrl-C, which shuts Serve down (quietly) as ``serve run`` does.

The cluster: ``-a/--address`` (a scheduler), else ``$DSERVE_ADDRESS`` or Dask's configured
scheduler, else the cluster ``dserve start`` launched (when its scheduler is alive and
provably the process it started), else an embedded cluster that lives as long as this
command (so ``--non-blocking`` needs one of the others). An import path is imported
here, as ``serve.run`` would (from ``--app-dir``, or the runtime_env's ``working_dir`` /
``py_modules``), its code ships by value, so any cluster runs it, and the controller
applies its runtime_env before its replicas start; other applications stay. A config
file is deployed as ``dserve deploy`` does: each application is built on a worker, and
applications not in the file are deleted.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import zipfile
from typing import Any, Dict, List, Optional

import click

import dserve.launcher as launcher
from ..config import CLI_RELOAD_PERIOD_S
from .configs import is_config_file, load_target, parse_args, runtime_env_from_flags, runtime_env_options, validate
from .progress import DeployFailed, from_status, watch

__all__ = ["run"]

logger = logging.getLogger("dserve")


def _importable_from(module: str) -> str:
    """The ``sys.path`` entry that makes a ``py_modules`` entry importable here as on the
    workers: a zip or wheel itself (its contents at the root), else the directory holding a
    package directory or ``.py`` file (imported by its own name)."""
    path = os.path.abspath(module)
    return path if os.path.isfile(path) and zipfile.is_zipfile(path) else os.path.dirname(path)


def _cluster(address: Optional[str]) -> tuple:
    """(scheduler address or None for an embedded cluster, how to name it for the user)."""
    from ..cluster import find_address

    found = find_address(address)
    if found:
        return found, found
    record = launcher.running()
    if record is not None:
        return record["address"], f"the cluster `dserve start` launched ({record['address']})"
    return None, "an embedded cluster"


class _Deployer:
    """Deploys the run's applications (again, with the code as it is now, on ``--reload``)
    and waits for them, printing their progress."""

    def __init__(self, api: Any, target: str, config: Dict[str, Any], imported: Optional[Dict[str, Any]]) -> None:
        from ..schema import ServeDeploySchema

        self.api = api
        self.target = target
        self.config = config
        self.imported = imported  # {"args", "name", "route_prefix", "runtime_env"}: imported here
        self.names: List[str] = [a.name for a in ServeDeploySchema.model_validate(config).applications]

    def deploy(self, fresh: bool = False) -> None:
        from ..runtime import get_runtime

        runtime = get_runtime()
        if self.imported is not None:
            self.api.deploy_specs(runtime, [self._spec(fresh)])
        else:
            result = self.api._sync(runtime, runtime.rpc("dserve_deploy_config", config=self.config, force=fresh))
            if "error" in result:
                raise click.ClickException(result["error"].splitlines()[0])
        watch(lambda: from_status(self.api._sync(runtime, runtime.rpc("dserve_status"))), self.names, click.echo)

    def _spec(self, fresh: bool) -> Any:
        from ..build import application_spec, import_application
        from ..deployment import _UNSET
        from ..serialization import user_traceback

        options = self.imported
        try:
            app = import_application(self.target, options["args"], fresh=fresh)
        except Exception as exc:  # noqa: BLE001 - the user's import error, with their traceback
            raise click.ClickException(f"cannot import {self.target}:\n{user_traceback(exc).rstrip()}") from None
        spec = application_spec(app, options["name"] or "default", options["route_prefix"] or _UNSET)
        if options["runtime_env"]:
            spec.source["runtime_env"] = options["runtime_env"]  # the controller applies it first
        return spec


def _snapshot_files(directory: str) -> Dict[str, float]:
    out = {}
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for f in files:
            if f.endswith((".py", ".yaml", ".yml")):
                path = os.path.join(root, f)
                try:
                    out[path] = os.path.getmtime(path)
                except OSError:
                    pass  # removed while walking
    return out


def _serve(deployer: _Deployer, reload_dir: Optional[str], snapshot: Optional[Dict[str, float]]) -> None:
    """Until Ctrl-C; with ``reload_dir``, redeploy when a file in it differs from
    ``snapshot`` (taken before the first deploy) and after each change (a failed redeploy
    is reported and the last version keeps serving)."""
    while True:
        time.sleep(CLI_RELOAD_PERIOD_S)
        if reload_dir:
            current = _snapshot_files(reload_dir)
            if current != snapshot:
                snapshot = current
                click.echo("Files changed; redeploying.")
                try:
                    deployer.deploy(fresh=True)
                except (DeployFailed, click.ClickException) as exc:
                    click.echo(f"Redeploying failed: {exc}", err=True)
                except Exception as exc:  # noqa: BLE001 - e.g. a rejected deploy: reported, the old version serves
                    click.echo(f"Redeploying failed: {type(exc).__name__}: {exc}", err=True)


def _disconnect(api: Any) -> None:
    """Leave the applications running: close this process's connection only."""
    from ..runtime import current_runtime, set_runtime

    runtime = current_runtime()
    if runtime is not None:
        try:
            api._sync(runtime, runtime.close(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - exiting anyway
            logger.info("dserve run: closing the connection: %r", exc)
        set_runtime(None)


@click.command(help="Deploy a config file, or an import path with key=value arguments, and serve it in the "
                    "foreground until Ctrl-C, which shuts Serve down.")
@click.argument("config_or_import_path")
@click.argument("arguments", nargs=-1)
@runtime_env_options
@click.option("-d", "--app-dir", default=".", show_default=True,
              help="Directory to import the application from (put first on sys.path here, and on the embedded "
                   "cluster's workers).")
@click.option("-a", "--address", default=None,
              help="Scheduler address (default $DSERVE_ADDRESS, else the cluster `dserve start` launched, else an "
                   "embedded cluster).")
@click.option("--blocking/--non-blocking", default=True, show_default=True,
              help="Serve in the foreground until Ctrl-C, or deploy, wait until RUNNING and return (the cluster "
                   "must outlive the command: `dserve start` or -a).")
@click.option("-r", "--reload", is_flag=True,
              help="Redeploy when a .py/.yaml file in --working-dir (else --app-dir) changes.")
@click.option("--route-prefix", default=None, help="Route prefix (import paths only; default /).")
@click.option("--name", default=None, help="Application name (import paths only; default 'default').")
@click.option("--http-port", default=None, type=int, help="Port of the HTTP proxies (dserve's).")
def run(config_or_import_path: str, arguments: tuple, runtime_env: Optional[str], runtime_env_json: Optional[str],
        working_dir: Optional[str], app_dir: str, address: Optional[str], blocking: bool, reload: bool,
        route_prefix: Optional[str], name: Optional[str], http_port: Optional[int]) -> None:
    if reload and not blocking:
        raise click.ClickException("--reload and --non-blocking conflict: reloading needs the command running")
    app_dir = os.path.abspath(app_dir)
    sys.path.insert(0, app_dir)
    env = runtime_env_from_flags(runtime_env, runtime_env_json, working_dir)
    config = load_target(config_or_import_path, list(arguments), name, route_prefix, env)
    validate(config)
    scheduler, where = _cluster(address)
    if scheduler is None and not blocking:
        raise click.ClickException("--non-blocking needs a cluster that outlives this command: run `dserve start` "
                                   "first or give -a/--address (an embedded cluster stops when `dserve run` exits)")
    if scheduler is None:  # the embedded cluster's workers import from the app directory too
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [app_dir, os.environ.get("PYTHONPATH")]))
    imported = None
    if not is_config_file(config_or_import_path):
        imported = {"args": parse_args(list(arguments)), "name": name, "route_prefix": route_prefix,
                    "runtime_env": env}
        modules = [_importable_from(m) for m in env.get("py_modules") or [] if isinstance(m, str)]
        for directory in reversed([env.get("working_dir")] + modules):
            if isinstance(directory, str) and os.path.exists(directory):
                sys.path.insert(0, directory)  # imported here from where the workers will import it
    import dserve.api as api

    deployer = _Deployer(api, config_or_import_path, config, imported)
    reload_dir = (env.get("working_dir") or app_dir) if reload else None
    snapshot = _snapshot_files(reload_dir) if reload_dir else None  # a change while deploying counts too
    click.echo(f"Deploying {config_or_import_path} to {where}.")
    leave_running = False
    try:
        try:
            api.start(address=scheduler, http_options={"port": http_port} if http_port else None)
            deployer.deploy()
        except DeployFailed as exc:
            leave_running = not blocking  # as `dserve deploy --wait`: the failed application stays to inspect
            raise click.ClickException(str(exc)) from None
        except (click.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - one line for the user
            raise click.ClickException(str(exc).strip().splitlines()[0]) from None
        if not blocking:
            leave_running = True
            click.echo(f"Deployed to {where}; left running (`dserve status`, `dserve shutdown`).")
            return
        click.echo("Deployed; serving until Ctrl-C.")
        _serve(deployer, reload_dir, snapshot)
    except KeyboardInterrupt:
        click.echo("Shutting down.")
    finally:
        try:
            _disconnect(api) if leave_running else api.shutdown()
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: exiting anyway
