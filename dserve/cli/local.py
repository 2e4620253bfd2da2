"""The cluster on this machine: ``dserve start`` (dserve on a Dask cluster, or a detached
local one it launches and records) and ``dserve stop`` (stop what ``start`` launched, the
counterpart of ``ray stop``; only processes that provably are the ones it started).
"""
from __future__ import annotations

from typing import Optional

import click

import dserve.launcher as launcher
from ..auth import AuthError, default_token_path
from ..config import DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_REST_PORT

__all__ = ["start", "stop"]


@click.command(help="Start dserve on a Dask cluster (or launch a detached local one) and return.")
@click.option("-a", "--address", default=None,
              help="Scheduler address (tcp://host:8786). Without it a local cluster is launched.")
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
@click.option("--n-workers", default=2, type=int, show_default=True,
              help="Replica workers of a launched cluster (isolated placement adds one proxy worker).")
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
                                   "run `dserve stop` first")
    try:
        state = launcher.launch_local(http_host, http_port, proxy_location, rest_port, n_workers, nthreads,
                                      grpc_options, rest_host=rest_host)
    except (launcher.LaunchError, AuthError) as exc:
        raise click.ClickException(str(exc)) from None
    grpc = f"  gRPC:       {http_host}:{grpc_port}\n" if grpc_servicer_functions else ""
    click.echo(f"Started a local Dask cluster with dserve.\n  scheduler:  {state['address']}\n"
               f"  REST API:   {state['rest_address']} (token: DSERVE_AUTH_TOKEN or {default_token_path()})\n"
               f"  HTTP:       http://{http_host}:{http_port}\n{grpc}"
               f"  Serve page: {state['serve_page']} (open it once as ...?token=<token>)\n"
               f"  logs:       {state['log']}\n"
               "`dserve shutdown` removes the applications; `dserve stop` stops the cluster.")


@click.command(help="Stop the local cluster `dserve start` launched (scheduler and workers).")
def stop() -> None:
    record = launcher.launched()
    if record is None:
        click.echo("No cluster launched by `dserve start` is recorded; nothing to stop.")
        return
    if not launcher.ours(record):
        launcher.stop_launched(record)  # signals nothing: only removes the stale record
        click.echo(f"The cluster `dserve start` launched ({record['address']}) is not running any more; "
                   "removed its record.")
        return
    launcher.stop_launched(record)
    click.echo(f"Stopped the cluster `dserve start` launched ({record['address']}).")
