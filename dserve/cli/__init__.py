"""The ``dserve`` command line, flag for flag with Ray Serve's ``serve`` where it has the
command, one module per idea:

- ``local``: ``start`` (dserve on a Dask cluster, or a detached local one) and ``stop``;
- ``run``: ``run`` (deploy, progress, foreground until Ctrl-C, ``--reload``);
- ``admin``: ``deploy`` (``--wait``), ``status``, ``config``, ``logs``, ``shutdown``,
  through the REST admin API (``rest_client``);
- ``build_config``: ``build``;
- ``configs`` (what to deploy), ``progress`` (deploy progress), ``render`` (YAML output).

User mistakes end with a one-line message and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import click

from .._version import __version__
from .admin import config, deploy, logs, shutdown, status
from .build_config import build
from .local import start, stop
from .run import run

__all__ = ["cli"]


@click.group(help="dserve: Ray Serve's API on Dask. Deploy, inspect and manage applications.",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="dserve", message="%(prog)s %(version)s")
def cli() -> None:
    pass


for _command in (start, stop, run, deploy, status, config, logs, shutdown, build):
    cli.add_command(_command)
