"""The ``dserve`` command line: start, run, deploy, status, config, logs, shutdown, build.

``deploy``/``status``/``config``/``logs``/``shutdown`` talk to the REST admin API
(``-a/--address``, ``DSERVE_REST_ADDRESS``, or the cluster ``dserve start``
launched); ``start`` and ``run`` talk to a Dask scheduler. User mistakes end
with a one-line message and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import click
import httpx
import yaml

import dserve.launcher as launcher
from .auth import HOW_TO_SUPPLY, AuthError, bearer_header, default_token_path, load_token
from .config import (DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_REST_PORT, LOGS_DEFAULT_TAIL,
                     LOGS_FOLLOW_PERIOD_S)

__all__ = ["cli"]

DEFAULT_REST = f"http://{DEFAULT_HOST}:{DEFAULT_REST_PORT}"


def _rest_address(address: Optional[str]) -> str:
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


def _request(method: str, address: Optional[str], path: str, **kwargs: Any) -> httpx.Response:
    base = _rest_address(address)
    headers = bearer_header(_token())
    try:
        response = httpx.request(method, base + path, headers=headers, timeout=60, **kwargs)
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


def _parse_args(pairs: List[str]) -> Dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.ClickException(f"application arguments must look like key=value, got {pair!r}")
        key, _, value = pair.partition("=")
        out[key] = value
    return out


def _load_config(target: str, args: List[str], name: Optional[str] = None,
                 route_prefix: Optional[str] = None) -> Dict[str, Any]:
    """A deploy config from a YAML file, or from an import path and key=value args."""
    if target.endswith((".yaml", ".yml", ".json")) or os.path.isfile(target):
        if args:
            raise click.ClickException("key=value arguments go with an import path, not a config file")
        try:
            with open(target) as f:
                config = yaml.safe_load(f) or {}
        except OSError as exc:
            raise click.ClickException(f"cannot read {target}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise click.ClickException(f"{target} is not valid YAML: {exc}") from None
        if not isinstance(config, dict):
            raise click.ClickException(f"{target} must hold a mapping")
        if "applications" not in config and "import_path" in config:  # single-app file
            config = {"applications": [config]}
        return config
    app: Dict[str, Any] = {"import_path": target, "args": _parse_args(args)}
    if name:
        app["name"] = name
    if route_prefix:
        app["route_prefix"] = route_prefix
    return {"applications": [app]}


def _validate(config: Dict[str, Any]) -> None:
    from pydantic import ValidationError

    from .schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise click.ClickException(f"invalid config: {where}: {first['msg']}") from None


@click.group(help="dserve: Ray Serve's API on Dask. Deploy, inspect and manage applications.")
def cli() -> None:
    pass


@cli.command(help="Start dserve on a Dask cluster (or launch a detached local one) and return.")
@click.option("--address", default=None, help="Scheduler address (tcp://host:8786). Without it a local cluster is launched.")
@click.option("--http-host", default=DEFAULT_HOST, show_default=True)
@click.option("--http-port", default=DEFAULT_HTTP_PORT, type=int, show_default=True)
@click.option("--proxy-location", default="EveryNode", show_default=True,
              type=click.Choice(["EveryNode", "HeadOnly", "Disabled"], case_sensitive=False))
@click.option("--grpc-port", default=DEFAULT_GRPC_PORT, type=int, show_default=True)
@click.option("--grpc-servicer-functions", multiple=True,
              help="Import path of an add_XServicer_to_server function (repeatable); enables the gRPC proxy.")
@click.option("--rest-port", default=DEFAULT_REST_PORT, type=int, show_default=True, help="REST admin API port (launched clusters).")
@click.option("--rest-host", default=DEFAULT_HOST, show_default=True,
              help="Address the REST admin API binds (launched clusters); it requires the auth token.")
@click.option("--n-workers", default=2, type=int, show_default=True, help="Workers of a launched cluster.")
@click.option("--nthreads", default=4, type=int, show_default=True, help="Threads (CPU slots) per launched worker.")
def start(address: Optional[str], http_host: str, http_port: int, proxy_location: str, grpc_port: int,
          grpc_servicer_functions: tuple, rest_port: int, rest_host: str, n_workers: int, nthreads: int) -> None:
    http_options = {"host": http_host, "port": http_port}
    grpc_options = {"port": grpc_port, "grpc_servicer_functions": list(grpc_servicer_functions)}
    if address:
        import dserve.api as api

        try:
            api.start(http_options=http_options, grpc_options=grpc_options, proxy_location=proxy_location,
                      address=address)
        except Exception as exc:  # noqa: BLE001
            raise click.ClickException(f"could not start dserve on {address}: {exc}") from None
        click.echo(f"dserve is running on the Dask cluster at {address}.")
        return
    record = launcher.launched()
    if record and launcher.ours(record):
        raise click.ClickException(f"a cluster launched by `dserve start` is already running ({record['address']}); "
                                   "run `dserve shutdown` first")
    try:
        state = launcher.launch_local(http_host, http_port, proxy_location, rest_port, n_workers, nthreads,
                                      grpc_options, rest_host=rest_host)
    except (launcher.LaunchError, AuthError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Started a local Dask cluster with dserve.\n  scheduler:  {state['address']}\n"
               f"  REST API:   {state['rest_address']} (token: DSERVE_AUTH_TOKEN or {default_token_path()})\n"
               f"  HTTP:       http://{http_host}:{http_port}\n"
               f"  Serve page: {state['serve_page']} (open it once as ...?token=<token>)\n"
               f"  logs:       {state['log']}\n"
               "Stop it with `dserve shutdown`.")


@cli.command(help="Deploy a config file (or an import path) through the REST API.")
@click.argument("config_or_import_path")
@click.argument("arguments", nargs=-1)
@click.option("-a", "--address", default=None, help=f"REST API address (default $DSERVE_REST_ADDRESS or {DEFAULT_REST}).")
@click.option("--name", default=None, help="Application name (import paths only).")
@click.option("--route-prefix", default=None, help="Route prefix (import paths only).")
def deploy(config_or_import_path: str, arguments: tuple, address: Optional[str], name: Optional[str],
           route_prefix: Optional[str]) -> None:
    config = _load_config(config_or_import_path, list(arguments), name, route_prefix)
    _validate(config)
    _request("PUT", address, "/api/serve/applications/", json=config)
    click.echo(f"Sent deploy request to {_rest_address(address)}; see `dserve status` for progress.")


@cli.command(help="Print the status of every application: YAML (Ray's format), JSON, or a table.")
@click.option("-a", "--address", default=None)
@click.option("--name", default=None, help="Only this application.")
@click.option("-o", "--output", "output", default="yaml", show_default=True, type=click.Choice(["yaml", "json"]),
              help="Output format.")
@click.option("--table", is_flag=True, help="Applications, their deployments (replica states, messages) and "
                                            "proxies as an aligned table.")
def status(address: Optional[str], name: Optional[str], output: str, table: bool) -> None:
    details = _request("GET", address, "/api/serve/applications/").json()
    apps = {
        app_name: {
            "status": app["status"],
            "message": app["message"],
            "last_deployed_time_s": app["last_deployed_time_s"],
            "deployments": {
                dep_name: {"status": dep["status"], "status_trigger": dep["status_trigger"],
                           "replica_states": _replica_states(dep), "message": dep["message"]}
                for dep_name, dep in app["deployments"].items()
            },
        }
        for app_name, app in details["applications"].items()
        if name is None or app_name == name
    }
    out = {"proxies": {node: p["status"] for node, p in details["proxies"].items()}, "applications": apps,
           "target_capacity": details.get("target_capacity")}
    if table:
        from .status_view import status_table

        for app_name, app in apps.items():
            app["route_prefix"] = details["applications"][app_name]["route_prefix"]
        click.echo(status_table(out))
    elif output == "json":
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(yaml.safe_dump(out, sort_keys=False).rstrip())


def _replica_states(dep: Dict[str, Any]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for replica in dep["replicas"]:
        counts[replica["state"]] = counts.get(replica["state"], 0) + 1
    return counts


@cli.command(help="Print the configs of the deployed applications (YAML).")
@click.option("-a", "--address", default=None)
@click.option("--name", default=None, help="Only this application.")
def config(address: Optional[str], name: Optional[str]) -> None:
    details = _request("GET", address, "/api/serve/applications/").json()
    configs = [app["deployed_app_config"] for app_name, app in details["applications"].items()
               if app.get("deployed_app_config") and (name is None or app_name == name)]
    if not configs:
        click.echo("No configuration was found." if name is None else f"No config for application {name!r}.")
        return
    click.echo("\n---\n\n".join(yaml.safe_dump(c, sort_keys=False).rstrip() for c in configs))


@cli.command(help="Print the log lines of the replicas (of APP, of its DEPLOYMENT) and, without APP, of the "
                  "proxies, oldest first; read through the REST API from every worker's memory.")
@click.argument("app", required=False)
@click.argument("deployment", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("-n", "--tail", default=LOGS_DEFAULT_TAIL, type=int, show_default=True, help="Lines to print first.")
@click.option("-a", "--address", default=None)
def logs(app: Optional[str], deployment: Optional[str], follow: bool, tail: int, address: Optional[str]) -> None:
    params: Dict[str, Any] = {"app": app or "", "deployment": deployment or "", "tail": tail}
    try:
        answer = _request("GET", address, "/api/serve/logs", params=params).json()
        _print_log_lines(answer)
        while follow:
            time.sleep(LOGS_FOLLOW_PERIOD_S)
            params["cursor"] = json.dumps(answer["cursor"])
            answer = _request("GET", address, "/api/serve/logs", params=params).json()
            _print_log_lines(answer)
    except KeyboardInterrupt:
        pass


def _print_log_lines(answer: Dict[str, Any]) -> None:
    for entry in answer["lines"]:
        click.echo(entry["line"])


@cli.command(help="Delete every application; stop the cluster `dserve start` launched.")
@click.option("-a", "--address", default=None)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def shutdown(address: Optional[str], yes: bool) -> None:
    if not yes:
        click.confirm(f"Shut down dserve at {_rest_address(address)} (every application will be deleted)?",
                      abort=True)
    record = launcher.launched() if address is None else None
    try:
        _request("DELETE", address, "/api/serve/applications/")
    except click.ClickException:
        if record is None:
            raise
    if record is not None:
        launcher.stop_launched(record)
        click.echo("Shut down dserve and the cluster `dserve start` launched.")
    else:
        click.echo("Shut down dserve (every application deleted).")


@cli.command(help="Run an application (config file or import path) in the foreground; Ctrl-C tears it down.")
@click.argument("config_or_import_path")
@click.argument("arguments", nargs=-1)
@click.option("--address", default=None, help="Scheduler address; without it an embedded cluster is started.")
@click.option("--name", default="default", show_default=True)
@click.option("--route-prefix", default=None)
@click.option("--reload", is_flag=True, help="Redeploy when files in the working directory change.")
@click.option("--http-port", default=None, type=int)
def run(config_or_import_path: str, arguments: tuple, address: Optional[str], name: str,
        route_prefix: Optional[str], reload: bool, http_port: Optional[int]) -> None:
    import dserve.api as api

    sys.path.insert(0, os.getcwd())
    try:
        config = _load_config(config_or_import_path, list(arguments), name, route_prefix)
        _validate(config)
        api.start(address=address, http_options={"port": http_port} if http_port else None)
        _deploy_and_wait(api, config)
        click.echo("Deployed; serving until Ctrl-C.")
        snapshot = _snapshot_files() if reload else None
        while True:
            time.sleep(1)
            if reload:
                current = _snapshot_files()
                if current != snapshot:
                    snapshot = current
                    click.echo("Files changed; redeploying.")
                    _deploy_and_wait(api, config, force=True)
    except KeyboardInterrupt:
        click.echo("Shutting down.")
    except click.ClickException:
        raise
    except Exception as exc:  # noqa: BLE001 - one line for the user
        raise click.ClickException(str(exc).strip().splitlines()[0]) from None
    finally:
        api.shutdown()


def _deploy_and_wait(api: Any, config: Dict[str, Any], force: bool = False) -> None:
    from .runtime import get_runtime

    runtime = get_runtime()
    result = api._sync(runtime, runtime.rpc("dserve_deploy_config", config=config, force=force))
    if "error" in result:
        raise click.ClickException(result["error"].splitlines()[0])
    for app in config["applications"]:
        api.wait_for_application(runtime, app.get("name", "default"))


def _snapshot_files() -> Dict[str, float]:
    out = {}
    for root, dirs, files in os.walk(os.getcwd()):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for f in files:
            if f.endswith((".py", ".yaml", ".yml")):
                path = os.path.join(root, f)
                try:
                    out[path] = os.path.getmtime(path)
                except OSError:
                    pass
    return out


@cli.command(help="Write a config file for one or more applications given by import path.")
@click.argument("import_paths", nargs=-1, required=True)
@click.option("-o", "--output-path", default=None, help="Write here instead of stdout.")
@click.option("--grpc-servicer-functions", multiple=True, help="Servicer functions for the config's grpc_options.")
def build(import_paths: tuple, output_path: Optional[str], grpc_servicer_functions: tuple) -> None:
    from .build import import_application
    from .deployment import build_application

    sys.path.insert(0, os.getcwd())
    applications = []
    for index, path in enumerate(import_paths):
        try:
            app = import_application(path)
        except Exception as exc:  # noqa: BLE001
            raise click.ClickException(f"cannot import {path}: {type(exc).__name__}: {exc}") from None
        name = "default" if len(import_paths) == 1 else f"app{index + 1}"
        built = build_application(app, name)
        deployments = []
        for bd in built.deployments:
            options = {"name": bd.name}
            options.update(bd.deployment.config.model_dump(mode="json", exclude_unset=True,
                                                           exclude={"autoscaling_config"}))
            if bd.deployment.config.autoscaling_config is not None:
                options["autoscaling_config"] = bd.deployment.config.autoscaling_config.model_dump(
                    mode="json", exclude={"policy"})
            deployments.append(options)
        applications.append({"name": name, "route_prefix": "/" if len(import_paths) == 1 else f"/{name}",
                             "import_path": path, "runtime_env": {}, "deployments": deployments})
    config: Dict[str, Any] = {"proxy_location": "EveryNode", "http_options": {"host": DEFAULT_HOST, "port": DEFAULT_HTTP_PORT}}
    if grpc_servicer_functions:
        config["grpc_options"] = {"port": DEFAULT_GRPC_PORT, "grpc_servicer_functions": list(grpc_servicer_functions)}
    config["applications"] = applications
    text = yaml.safe_dump(config, sort_keys=False)
    if output_path:
        with open(output_path, "w") as f:
            f.write(text)
        click.echo(f"Wrote {output_path}.")
    else:
        click.echo(text.rstrip())


if __name__ == "__main__":
    cli()
