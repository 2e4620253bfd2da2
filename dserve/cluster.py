"""Find the Dask cluster to serve on, or start an embedded one.

Order: an explicit ``address=``, the ``DSERVE_ADDRESS`` environment variable,
Dask's configured ``scheduler-address``, a current default
``distributed.Client``; otherwise a ``LocalCluster`` of worker processes on
127.0.0.1 that dserve owns and stops at ``serve.shutdown()`` or exit.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import weakref
from typing import Any, Dict, Optional

import dask
from distributed.deploy.subprocess import SubprocessWorker

from .config import CONTROLLER_NAME, EMBEDDED_MAX_WORKERS_PER_CPU, EMBEDDED_PROXY_THREADS, EMBEDDED_THREADS_PER_WORKER, PROXY_RESOURCE

__all__ = ["find_address", "find_security", "start_embedded_cluster", "close_embedded_cluster"]

logger = logging.getLogger("dserve")


def find_address(address: Optional[str] = None) -> Optional[str]:
    """The scheduler address to use, or None when an embedded cluster is needed."""
    if address:
        return address
    env = os.environ.get("DSERVE_ADDRESS")
    if env:
        return env
    configured = dask.config.get("scheduler-address", None) or dask.config.get("scheduler_address", None)
    if configured:
        return configured
    try:
        from distributed import default_client

        client = default_client()
    except (ValueError, ImportError):
        return None
    return client.scheduler.address if client.scheduler is not None else None


def find_security(address: Optional[str], security: Any = None) -> Any:
    """The ``distributed.Security`` to reach ``address`` with: the one given, else a
    default ``Client``'s when it talks to that scheduler, else Dask's configured one
    (``distributed.comm.tls.*``)."""
    from distributed import Security

    if security is not None:
        return security
    try:
        from distributed import default_client

        client = default_client()
        if client.scheduler is not None and (address is None or client.scheduler.address == address):
            return client.security
    except (ValueError, ImportError):
        pass  # no default client
    return Security()


def _tls_files(security: Any) -> Dict[str, str]:
    """Write a Security's PEMs to a private directory; the Dask config (as environment
    variables, which the worker subprocesses inherit) that makes workers use them."""
    directory = tempfile.mkdtemp(prefix="dserve-tls-")
    os.chmod(directory, 0o700)

    def write(name: str, pem: str) -> str:
        if not pem.lstrip().startswith("-----BEGIN"):
            return pem  # already a path
        path = os.path.join(directory, name)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(pem)
        return path

    prefix = "DASK_DISTRIBUTED__COMM__"
    return {
        prefix + "REQUIRE_ENCRYPTION": "True",
        prefix + "TLS__CA_FILE": write("ca.pem", security.tls_ca_file),
        prefix + "TLS__WORKER__CERT": write("worker.pem", security.tls_worker_cert),
        prefix + "TLS__WORKER__KEY": write("worker-key.pem", security.tls_worker_key),
        prefix + "TLS__CLIENT__CERT": write("client.pem", security.tls_client_cert),
        prefix + "TLS__CLIENT__KEY": write("client-key.pem", security.tls_client_key),
    }


class _SessionWorker(SubprocessWorker):
    """A ``dask spec`` worker subprocess in a session of its own: a Ctrl-C at the terminal
    reaches only the driver, which then closes the cluster in order (workers interrupted
    mid-shutdown print Dask tracebacks). ``env``: variables it gets on top of this process's
    (workers Adaptive adds later are as quiet as the first ones)."""

    def __init__(self, *args: Any, env: Optional[Dict[str, str]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env = dict(env or {})

    async def _start(self) -> None:
        opts = {**self.worker_kwargs}
        if self.name is not None:  # the spec's name, so Adaptive finds the worker it retires
            opts.setdefault("name", self.name)
        spec = json.dumps({"cls": self.worker_class, "opts": opts})
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dask", "spec", self.scheduler, "--spec", spec, start_new_session=True,
            env={**os.environ, **self.env})


def embedded_security(security: Any = None) -> Any:
    """The embedded cluster's ``Security``: the one given, or a temporary one when Dask
    config ``dserve.embedded.security`` is ``temporary``; ``None`` for a plain cluster."""
    if security is not None:
        return security
    setting = dask.config.get("dserve.embedded.security", None)
    if setting in (None, False, "", "none"):
        return None
    if setting != "temporary":
        raise ValueError(f"dserve.embedded.security must be 'temporary' (or unset), not {setting!r}")
    from distributed import Security

    return Security.temporary()


def _adaptive_bounds(replica_workers: int, proxy_worker: bool) -> Optional[Dict[str, Any]]:
    """Dask config ``dserve.embedded.adaptive``: unset means adaptive between the workers
    started and 1 + ``EMBEDDED_MAX_WORKERS_PER_CPU`` replica workers per CPU; ``false``
    turns it off; a mapping (e.g. ``{"minimum": 1, "maximum": 4}``) is passed to ``adapt``."""
    setting = dask.config.get("dserve.embedded.adaptive", None)
    if setting is None:
        base = replica_workers + proxy_worker
        most = max(replica_workers, EMBEDDED_MAX_WORKERS_PER_CPU * (os.cpu_count() or 1)) + proxy_worker
        return {"minimum": base, "maximum": most}
    if setting in (False, "false", "off", "") or not setting:
        return None
    return {k.replace("-", "_"): v for k, v in dict(setting).items()}


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401 - uvicorn[standard] installs it where it runs (not on Windows)
    except ImportError:
        return False
    return True


# Dask's settings, tuned for serving on the clusters dserve starts: {key: (Dask's default, ours)}.
# Idle, Dask's defaults cost 3 workers + 3 nannies + the scheduler ~0.27 CPU-seconds per second
# (the task profiler samples every thread 100 times a second, a 20 ms tick in every process, a
# nanny memory check every 100 ms); with these ~0.07. Replicas are actors, not Dask tasks, so the
# task profiler has nothing to show. Every process runs uvloop (as Ray's actors do where it is
# installed): the proxy's CPU per request drops ~15%. A value the user changed is kept.
SERVING_DASK_CONFIG = {
    "distributed.worker.profile.enabled": (True, False),
    "distributed.admin.tick.interval": ("20ms", "200ms"),
    "distributed.worker.memory.monitor-interval": ("100ms", "500ms"),
    "distributed.admin.system-monitor.interval": ("500ms", "2s"),
    **({"distributed.admin.event-loop": ("tornado", "uvloop")} if _has_uvloop() else {}),
}


def serving_dask_config() -> Dict[str, Any]:
    """The embedded cluster's Dask settings for serving (``SERVING_DASK_CONFIG``),
    except those the user changed from Dask's default."""
    return {key: ours for key, (default, ours) in SERVING_DASK_CONFIG.items() if dask.config.get(key) == default}


def serving_env() -> Dict[str, str]:
    """``serving_dask_config()`` as environment variables, for worker and scheduler processes."""
    return _dask_env(serving_dask_config())


def _dask_env(settings: Dict[str, Any]) -> Dict[str, str]:
    """``settings`` as the environment variables Dask reads in a new process."""
    env = {}
    for key, value in settings.items():
        name = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
        env[name] = str(value)
    return env


def _worker(threads: int, env: Dict[str, str], **extra: Any) -> Dict[str, Any]:
    return {
        "cls": _SessionWorker,
        "options": {
            "worker_class": "distributed.Nanny",
            "env": env,
            # the HTTP server (/metrics, /health) on loopback, as everything else
            "worker_kwargs": {"host": "127.0.0.1", "nthreads": threads, "memory_limit": "auto",
                              "dashboard_address": "127.0.0.1:0", **extra},
        },
    }


def start_embedded_cluster(security: Any = None, proxies: bool = True) -> Any:
    """Start the embedded cluster: a scheduler in this process, workers in subprocesses.

    Workers are ``dask spec`` subprocesses (each a Nanny and its worker), not
    multiprocessing children, so a script without an ``if __name__ ==
    "__main__"`` guard is not re-executed in them; each in its own session, so
    a Ctrl-C reaches only this process, which closes them. The layout (README
    "Process layout and isolation"): with isolated placement (the default) and
    ``proxies``, one proxy worker (``--resources proxy=1``, one thread) for the
    HTTP/gRPC proxy, plus Dask config ``dserve.embedded.n-workers`` replica workers
    (default one per CPU) of ``dserve.embedded.threads-per-worker`` threads (default
    4; each thread is one CPU slot for ``ray_actor_options={"num_cpus": ...}``).
    With ``dserve.placement: colocated`` there is no proxy worker: the proxy shares a
    replica worker. Adaptive by default (see ``_adaptive_bounds``): Dask adds workers
    for replicas that do not fit or share a process and retires idle ones. With a
    ``security`` (or Dask config ``dserve.embedded.security: temporary``) every comm uses
    TLS with client certificates; the workers get their certificates through the
    environment.
    """
    from distributed import Scheduler
    from distributed.deploy.spec import SpecCluster

    from .controller.placement import placement_mode

    proxy_worker = proxies and placement_mode() == "isolated"
    n_workers = int(dask.config.get("dserve.embedded.n-workers", None) or os.cpu_count() or 1)
    threads = int(dask.config.get("dserve.embedded.threads-per-worker", EMBEDDED_THREADS_PER_WORKER))
    quiet = dask.config.get("dserve.embedded.quiet", True)
    env = {"DASK_LOGGING__DISTRIBUTED": "warning"} if quiet and "DASK_LOGGING__DISTRIBUTED" not in os.environ else {}
    serving = serving_dask_config()
    env.update(serving_env())
    worker = _worker(threads, env)
    workers: Dict[Any, Dict[str, Any]] = {}
    if proxy_worker:
        workers["dserve-proxy"] = _worker(EMBEDDED_PROXY_THREADS, env, resources={PROXY_RESOURCE: 1})
    workers.update({i: worker for i in range(n_workers)})
    scheduler = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "port": 0, "dashboard": False, "dashboard_address": "127.0.0.1:0"},
    }
    security = embedded_security(security)
    tls_env: Dict[str, str] = {}
    if security is not None:
        tls_env = _tls_files(security)
        os.environ.update(tls_env)  # worker subprocesses, including later adaptive ones (undone at close)
        scheduler["options"].update(security=security, protocol="tls")
        for spec in workers.values():
            spec["options"]["worker_kwargs"]["protocol"] = "tls"
    with dask.config.set({"distributed.scheduler.worker-ttl": "30s", **serving}):
        cluster = SpecCluster(
            workers=workers,
            scheduler=scheduler,
            worker=worker,
            name="dserve-embedded",
            silence_logs=logging.WARNING if quiet else False,
            security=security,
        )
    expected = len(workers)
    adaptive = _adaptive_bounds(n_workers, proxy_worker)
    if adaptive:  # workers follow serving demand (see controller.cluster_coupling)
        cluster.adapt(**adaptive)
        expected = min(expected, int(adaptive.get("minimum", 0)) or expected)
    deadline = time.monotonic() + 120
    while len(cluster.scheduler.workers) < expected:  # subprocess workers connect on their own
        if time.monotonic() > deadline:
            cluster.close()
            raise TimeoutError(f"the embedded cluster's {expected} workers did not connect within 120s")
        time.sleep(0.02)
    logger.info("dserve started an embedded Dask cluster at %s", cluster.scheduler_address)
    cluster.dserve_env = tls_env
    atexit.register(_quiesce_at_exit, weakref.ref(cluster))  # runs before Dask's own close_clusters
    return cluster


def _quiesce_at_exit(ref: "weakref.ref[Any]") -> None:
    """At exit without ``serve.shutdown()``, Dask closes the cluster by retiring its workers first,
    while its scheduler still runs: the controller would replace their replicas and restart their
    proxies into it (Dask logs "cannot schedule new futures after shutdown", dserve "could not reach
    worker"). Tell the controller the cluster is closing before that."""
    cluster = ref()
    plugin = getattr(getattr(cluster, "scheduler", None), "plugins", {}).get(CONTROLLER_NAME)
    if plugin is None or getattr(cluster.status, "name", "closed") not in ("running", "created"):
        return
    try:
        cluster.sync(plugin.before_close, callback_timeout=5)
    except Exception as exc:  # noqa: BLE001 - exiting anyway: Dask closes the cluster next
        logger.debug("dserve: quiescing the controller at exit: %r", exc)


def close_embedded_cluster(cluster: Any) -> None:
    """Close the embedded cluster and undo the environment it set for its workers."""
    try:
        cluster.close()
    finally:
        env = getattr(cluster, "dserve_env", {})
        for name in env:
            os.environ.pop(name, None)
        ca = env.get("DASK_DISTRIBUTED__COMM__TLS__CA_FILE")
        if ca and os.path.basename(os.path.dirname(ca)).startswith("dserve-tls-"):
            shutil.rmtree(os.path.dirname(ca), ignore_errors=True)
