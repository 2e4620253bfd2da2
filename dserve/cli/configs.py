"""What the CLI deploys: a config file, or an import path with ``key=value`` args, a
name, a route prefix and a ``runtime_env`` (``--runtime-env`` YAML file,
``--runtime-env-json``, ``--working-dir``), validated before anything is sent.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import click
import yaml

__all__ = ["runtime_env_options", "parse_args", "runtime_env_from_flags", "is_config_file", "read_config_file",
           "app_config", "load_target", "validate", "warn"]


def runtime_env_options(command: Any) -> Any:
    """``--runtime-env``, ``--runtime-env-json`` and ``--working-dir``, as ``serve`` has them."""
    for option in reversed([
        click.option("--runtime-env", default=None, help="YAML file holding a runtime_env for the application "
                                                         "(ignored for a config file)."),
        click.option("--runtime-env-json", default=None, help="The runtime_env as JSON (ignored for a config file)."),
        click.option("--working-dir", default=None, help="Local directory or zip file the application's code is "
                                                         "imported from; it overrides the runtime_env's working_dir "
                                                         "(uploaded to every worker, which restarts)."),
    ]):
        command = option(command)
    return command


def warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


def parse_args(pairs: List[str]) -> Dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.ClickException(f"application arguments must look like key=value, got {pair!r}")
        out[key] = value
    return out


def _read_mapping(path: str, what: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{path} is not valid YAML: {exc}") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise click.ClickException(f"{what} {path} must hold a mapping")
    return loaded


def _local(path: Any) -> Any:
    """A local directory or zip file made absolute (the scheduler's working directory is not
    this command's); URLs and other values unchanged (the schema rejects what it cannot use)."""
    if isinstance(path, str) and "://" not in path:
        return os.path.abspath(os.path.expanduser(path))
    return path


def runtime_env_from_flags(runtime_env: Optional[str], runtime_env_json: Optional[str],
                           working_dir: Optional[str]) -> Dict[str, Any]:
    """The runtime_env the flags give (``--working-dir`` overrides the one in the others);
    local paths in ``working_dir``/``py_modules`` become absolute."""
    if runtime_env and runtime_env_json:
        raise click.ClickException("give --runtime-env or --runtime-env-json, not both")
    env: Dict[str, Any] = {}
    if runtime_env:
        env = _read_mapping(runtime_env, "the runtime_env file")
    elif runtime_env_json:
        try:
            env = json.loads(runtime_env_json)
        except ValueError as exc:
            raise click.ClickException(f"--runtime-env-json is not valid JSON: {exc}") from None
        if not isinstance(env, dict):
            raise click.ClickException("--runtime-env-json must be a JSON object")
    if working_dir:
        env["working_dir"] = working_dir
    if env.get("working_dir"):
        env["working_dir"] = _local(env["working_dir"])
    if isinstance(env.get("py_modules"), list):
        env["py_modules"] = [_local(p) for p in env["py_modules"]]
    return env


def is_config_file(target: str) -> bool:
    return target.endswith((".yaml", ".yml", ".json")) or os.path.isfile(target)


def read_config_file(path: str) -> Dict[str, Any]:
    config = _read_mapping(path, "the config file")
    if "applications" not in config and "import_path" in config:  # single-app file
        config = {"applications": [config]}
    return config


def app_config(import_path: str, args: Dict[str, str], name: Optional[str], route_prefix: Optional[str],
               runtime_env: Dict[str, Any]) -> Dict[str, Any]:
    app: Dict[str, Any] = {"import_path": import_path, "args": args}
    if name:
        app["name"] = name
    if route_prefix:
        app["route_prefix"] = route_prefix
    if runtime_env:
        app["runtime_env"] = runtime_env
    return app


def load_target(target: str, args: List[str], name: Optional[str] = None, route_prefix: Optional[str] = None,
                runtime_env: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A deploy config from a config file, or from an import path and its options; the
    options that only go with an import path are ignored (with a warning) for a file, as
    ``serve`` does."""
    if not is_config_file(target):
        return {"applications": [app_config(target, parse_args(args), name, route_prefix, runtime_env or {})]}
    if args:
        raise click.ClickException("key=value arguments go with an import path, not a config file")
    ignored = [flag for flag, value in (("--name", name), ("--route-prefix", route_prefix),
                                        ("the runtime_env options", runtime_env)) if value]
    if ignored:
        warn(f"{', '.join(ignored)} ignored: the config file says what to deploy.")
    return read_config_file(target)


def validate(config: Dict[str, Any]) -> None:
    from pydantic import ValidationError

    from ..schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise click.ClickException(f"invalid config: {where}: {first['msg']}") from None
