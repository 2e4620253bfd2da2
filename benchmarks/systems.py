"""The systems under test, each able to serve a no-op HTTP endpoint and handle calls.

``bare``: uvicorn + Starlette in a subprocess (the HTTP limit of this stack); the CPU
scenario starts a second one (two processes, each on its own port).
``dserve``: the embedded cluster, one no-op deployment behind the proxy (the default
placement, isolated); ``dserve-isolated`` / ``dserve-colocated``: with Dask config
``dserve.placement`` set to either (colocated: no proxy worker, replicas may share the
proxy's process).
``dserve-nometrics``: the same with metrics turned off; ``dserve-noaccesslog``: with the access log off.
``ray``: Ray Serve, when ``ray[serve]`` is installed (``pip install -e ".[bench]"``).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import httpx

__all__ = ["SYSTEMS", "free_port", "wait_http"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> float:
    """Seconds until ``url`` answers 200."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise TimeoutError(url)


class Bare:
    name = "bare"
    available = True
    note = ""

    def start(self) -> None:
        self.procs: list = []  # (port, process)
        self.processes(1)
        self.port = self.procs[0][0]

    def processes(self, n: int) -> list:
        """The base URLs of ``n`` bare processes, each on its own port (started as needed)."""
        while len(self.procs) < n:
            port = free_port()
            proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "bare_app.py"), str(port)])
            self.procs.append((port, proc))
            wait_http(f"http://127.0.0.1:{port}/")
        return [f"http://127.0.0.1:{port}/" for port, _ in self.procs[:n]]

    def keep(self, n: int) -> None:
        """Stop the processes beyond the first ``n`` (later scenarios measure one)."""
        extra, self.procs = self.procs[n:], self.procs[:n]
        for _, proc in extra:
            proc.terminate()
            proc.wait(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def deploy(self, kind: str, replicas: int = 1, **options: Any) -> Optional[str]:
        return self.url("") if kind == "noop" else None

    def handle(self, kind: str) -> Optional[Any]:
        return None

    def pids(self) -> list:
        return [proc.pid for _, proc in self.procs]

    def stop(self) -> None:
        for _, proc in self.procs:
            proc.terminate()
        for _, proc in self.procs:
            proc.wait(10)


class _ServeAPI:
    """What dserve and Ray Serve share: the same calls deploy and reach the apps."""

    serve: Any
    apps: Any
    port: int
    cluster_start_s: float

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def deploy(self, kind: str, replicas: int = 1, **options: Any) -> Optional[str]:
        # a fresh app per scenario (delete first) so placement is the same every run
        if "bench" in self.serve.status().applications:
            self.serve.delete("bench")
        app = self.apps.build(self.serve, kind, replicas, **options)
        self.serve.run(app, name="bench", route_prefix="/")
        return self.url("")

    def handle(self, kind: str) -> Any:
        return self.serve.get_app_handle("bench")

    def pids(self) -> list:
        import psutil

        me = psutil.Process()
        return [me.pid] + [c.pid for c in me.children(recursive=True)]


class DServe(_ServeAPI):
    name = "dserve"
    available = True
    note = ""

    def start(self) -> None:
        import dserve as serve

        from . import apps

        self.serve, self.apps = serve, apps
        self.port = free_port()
        t0 = time.monotonic()
        serve.start(http_options={"port": self.port})
        self.cluster_start_s = time.monotonic() - t0

    def stop(self) -> None:
        self.serve.shutdown()


class DServePlacement(DServe):
    """dserve with Dask config ``dserve.placement`` set (the scheduler, in this process, reads it)."""

    placement = "isolated"

    def start(self) -> None:
        import dask

        self._config = dask.config.set({"dserve.placement": self.placement})
        super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self._config.__exit__(None, None, None)


class DServeIsolated(DServePlacement):
    """Each replica in a worker process of its own, the proxy in another (the default)."""

    name = "dserve-isolated"


class DServeColocated(DServePlacement):
    """No proxy worker; replicas spread over the workers, the proxy's included."""

    name = "dserve-colocated"
    placement = "colocated"


class DServeNoMetrics(DServe):
    """dserve with metrics off (Dask config ``dserve.metrics.enabled: false``): the cost of metrics."""

    name = "dserve-nometrics"

    def start(self) -> None:
        import dask

        os.environ["DASK_DSERVE__METRICS__ENABLED"] = "False"  # worker subprocesses read it at start
        self._config = dask.config.set({"dserve.metrics.enabled": False})
        super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            os.environ.pop("DASK_DSERVE__METRICS__ENABLED", None)
            self._config.__exit__(None, None, None)


class DServeNoAccessLog(DServe):
    """dserve with the proxies' access log off (``logging_config={"enable_access_log": False}``)."""

    name = "dserve-noaccesslog"

    def start(self) -> None:
        import dserve as serve

        from . import apps

        self.serve, self.apps = serve, apps
        self.port = free_port()
        t0 = time.monotonic()
        serve.start(http_options={"port": self.port}, logging_config={"enable_access_log": False})
        self.cluster_start_s = time.monotonic() - t0


class Ray(_ServeAPI):
    name = "ray"

    def __init__(self) -> None:
        try:
            import ray  # noqa: F401
            from ray import serve  # noqa: F401

            self.available, self.note = True, ""
        except ImportError:
            self.available, self.note = False, 'ray[serve] is not installed (pip install -e ".[bench]")'

    def start(self) -> None:
        import ray
        from ray import serve

        from . import apps

        self.serve, self.apps = serve, apps
        self.port = free_port()
        t0 = time.monotonic()
        ray.init(include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"port": self.port})
        self.cluster_start_s = time.monotonic() - t0

    def stop(self) -> None:
        import ray

        self.serve.shutdown()
        ray.shutdown()


SYSTEMS: dict[str, Callable[[], Any]] = {"bare": Bare, "dserve": DServe, "dserve-isolated": DServeIsolated,
                                         "dserve-colocated": DServeColocated, "dserve-nometrics": DServeNoMetrics,
                                         "dserve-noaccesslog": DServeNoAccessLog,
                                         "ray": Ray}
