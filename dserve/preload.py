"""``dask scheduler --preload dserve``: the click command that installs the controller.

Dask calls ``dask_setup(scheduler, ...)`` with the ``--dserve-*`` options parsed
by click; ``dserve/__init__.py`` re-exports it so the preload name is just
``dserve``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import click

from .config import HTTPOptions, ProxyLocation
from .controller import Controller
from .controller.placement import placement_mode

__all__ = ["dask_setup"]


@click.command(name="dserve", context_settings={"ignore_unknown_options": True})
@click.option("--dserve-http-host", default=None, help="Host the HTTP proxies bind (default 127.0.0.1).")
@click.option("--dserve-http-port", default=None, type=int, help="Port of the HTTP proxies (default 8000).")
@click.option("--dserve-http-proxies-per-host", default=None, type=int,
              help="Proxy processes per host sharing the HTTP port via SO_REUSEPORT (default 1).")
@click.option("--dserve-proxy-location", default=None, help="EveryNode (default), HeadOnly or Disabled.")
@click.option("--dserve-rest-port", default=None, type=int, help="Port of the REST admin API (default 52365).")
@click.option("--dserve-rest-host", default=None, help="Host the REST admin API binds (default 127.0.0.1).")
@click.option("--dserve-rest-token", default=None, help="Bearer token the REST admin API requires.")
@click.option("--dserve-state-path", default=None, help="File the controller checkpoints its goal state to.")
@click.option("--dserve-placement", default=None,
              help="isolated (default: a replica gets a worker process of its own when one fits) or colocated.")
def dask_setup(
    scheduler: Any,
    dserve_http_host: Optional[str],
    dserve_http_port: Optional[int],
    dserve_http_proxies_per_host: Optional[int],
    dserve_proxy_location: Optional[str],
    dserve_rest_port: Optional[int],
    dserve_rest_host: Optional[str],
    dserve_rest_token: Optional[str],
    dserve_state_path: Optional[str],
    dserve_placement: Optional[str] = None,
) -> None:
    """Preload entry point: ``dask scheduler --preload dserve [--dserve-* options]``."""
    options: Dict[str, Any] = {}
    http = {k: v for k, v in (("host", dserve_http_host), ("port", dserve_http_port),
                              ("proxies_per_host", dserve_http_proxies_per_host)) if v is not None}
    if http:
        options["http_options"] = HTTPOptions(**http).model_dump()
    if dserve_proxy_location:
        options["proxy_location"] = ProxyLocation.parse(dserve_proxy_location).value
    if dserve_rest_port is not None:
        options["rest_port"] = dserve_rest_port
    if dserve_rest_host:
        options["rest_host"] = dserve_rest_host
    if dserve_rest_token:
        options["rest_token"] = dserve_rest_token
    if dserve_state_path:
        options["state_path"] = dserve_state_path
    if dserve_placement:
        options["placement"] = placement_mode(dserve_placement)
    scheduler.add_plugin(Controller(options))
