"""Ray Serve behaviours of the control API: a proxy that cannot bind its port, ``serve.*`` control
calls from inside replicas (async methods included), event-loop use in a sync constructor, rolling
updates of ``max_ongoing_requests`` and ``last_deployed_time_s``."""
from __future__ import annotations

import socket
import warnings

import pytest

import dserve as serve
from dserve.schema import ProxyStatus
from conftest import free_port, proxy_details


def _occupied_port() -> socket.socket:
    """A plain listening socket on 127.0.0.1 holding a port nobody else may take."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    return blocker


def test_a_proxy_that_cannot_bind_its_port_warns_the_caller_and_says_why_in_status():
    # Ray Serve's proxy fails its readiness check with the port in its error and shows UNHEALTHY in
    # serve.status().proxies; serve.start itself returns. dserve returns too, warns the caller with
    # the reason, and keeps the reason in serve.status().proxy_messages (the proxy is retried).
    first, second = _occupied_port(), _occupied_port()
    busy, busy2 = first.getsockname()[1], second.getsockname()[1]
    try:
        with pytest.warns(RuntimeWarning) as caught:  # a fresh instance: the embedded cluster starts here
            serve.start(http_options={"port": busy})
        worker = proxy_details()["127.0.0.1"]["worker"]
        expected = f"HTTP proxy could not start on {worker}: port {busy} on 127.0.0.1 is already in use"
        assert [str(w.message) for w in caught] == [f"dserve: the proxy on 127.0.0.1 is UNHEALTHY: {expected}"]
        assert caught[0].filename == __file__  # it points at the caller's line
        status = serve.status()
        assert status.proxies == {"127.0.0.1": ProxyStatus.UNHEALTHY}
        assert status.proxy_messages == {"127.0.0.1": expected}

        with pytest.warns(RuntimeWarning) as caught:  # a running instance given another taken port
            serve.start(http_options={"port": busy2})
        expected = expected.replace(f"port {busy} ", f"port {busy2} ")
        assert [str(w.message) for w in caught] == [f"dserve: the proxy on 127.0.0.1 is UNHEALTHY: {expected}"]
        assert serve.status().proxy_messages == {"127.0.0.1": expected}
    finally:
        first.close()
        second.close()
    try:
        port = free_port()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a proxy that starts: no warning
            serve.start(http_options={"port": port})
        status = serve.status()
        assert (status.proxies, status.proxy_messages) == ({"127.0.0.1": ProxyStatus.HEALTHY}, {})
    finally:
        serve.shutdown()


def test_the_status_table_shows_why_a_proxy_is_unhealthy():
    from dserve.status_view import status_table

    tree = {"applications": {}, "proxies": {"127.0.0.1": "UNHEALTHY", "127.0.0.2": "HEALTHY"},
            "proxy_messages": {"127.0.0.1": "HTTP proxy could not start on tcp://127.0.0.1:1: port 8 on "
                                            "127.0.0.1 is already in use\nsecond line"}}
    assert status_table(tree).splitlines()[3:] == [
        "PROXY      STATUS     MESSAGE",
        "127.0.0.1  UNHEALTHY  HTTP proxy could not start on tcp://127.0.0.1:1: port 8 on 127.0.0.1 is already in use …",
        "127.0.0.2  HEALTHY",
    ]
