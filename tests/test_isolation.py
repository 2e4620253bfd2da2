"""Isolation by default: a replica gets a worker process of its own (Ray Serve's one replica,
one process) whenever one fits — never the proxy's, never another deployment's — and shares
only when none does, on a cluster that then asks for more workers and moves it once one
joins. ``dserve.placement: colocated`` restores sharing. The embedded cluster starts a proxy
worker (``--resources proxy=1``) and replica workers. A replica's process dying takes down
only that replica: the proxy and the other deployments keep serving.
"""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Dict, List, Set

import dask
import httpx
import pytest
from distributed import Client, LocalCluster

import dserve as serve
from conftest import free_port, proxy_url, wait_for
from dserve.config import EMBEDDED_MAX_WORKERS_PER_CPU


@serve.deployment
class Pid:
    def __call__(self, request=None):
        time.sleep(0.005)
        return os.getpid()


@serve.deployment
class Front:
    def __init__(self, back):
        self.back = back

    async def __call__(self, request=None):
        return await self.back.remote()


def controller_of(cluster):
    return cluster.scheduler.plugins["dserve-controller"]


def layout(controller) -> Dict[str, Set[str]]:
    """worker address -> the deployments with live (not stopping) replicas there."""
    out: Dict[str, Set[str]] = {}
    for app in controller.store.apps.values():
        for dep in app.deployments.values():
            for r in dep.replicas.values():
                if r.state.value != "STOPPING":
                    out.setdefault(r.worker, set()).add(dep.name)
    return out


def proxy_worker(controller) -> str:
    (address,) = controller.proxies.proxies
    return address


@pytest.fixture
def in_process_cluster(request):
    """A LocalCluster of in-process workers (placement needs workers, not processes)."""
    serve.shutdown()
    with LocalCluster(n_workers=request.param, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=":0") as cluster:
        serve.start(address=cluster.scheduler_address, http_options={"port": free_port()})
        try:
            proxy_url()  # the proxy is elected and up before anything is placed
            yield cluster
        finally:
            serve.shutdown()


@pytest.mark.parametrize("in_process_cluster", [3], indirect=True)
def test_replicas_avoid_the_proxy_worker_and_each_other(in_process_cluster):
    controller = controller_of(in_process_cluster)
    proxy = proxy_worker(controller)
    serve.run(Front.bind(Pid.bind()), name="app", route_prefix="/app")
    placed = layout(controller)
    assert proxy not in placed
    assert sorted(sorted(names) for names in placed.values()) == [["Front"], ["Pid"]]
    assert httpx.get(proxy_url() + "/app", timeout=10).status_code == 200
    assert (controller.coupling.crowded(), controller.coupling.desired_workers()) == (0, 3)
    # no worker of its own left: a third deployment shares with another deployment, not the proxy,
    # and the cluster coupling asks for one more worker
    serve.run(Pid.options(name="Third").bind(), name="third", route_prefix="/third")
    placed = layout(controller)
    assert proxy not in placed
    assert sorted(sorted(names) for names in placed.values()) in ([["Front"], ["Pid", "Third"]],
                                                                  [["Front", "Third"], ["Pid"]])
    assert (controller.coupling.crowded(), controller.coupling.desired_workers()) == (1, 4)


@pytest.mark.parametrize("in_process_cluster", [1], indirect=True)
def test_one_worker_shares_with_the_proxy_then_the_replica_moves_to_a_new_worker(in_process_cluster):
    controller = controller_of(in_process_cluster)
    proxy = proxy_worker(controller)
    handle = serve.run(Pid.bind(), name="solo", route_prefix="/solo")
    assert layout(controller) == {proxy: {"Pid"}}  # no other worker: it shares, and serves
    assert httpx.get(proxy_url() + "/solo", timeout=10).status_code == 200
    assert (controller.coupling.crowded(), controller.coupling.desired_workers()) == (1, 2)
    statuses: List[str] = []

    def moved():
        statuses.append(serve.status().applications["solo"].status)
        placed = layout(controller)
        return len(placed) == 1 and proxy not in placed and sum(
            r.state.value == "RUNNING" for r in controller.store.apps["solo"].deployments["Pid"].replicas.values()) == 1

    in_process_cluster.scale(2)
    wait_for(moved, timeout=60, what="the replica to move to the new worker")
    (new_worker,) = set(in_process_cluster.scheduler.workers) - {proxy}
    assert layout(controller) == {new_worker: {"Pid"}}
    assert set(statuses) == {"RUNNING"}  # a move is no redeploy: the application stays RUNNING
    assert handle.remote().result(timeout_s=10) == os.getpid()  # in-process workers
    assert (controller.coupling.crowded(), controller.coupling.desired_workers()) == (0, 2)
    wait_for(lambda: controller.store.apps["solo"].deployments["Pid"].replicas.__len__() == 1, timeout=60,
             what="the old replica drained")


def test_colocated_placement_shares_the_proxy_worker():
    serve.shutdown()
    with dask.config.set({"dserve.placement": "colocated"}), \
            LocalCluster(n_workers=3, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
                         dashboard_address=":0") as cluster:
        serve.start(address=cluster.scheduler_address, http_options={"port": free_port()})
        try:
            proxy_url()
            controller = controller_of(cluster)
            assert controller.placement == "colocated"
            serve.run(Pid.options(num_replicas=3).bind(), name="spread", route_prefix="/spread")
            serve.run(Pid.options(name="Other").bind(), name="other", route_prefix="/other")
            placed = layout(controller)
            assert set(placed) == set(cluster.scheduler.workers)  # spread over every worker
            assert "Pid" in placed[proxy_worker(controller)]  # the proxy's worker too
            assert sum(names == {"Pid", "Other"} for names in placed.values()) == 1
            assert (controller.coupling.crowded(), controller.coupling.desired_workers()) == (0, 3)
        finally:
            serve.shutdown()


@serve.deployment(ray_actor_options={"resources": {"proxy": 1}})
class NextToTheProxy:
    def __call__(self):
        return os.getpid()


def test_the_embedded_cluster_has_a_proxy_worker_and_replica_workers():
    serve.shutdown()
    serve.start(http_options={"port": free_port()})
    try:
        cluster = serve.api._owned_cluster
        cpus = os.cpu_count()
        workers = cluster.scheduler.workers.values()
        (proxy,) = [ws for ws in workers if ws.resources]
        assert (proxy.name, proxy.nthreads, proxy.resources) == ("dserve-proxy", 1, {"proxy": 1.0})
        replica_workers = sorted((ws.name, ws.nthreads, ws.resources) for ws in workers if ws is not proxy)
        assert replica_workers == [(i, 4, {}) for i in range(cpus)]
        assert (cluster._adaptive.minimum, cluster._adaptive.maximum) == (
            1 + cpus, 1 + max(cpus, EMBEDDED_MAX_WORKERS_PER_CPU * cpus))
        controller = controller_of(cluster)
        wait_for(lambda: set(controller.proxies.proxies) == {proxy.address}, timeout=30, what="the proxy elected")
        proxy_url()
        # more replicas than cores: they share the replica workers (threads are CPU slots), never the proxy's
        serve.run(Pid.options(num_replicas=2 * cpus, ray_actor_options={"num_cpus": 1}).bind(), name="wide",
                  route_prefix="/wide")
        placed = {address: len(names) for address, names in layout(controller).items()}
        assert proxy.address not in placed
        counts = sorted(sum(1 for r in controller.store.apps["wide"].deployments["Pid"].replicas.values()
                            if r.worker == ws.address) for ws in workers if ws is not proxy)
        assert counts == [2] * cpus
        with Client(cluster.scheduler_address, timeout=30) as client:
            pids = client.run(os.getpid)
        served = {httpx.get(proxy_url() + "/wide", timeout=10).json() for _ in range(10 * cpus)}
        assert served <= {pids[ws.address] for ws in workers if ws is not proxy}
        # a deployment that asks for the proxy resource goes where it is
        handle = serve.run(NextToTheProxy.bind(), name="next", route_prefix=None)
        assert handle.remote().result(timeout_s=30) == pids[proxy.address]
    finally:
        serve.shutdown()


class AsyncLoad:
    """One asyncio loop (in a thread) sending GETs to each URL from ``concurrency`` tasks
    until stopped; records (name, started, seconds, status or exception name, body)."""

    def __init__(self, urls: Dict[str, str], concurrency: int = 4) -> None:
        self.urls, self.concurrency = urls, concurrency
        self.records: list = []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()))
        self.thread.start()

    async def _main(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*[self._loop(client, name, url) for name, url in self.urls.items()
                                   for _ in range(self.concurrency)])

    async def _loop(self, client: httpx.AsyncClient, name: str, url: str) -> None:
        while not self.stop_flag.is_set():
            started = time.monotonic()
            try:
                r = await client.get(url)
                outcome, body = r.status_code, r.text
            except httpx.HTTPError as exc:
                outcome, body = type(exc).__name__, repr(exc)
                await asyncio.sleep(0.05)
            self.records.append((name, started, time.monotonic() - started, outcome, body))

    def of(self, name: str, ok: bool = True, since: float = 0.0) -> list:
        return [r for r in list(self.records) if r[0] == name and (r[3] == 200) == ok and r[1] >= since]

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "a client is stuck"


@pytest.mark.slow
def test_a_replica_process_dying_takes_down_only_that_replica():
    """A and B on worker processes of their own; A's process is SIGKILLed under HTTP load on
    both: B never sees a failure, the proxy never goes down, A fails only its requests in
    flight (typed 500s, at once) and is replaced."""
    serve.shutdown()
    concurrency = 4
    with LocalCluster(n_workers=4, threads_per_worker=2, host="127.0.0.1", dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        port = free_port()
        serve.start(address=cluster.scheduler_address, http_options={"port": port, "request_timeout_s": 10})
        try:
            proxy_url()
            controller = controller_of(cluster)
            proxy = proxy_worker(controller)
            handle_a = serve.run(Pid.options(name="A").bind(), name="a", route_prefix="/a")
            handle_b = serve.run(Pid.options(name="B").bind(), name="b", route_prefix="/b")
            pids = client.run(os.getpid)
            pid_a, pid_b = handle_a.remote().result(timeout_s=10), handle_b.remote().result(timeout_s=10)
            assert len({pid_a, pid_b, pids[proxy]}) == 3  # three processes
            load = AsyncLoad({"a": f"http://127.0.0.1:{port}/a", "b": f"http://127.0.0.1:{port}/b"}, concurrency)
            try:
                wait_for(lambda: len(load.of("a")) > 50 and len(load.of("b")) > 50, timeout=30, what="load on both")
                killed_at = time.monotonic()
                os.kill(pid_a, signal.SIGKILL)
                wait_for(lambda: [r for r in load.of("a", since=killed_at) if int(r[4]) != pid_a], timeout=60,
                         what="A's replacement to answer")
                replaced_at = time.monotonic()
                wait_for(lambda: len(load.of("a", since=replaced_at)) > 50, timeout=30, what="A's traffic to recover")
            finally:
                load.stop()
            failures = load.of("a", ok=False)
            print(f"\nA's process killed: {len(failures)} of A's requests failed, A answered again after "
                  f"{replaced_at - killed_at:.2f}s; B: {len(load.of('b'))} ok, {len(load.of('b', ok=False))} failed")
            assert load.of("b", ok=False) == []  # B: not one failure
            assert [r for r in load.of("b") if int(r[4]) != pid_b] == []  # ... nor a restart
            # the proxy served B all along, from before the kill to after A's recovery, without a pause
            starts = sorted(r[1] for r in load.of("b"))
            assert starts[0] < killed_at and starts[-1] > replaced_at
            assert max(b - a for a, b in zip(starts, starts[1:])) < 2.0
            assert len(failures) <= concurrency, failures  # only A's requests in flight at the kill
            assert all(r[3] == 500 and "ActorDiedError" in r[4] and r[2] < 5 for r in failures), failures
            assert max(r[2] for r in load.records) < 10  # nothing hung
            assert client.run(os.getpid)[proxy] == pids[proxy]  # the proxy's process lived on
            new_pid = handle_a.remote().result(timeout_s=10)
            assert new_pid not in (pid_a, pid_b, pids[proxy])  # A has a process of its own again
        finally:
            serve.shutdown()
