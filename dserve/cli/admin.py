"""The commands that talk to the REST admin API: ``deploy`` (``--wait``: progress until
RUNNING, non-zero exit with the reason when it fails), ``status``, ``config``, ``logs``
and ``shutdown`` (Serve only: applications and proxies; the cluster keeps running).
"""
from __future__ import annotations

import json
import time
from typing import Any, Dict, Optional

import click

from ..config import LOGS_DEFAULT_TAIL, LOGS_FOLLOW_PERIOD_S
from .configs import load_target, runtime_env_from_flags, runtime_env_options, validate
from .progress import DeployFailed, from_details, watch
from .render import dump_yaml, status_from_details
from .rest_client import DEFAULT_REST, request, rest_address

__all__ = ["deploy", "status", "config", "logs", "shutdown", "ADDRESS_HELP"]

ADDRESS_HELP = f"REST API address (default $DSERVE_REST_ADDRESS, the cluster `dserve start` launched, or {DEFAULT_REST})."
APPLICATIONS = "/api/serve/applications/"


@click.command(help="Deploy a config file, or an import path with key=value arguments, through the REST API. "
                    "Without --wait it returns once the request is accepted.")
@click.argument("config_or_import_path")
@click.argument("arguments", nargs=-1)
@runtime_env_options
@click.option("--name", default=None, help="Application name (import paths only; default 'default').")
@click.option("--route-prefix", default=None, help="Route prefix (import paths only; dserve's).")
@click.option("-a", "--address", default=None, help=ADDRESS_HELP)
@click.option("--wait", is_flag=True, help="Print progress until every application is RUNNING (exit 0) or one "
                                           "fails (exit 1, with the reason); dserve's.")
def deploy(config_or_import_path: str, arguments: tuple, runtime_env: Optional[str], runtime_env_json: Optional[str],
           working_dir: Optional[str], name: Optional[str], route_prefix: Optional[str], address: Optional[str],
           wait: bool) -> None:
    env = runtime_env_from_flags(runtime_env, runtime_env_json, working_dir)
    config = load_target(config_or_import_path, list(arguments), name, route_prefix, env)
    validate(config)
    request("PUT", address, APPLICATIONS, json=config)
    if not wait:
        click.echo(f"Sent deploy request to {rest_address(address)}; see `dserve status` for progress.")
        return
    from ..schema import ServeDeploySchema

    names = [app.name for app in ServeDeploySchema.model_validate(config).applications]
    click.echo(f"Sent deploy request to {rest_address(address)}; waiting for {', '.join(names)}.")
    try:
        watch(lambda: from_details(request("GET", address, APPLICATIONS).json()), names, click.echo)
    except DeployFailed as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException("stopped waiting (the deploy goes on; see `dserve status`)") from None
    click.echo("Deployed: " + ", ".join(f"{n} RUNNING" for n in names) + ".")


@click.command(help="Print the status of every application (or of one): YAML as `serve status` prints it "
                    "(multi-line messages as | blocks), JSON, or a table.")
@click.option("-a", "--address", default=None, help=ADDRESS_HELP)
@click.option("-n", "--name", default=None, help="Only this application.")
@click.option("-o", "--output", "output", default="yaml", show_default=True, type=click.Choice(["yaml", "json"]),
              help="Output format (dserve's).")
@click.option("--table", is_flag=True, help="Applications, their deployments (replica states, messages) and "
                                            "proxies as an aligned table (dserve's).")
def status(address: Optional[str], name: Optional[str], output: str, table: bool) -> None:
    details = request("GET", address, APPLICATIONS).json()
    out = status_from_details(details)
    if name is not None and name not in out["applications"]:
        raise click.ClickException(f"Application '{name}' does not exist.")
    if table:
        from ..status_view import status_table

        out["applications"] = {n: {**app, "route_prefix": details["applications"][n]["route_prefix"]}
                               for n, app in out["applications"].items() if name is None or n == name}
        click.echo(status_table(out))
        return
    shown: Any = out if name is None else out["applications"][name]
    if output == "json":
        click.echo(json.dumps(shown, indent=2))
    else:
        click.echo(dump_yaml(shown), nl=False)


@click.command(help="Print the configs of the deployed applications (YAML).")
@click.option("-a", "--address", default=None, help=ADDRESS_HELP)
@click.option("-n", "--name", default=None, help="Only this application.")
def config(address: Optional[str], name: Optional[str]) -> None:
    details = request("GET", address, APPLICATIONS).json()
    configs = [app["deployed_app_config"] for app_name, app in details["applications"].items()
               if app.get("deployed_app_config") and (name is None or app_name == name)]
    if not configs:
        click.echo("No configuration was found." if name is None else f"No config for application {name!r}.")
        return
    click.echo("\n---\n\n".join(dump_yaml(c) for c in configs), nl=False)


@click.command(help="Print the log lines of the replicas (of APP, of its DEPLOYMENT) and, without APP, of the "
                    "proxies, oldest first; read through the REST API from every worker's memory.")
@click.argument("app", required=False)
@click.argument("deployment", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("-n", "--tail", default=LOGS_DEFAULT_TAIL, type=int, show_default=True, help="Lines to print first.")
@click.option("-a", "--address", default=None, help=ADDRESS_HELP)
def logs(app: Optional[str], deployment: Optional[str], follow: bool, tail: int, address: Optional[str]) -> None:
    params: Dict[str, Any] = {"app": app or "", "deployment": deployment or "", "tail": tail}
    try:
        answer = request("GET", address, "/api/serve/logs", params=params).json()
        _print_log_lines(answer)
        while follow:
            time.sleep(LOGS_FOLLOW_PERIOD_S)
            params["cursor"] = json.dumps(answer["cursor"])
            answer = request("GET", address, "/api/serve/logs", params=params).json()
            _print_log_lines(answer)
    except KeyboardInterrupt:
        pass


def _print_log_lines(answer: Dict[str, Any]) -> None:
    for entry in answer["lines"]:
        click.echo(entry["line"])


@click.command(help="Shut down Serve: delete every application and stop the proxies. The cluster keeps running "
                    "(`dserve stop` stops the one `dserve start` launched).")
@click.option("-a", "--address", default=None, help=ADDRESS_HELP)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def shutdown(address: Optional[str], yes: bool) -> None:
    base = rest_address(address)
    request("GET", address, APPLICATIONS)  # reachable (and the token good) before asking
    if not yes:
        click.confirm(f"Shut down Serve at {base}? Every application there will be deleted.", abort=True)
    request("DELETE", address, APPLICATIONS)
    click.echo(f"Shut down Serve at {base}: every application deleted, proxies stopped.")
