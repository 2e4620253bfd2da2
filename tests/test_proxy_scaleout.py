"""Proxies that scale out on one host: ``HTTPOptions.proxies_per_host`` workers of a host share its
HTTP port through SO_REUSEPORT, the kernel spreads connections among them, and when one dies the
others keep serving."""
import os
import signal
import socket

import httpx
import pytest
from distributed import Client
from distributed.comm import get_address_host

import dserve as serve
from dserve.config import HTTPOptions
from conftest import Hosts, all_healthy, proxy_details, scrape, value, wait_for

H1, H2 = "127.0.0.1", "127.0.0.2"  # two hosts: loopback aliases


@serve.deployment(ray_actor_options={"num_cpus": 0.1, "resources": {"far": 1}})
def pong(request=None):
    return "pong"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")]


def test_proxies_per_host_is_a_documented_http_option():
    assert HTTPOptions().proxies_per_host == 1
    assert HTTPOptions(proxies_per_host=3).proxies_per_host == 3
    with pytest.raises(ValueError, match="proxies_per_host"):
        HTTPOptions(proxies_per_host=0)


@pytest.fixture
def cluster(tmp_path):
    """Two workers on 127.0.0.1 and one on 127.0.0.2 (the only one offering `far`: the replica's)."""
    c = Hosts(tmp_path, preload_args=("--dserve-http-proxies-per-host", "2"))
    try:
        c.add_worker(H1)
        c.add_worker(H1)
        c.add_worker(H2, "far=1")
        c.pids(3)
        yield c
    finally:
        serve.shutdown()
        c.stop()


def http_requests(port):
    """The HTTP requests one worker's proxy counted (its /metrics)."""
    return value(scrape(port), "ray_serve_num_http_requests_total", application="pong")


def test_two_proxies_share_one_hosts_port_and_survive_each_other(cluster):
    serve.run(pong.bind(), address=cluster.address, name="pong", route_prefix="/pong")
    expected = all_healthy([H1, f"{H1}#1", H2])
    wait_for(lambda: serve.status().proxies == expected, timeout=60, what="two proxies on 127.0.0.1, one on .2")
    details = proxy_details()
    assert {k: (d["host"], d["http_host"], d["port"]) for k, d in details.items()} == {
        H1: (H1, H1, cluster.http_port), f"{H1}#1": (H1, H1, cluster.http_port), H2: (H2, H2, cluster.http_port)}
    pair = sorted(details[k]["worker"] for k in (H1, f"{H1}#1"))
    assert len(set(pair)) == 2
    with Client(cluster.address, timeout=30) as client:
        info = client.scheduler_info()["workers"]
        dashboards = {a: info[a]["services"]["dashboard"] for a in pair}
        pids = client.run(os.getpid)
    assert all(get_address_host(a) == H1 for a in pair)

    # fresh connections: the kernel spreads them over both listeners (the chance that 200 all
    # hash to one of two is 2**-199)
    for _ in range(200):
        r = httpx.get(cluster.url(H1, "/pong"), headers={"connection": "close"}, timeout=10)
        assert (r.status_code, r.text) == (200, "pong")
    counts = wait_for(lambda: (lambda c: sum(c) == 200 and c)([http_requests(dashboards[a]) for a in pair]),
                      timeout=30, what="both proxies' request counts")
    assert min(counts) > 0, counts

    victim, survivor = pair
    os.kill(pids[victim], signal.SIGKILL)
    proc = next(p for p in cluster.workers if p.pid == pids[victim])
    proc.wait(10)
    for _ in range(100):  # the survivor takes every new connection
        r = httpx.get(cluster.url(H1, "/pong"), headers={"connection": "close"}, timeout=10)
        assert (r.status_code, r.text) == (200, "pong")
    wait_for(lambda: serve.status().proxies == all_healthy([H1, H2]), timeout=30, what="the dead proxy gone")
    assert proxy_details()[H1]["worker"] == survivor
    assert http_requests(dashboards[survivor]) == counts[1] + 100
