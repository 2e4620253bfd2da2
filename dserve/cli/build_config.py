"""``dserve build``: import applications and write the config file that deploys them
(``serve build``): each deployment with the options set in its code.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

import click

from .._version import __version__
from ..config import DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT
from .configs import validate
from .render import dump_yaml

__all__ = ["build"]


def _deployments(app: Any, name: str) -> List[Dict[str, Any]]:
    from ..deployment import build_application

    out = []
    for bd in build_application(app, name).deployments:
        config = bd.deployment.config
        options = {"name": bd.name}
        options.update(config.model_dump(mode="json", exclude_unset=True, exclude={"autoscaling_config"}))
        if config.autoscaling_config is not None:
            options["autoscaling_config"] = config.autoscaling_config.model_dump(mode="json", exclude={"policy"})
        out.append(options)
    return out


@click.command(help="Import applications (IMPORT_PATHS) and write a config file that deploys them, for "
                    "`dserve deploy` or the REST API.")
@click.argument("import_paths", nargs=-1, required=True)
@click.option("-d", "--app-dir", default=".", show_default=True,
              help="Directory to import the applications from (put first on sys.path).")
@click.option("-o", "--output-path", default=None, help="Write the config here instead of to stdout.")
@click.option("--grpc-servicer-functions", multiple=True,
              help="Import path of an add_XServicer_to_server function for the config's grpc_options (repeatable).")
def build(import_paths: tuple, app_dir: str, output_path: Optional[str], grpc_servicer_functions: tuple) -> None:
    from ..build import import_application

    sys.path.insert(0, os.path.abspath(app_dir))
    single = len(import_paths) == 1
    applications = []
    for index, path in enumerate(import_paths):
        try:
            app = import_application(path)
        except Exception as exc:  # noqa: BLE001 - one line for the user
            raise click.ClickException(f"cannot import {path}: {type(exc).__name__}: {exc}") from None
        name = "default" if single else f"app{index + 1}"
        applications.append({"name": name, "route_prefix": "/" if single else f"/{name}", "import_path": path,
                             "runtime_env": {}, "deployments": _deployments(app, name)})
    config: Dict[str, Any] = {"proxy_location": "EveryNode",
                              "http_options": {"host": DEFAULT_HOST, "port": DEFAULT_HTTP_PORT}}
    if grpc_servicer_functions:
        config["grpc_options"] = {"port": DEFAULT_GRPC_PORT, "grpc_servicer_functions": list(grpc_servicer_functions)}
    config["applications"] = applications
    validate(config)
    text = f"# Written by `dserve build` (dserve {__version__}).\n\n{dump_yaml(config)}"
    if output_path:
        with open(output_path, "w") as f:
            f.write(text)
        click.echo(f"Wrote {output_path}.")
    else:
        click.echo(text, nl=False)
