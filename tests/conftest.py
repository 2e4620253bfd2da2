"""Shared fixtures: one real dserve instance (embedded Dask cluster) per test module."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict

import httpx

import dask
import pytest

import dserve as serve

# tests never assume fixed ports: the REST API of every embedded cluster picks a free one
dask.config.set({"dserve.rest-port": 0})
# tests never touch the user's ~/.dserve: the auth token (generated on first start) lives here;
# subprocesses (CLI, schedulers, workers) inherit it
os.environ["DSERVE_HOME"] = tempfile.mkdtemp(prefix="dserve-test-home-")
for _name in ("DSERVE_AUTH_TOKEN", "DSERVE_AUTH_TOKEN_PATH", "DSERVE_AUTH_MODE", "DSERVE_REST_TOKEN"):
    os.environ.pop(_name, None)


def auth_headers() -> Dict[str, str]:
    """The bearer header the REST API wants (the token dserve generated for this session)."""
    from dserve.auth import bearer_header, load_token

    return bearer_header(load_token())


APPS_DIR = os.path.join(os.path.dirname(__file__), "apps")


def make_apps_importable(mp: "pytest.MonkeyPatch") -> None:
    """This process, and the worker subprocesses started from now on, can import tests/apps
    (config deploys by import path, policies the controller imports)."""
    mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [APPS_DIR, os.environ.get("PYTHONPATH")])))
    mp.syspath_prepend(APPS_DIR)


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: last error {last_exc!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proxy_details() -> dict:
    """The controller's view of the proxies: host -> {status, message, worker, port}."""
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    runtime = current_runtime()
    return _sync(runtime, runtime.rpc("dserve_status"))["proxy_details"]


def proxy_url() -> str:
    """The URL of the (single) HTTP proxy, once it is HEALTHY."""
    healthy = wait_for(lambda: [p for p in proxy_details().values() if p["status"] == "HEALTHY"],
                       timeout=30, what="a healthy proxy")
    return f"http://127.0.0.1:{healthy[0]['port']}"


@pytest.fixture(scope="module")
def serve_instance():
    """dserve on an embedded cluster, shared by the tests of one module."""
    serve.start(http_options={"port": free_port()})
    yield serve
    serve.shutdown()


@pytest.fixture
def clean(serve_instance):
    """Delete every application after the test."""
    yield serve_instance
    for name in list(serve.status().applications):
        serve.delete(name)


class HTTPLoad:
    """Threads sending GET requests until stopped, with exact accounting:
    ``results`` holds the bodies of 200s, ``failures`` (status or "client", text) of the rest."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.sent = 0
        self.results: list = []
        self.failures: list = []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for t in self.threads:
            t.start()

    @property
    def ok(self) -> int:
        return len(self.results)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop_flag.is_set():
                with self.lock:
                    self.sent += 1
                try:
                    r = client.get(self.url)
                    outcome = (self.results, r.text) if r.status_code == 200 else (self.failures, (r.status_code, r.text[:200]))
                except httpx.HTTPError as exc:
                    outcome = (self.failures, ("client", repr(exc)))
                with self.lock:
                    outcome[0].append(outcome[1])

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join()
        assert self.sent == len(self.results) + len(self.failures)


def scrape(port: int) -> dict:
    """{(sample name, frozenset(labels)): value} of one /metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def scrape_all() -> dict:
    """Summed samples of the scheduler's and every worker's /metrics."""
    from collections import defaultdict

    from distributed import Client

    from dserve.runtime import current_runtime

    with Client(current_runtime().scheduler_address, timeout=30) as client:
        info = client.scheduler_info()
        ports = [info["services"]["dashboard"]] + [w["services"]["dashboard"] for w in info["workers"].values()]
    total: dict = defaultdict(float)
    for port in ports:
        for key, v in scrape(port).items():
            total[key] += v
    return total


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


class Hosts:
    """`dask scheduler --preload dserve` on 127.0.0.1 and `dask worker` processes on loopback
    aliases (127.0.0.2, ...: different hosts to dserve), all started (and stopped) by us."""

    def __init__(self, tmp_path, preload_args=()):
        self.port, self.http_port, self.rest_port = free_port(), free_port(), free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="warning",
                        DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL="5s")
        self.workers = {}  # Popen -> host
        self.scheduler = self._spawn([
            "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port),
            "--dashboard-address", ":0", "--preload", "dserve", "--dserve-http-port", str(self.http_port),
            "--dserve-rest-port", str(self.rest_port), "--dserve-state-path", str(tmp_path / "state.pkl"),
            *preload_args])

    def _spawn(self, args):
        return subprocess.Popen([sys.executable, "-m", *args], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def add_worker(self, host, resources=None):
        args = ["distributed.cli.dask_worker", self.address, "--host", host, "--nthreads", "2", "--no-nanny",
                "--memory-limit", "1GB"]
        if resources:
            args += ["--resources", resources]
        proc = self._spawn(args)
        self.workers[proc] = host
        return proc

    def pids(self, n):
        """Wait for ``n`` workers; worker address -> pid."""
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(n, timeout=60)
            wait_for(lambda: len(client.scheduler_info()["workers"]) == n, timeout=60, what=f"exactly {n} workers")
            return client.run(os.getpid)

    def url(self, host, path=""):
        return f"http://{host}:{self.http_port}{path}"

    def replicas(self, app):
        """(node_ip, pid) of the RUNNING replicas of ``app``, from the REST API's details."""
        details = httpx.get(f"http://127.0.0.1:{self.rest_port}/api/serve/applications/",
                            headers=auth_headers(), timeout=10).json()
        deployments = details["applications"][app]["deployments"].values()
        return sorted((r["node_ip"], r["pid"]) for d in deployments for r in d["replicas"] if r["state"] == "RUNNING")

    def stop(self):
        procs = [*self.workers, self.scheduler]
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait(15)


def all_healthy(hosts) -> Dict[str, str]:
    """``serve.status().proxies`` with a HEALTHY proxy on each of ``hosts``."""
    return {h: "HEALTHY" for h in hosts}
