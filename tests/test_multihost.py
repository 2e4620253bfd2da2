"""Several hosts on one machine: `dask worker --host 127.0.0.N` processes are different hosts.

Proxies per host (EveryNode, HeadOnly, hosts joining and leaving), replicas spread with
``max_replicas_per_node``, routers preferring their own host's replica, and a whole host lost
under load. Linux routes all of 127/8 to loopback, so binding 127.0.0.2 needs no setup.
"""
import os
import signal
import threading
import time
from collections import Counter

import httpx
import pytest
from distributed import Client
from distributed.comm import get_address_host

import dserve as serve
from dserve.proxy.server import bind_host
from conftest import Hosts, all_healthy, proxy_details, wait_for

pytestmark = pytest.mark.slow

H1, H2, H3, H4 = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"  # hosts: loopback aliases


def by_pid(pids):
    """pid -> host of each worker."""
    return {pid: get_address_host(address) for address, pid in pids.items()}


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
def pong(request=None):
    return "pong"


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
def where(request=None):
    return os.getpid()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """127.0.0.1, .2 and .3, one worker each; .1 and .3 offer the resource `far` (.2 does not)."""
    c = Hosts(tmp_path_factory.mktemp("hosts"))
    try:
        c.add_worker(H1, "far=1")
        c.add_worker(H2)
        c.add_worker(H3, "far=1")
        c.pids(3)
        serve.start(address=c.address)
        wait_for(lambda: serve.status().proxies == all_healthy([H1, H2, H3]), timeout=60, what="three proxies")
        yield c
    finally:
        serve.shutdown()
        c.stop()


@pytest.fixture
def clean(hosts):
    yield hosts
    for name in list(serve.status().applications):
        serve.delete(name)


def test_bind_host_rule():
    assert bind_host("127.0.0.1", "tcp://127.0.0.2:4000") == "127.0.0.2"
    assert bind_host("localhost", "tcp://127.0.0.3:4000") == "127.0.0.3"
    assert bind_host("127.0.0.1", "tcp://127.0.0.1:4000") == "127.0.0.1"
    assert bind_host("127.0.0.1", "tcp://10.0.0.5:4000") == "127.0.0.1"  # a real host: unchanged
    assert bind_host("0.0.0.0", "tcp://127.0.0.2:4000") == "0.0.0.0"  # not loopback: unchanged
    assert bind_host("10.0.0.5", "tcp://127.0.0.2:4000") == "10.0.0.5"
    assert bind_host("127.0.0.1", None) == "127.0.0.1"


def test_every_node_one_proxy_per_host_on_its_own_address(clean):
    serve.run(pong.bind(), name="pong", route_prefix="/pong")
    details = proxy_details()
    assert sorted(details) == [H1, H2, H3]
    assert {h: (d["host"], d["http_host"], d["port"]) for h, d in details.items()} == {
        h: (h, h, clean.http_port) for h in (H1, H2, H3)}
    assert len({d["worker"] for d in details.values()}) == 3
    for h in (H1, H2, H3):
        r = httpx.get(clean.url(h, "/pong"), timeout=10)
        assert (r.status_code, r.text) == (200, "pong")


def test_head_only_runs_one_proxy_on_the_schedulers_host(clean):
    serve.run(pong.bind(), name="pong", route_prefix="/pong")
    try:
        serve.start(address=clean.address, proxy_location="HeadOnly")
        wait_for(lambda: serve.status().proxies == all_healthy([H1]), timeout=60, what="only the head's proxy")
        assert httpx.get(clean.url(H1, "/pong"), timeout=10).text == "pong"
        for h in (H2, H3):
            with pytest.raises(httpx.ConnectError):
                httpx.get(clean.url(h, "/pong"), timeout=10)
    finally:
        serve.start(address=clean.address, proxy_location="EveryNode")
    wait_for(lambda: serve.status().proxies == all_healthy([H1, H2, H3]), timeout=60, what="three proxies again")
    assert httpx.get(clean.url(H3, "/pong"), timeout=10).text == "pong"


def test_a_host_joining_gets_a_proxy_and_one_leaving_takes_it_away(clean):
    serve.run(pong.bind(), name="pong", route_prefix="/pong")
    joined = clean.add_worker(H4)
    try:
        clean.pids(4)
        wait_for(lambda: serve.status().proxies == all_healthy([H1, H2, H3, H4]), timeout=30,
                 what="a proxy on the new host")
        assert proxy_details()[H4]["http_host"] == H4
        assert httpx.get(clean.url(H4, "/pong"), timeout=10).text == "pong"
    finally:
        joined.send_signal(signal.SIGTERM)
        joined.wait(30)
        clean.workers.pop(joined)
    wait_for(lambda: serve.status().proxies == all_healthy([H1, H2, H3]), timeout=30,
             what="the leaving host's proxy gone")
    with pytest.raises(httpx.ConnectError):
        httpx.get(clean.url(H4, "/pong"), timeout=10)


def test_max_replicas_per_node_puts_one_replica_on_each_host(clean):
    serve.run(where.options(num_replicas=3, max_replicas_per_node=1).bind(), name="spread", route_prefix=None)
    hosts_of = by_pid(clean.pids(3))
    replicas = clean.replicas("spread")
    assert [h for h, _ in replicas] == [H1, H2, H3]
    assert all(hosts_of[pid] == h for h, pid in replicas)  # each replica runs in a worker of its host


def test_routers_prefer_their_own_hosts_replica_and_fall_back_across_hosts(clean):
    pids = clean.pids(3)
    on = {get_address_host(a): a for a in pids}
    handle = serve.run(where.options(num_replicas=3, max_replicas_per_node=1).bind(), name="local", route_prefix=None)

    def sequential_calls(handle, n):  # a Dask task (local, so pickled by value): calls from its worker
        return [handle.remote().result(timeout_s=30) for _ in range(n)]

    with Client(clean.address, timeout=30) as client:
        got = client.submit(sequential_calls, handle, 50, workers=[on[H2]], pure=False).result(timeout=120)
        assert got == [pids[on[H2]]] * 50  # every call on the replica of the caller's host
        # no replica on 127.0.0.2 (only .1 and .3 offer `far`): the calls cross hosts, all succeed
        far = where.options(num_replicas=2, max_replicas_per_node=1, ray_actor_options={"num_cpus": 0.1,
                                                                                         "resources": {"far": 1}})
        handle = serve.run(far.bind(), name="far", route_prefix=None)
        assert sorted(h for h, _ in clean.replicas("far")) == [H1, H3]
        got = client.submit(sequential_calls, handle, 50, workers=[on[H2]], pure=False).result(timeout=120)
        assert len(got) == 50 and set(got) == {pids[on[H1]], pids[on[H3]]}


class Load:
    """One thread per URL sending GETs until stopped; each request's (url, status or "client", seconds)."""

    def __init__(self, urls):
        self.records = []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(url,)) for url in urls]
        for t in self.threads:
            t.start()

    def _run(self, url):
        with httpx.Client(timeout=20) as client:
            while not self.stop_flag.is_set():
                start = time.monotonic()
                try:
                    outcome = client.get(url).status_code
                except httpx.HTTPError:
                    outcome = "client"
                with self.lock:
                    self.records.append((url, outcome, time.monotonic() - start))
                time.sleep(0.01)  # light load

    def ok(self):
        with self.lock:
            return sum(1 for r in self.records if r[1] == 200)

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join()


def test_losing_every_worker_of_a_host_under_load(clean):
    """127.0.0.5 joins with two workers and is SIGKILLed whole while the other hosts' proxies serve."""
    H5 = "127.0.0.5"
    doomed = [clean.add_worker(H5), clean.add_worker(H5)]
    try:
        clean.pids(5)
        wait_for(lambda: serve.status().proxies == all_healthy([H1, H2, H3, H5]), timeout=60, what="four proxies")
        serve.run(where.options(num_replicas=5).bind(), name="where", route_prefix="/where")
        # isolation: every proxy-free worker first — the only one is H5's second worker (its first hosts
        # H5's proxy), so all five share it rather than a proxy's process
        assert [h for h, _ in clean.replicas("where")] == [H5] * 5
        urls = [clean.url(h, "/where") for h in (H1, H2, H3)]
        load = Load(urls)
        try:
            wait_for(lambda: load.ok() > 60, timeout=30, what="load to run")
            for p in doomed:
                p.kill()  # SIGKILL
            for p in doomed:
                p.wait(10)
            killed_at = load.ok()
            wait_for(lambda: serve.status().proxies == all_healthy([H1, H2, H3]), timeout=30,
                     what="the dead host's proxy gone")
            # five RUNNING again, spread over the three live hosts' workers (2, 2 and 1)
            wait_for(lambda: sorted(Counter(h for h, _ in clean.replicas("where")).items(), key=lambda kv: kv[0])
                     in ([(H1, 1), (H2, 2), (H3, 2)], [(H1, 2), (H2, 1), (H3, 2)], [(H1, 2), (H2, 2), (H3, 1)]),
                     timeout=60, what="replacement replicas on the live hosts")
            wait_for(lambda: load.ok() > killed_at + 100, timeout=60, what="requests to keep succeeding")
            settled = len(load.records)
            wait_for(lambda: len(load.records) > settled + 60, timeout=30, what="more requests")
        finally:
            load.stop()
    finally:
        for p in doomed:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            clean.workers.pop(p)
    records = load.records
    failures = [r for r in records if r[1] != 200]
    # only requests in flight on the lost replicas may fail (one per load thread), each with a 5xx
    assert len(failures) <= len(urls), failures
    assert all(isinstance(code, int) and code >= 500 for _, code, _ in failures), failures
    assert max(seconds for _, _, seconds in records) < 15  # every request ended in bounded time
    assert [code for _, code, _ in records[settled:]] == [200] * len(records[settled:])
    assert {url for url, _, _ in records[settled:]} == set(urls)
