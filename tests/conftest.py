"""Shared fixtures: one real dserve instance (embedded Dask cluster) per test module."""
from __future__ import annotations

import socket
import time
from typing import Callable

import dask
import pytest

import dserve as serve

# tests never assume fixed ports: the REST API of every embedded cluster picks a free one
dask.config.set({"dserve.rest-port": 0})


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
                       timeout=30, what=f"a healthy proxy")
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
