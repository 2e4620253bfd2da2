"""Bounded tables: callers who give up leave the router's queue at once; routers of deleted
deployments, queue reports of callers that went away and replicas lost with their worker
are forgotten."""
import asyncio
import os
import signal
import threading
import time

import httpx
import pytest

import dserve as serve
from conftest import proxy_url, wait_for


def controller():
    """The controller object (the embedded cluster's scheduler runs in this process)."""
    return serve.api._owned_cluster.scheduler.plugins["dserve-controller"]


def rpc(op, **kwargs):
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    rt = current_runtime()
    return _sync(rt, rt.rpc(op, **kwargs))


@serve.deployment(max_ongoing_requests=1, max_queued_requests=2)
class Gated:
    """Each call counts itself, says it is running, then waits for the gate file."""

    def __init__(self, gate_dir):
        self.dir = gate_dir
        self.calls = 0

    async def __call__(self, request=None):
        self.calls += 1
        open(os.path.join(self.dir, f"running-{self.calls}"), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(self.dir, "open")) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.calls


def running(tmp_path, n):
    return os.path.exists(tmp_path / f"running-{n}")


def test_cancelled_handle_calls_leave_the_queue(serve_instance, tmp_path):
    from dserve.runtime import current_runtime

    h = serve.run(Gated.bind(str(tmp_path)), name="gated_handle", route_prefix=None)
    first = h.remote()
    wait_for(lambda: running(tmp_path, 1), what="the first call running")
    queued = [h.remote(), h.remote()]
    router = current_runtime().routers[("gated_handle", "Gated")]
    wait_for(lambda: router.num_queued == 2, what="two calls queued")
    for response in queued:
        response.cancel()
    wait_for(lambda: router.num_queued == 0, timeout=5, what="the cancelled calls to leave the queue")
    fourth = h.remote()  # accepted: the queue is empty, not full of cancelled callers
    wait_for(lambda: router.num_queued == 1, what="the fourth call queued")
    open(tmp_path / "open", "w").close()
    assert first.result(timeout_s=30) == 1
    assert fourth.result(timeout_s=30) == 2  # the cancelled calls never reached the replica
    for response in queued:
        with pytest.raises(serve.exceptions.RequestCancelledError):
            response.result(timeout_s=5)
    serve.delete("gated_handle")


def test_http_clients_that_time_out_leave_the_queue(serve_instance, tmp_path):
    serve.run(Gated.bind(str(tmp_path)), name="gated_http", route_prefix="/gated")
    url = f"{proxy_url()}/gated"
    results = {}

    def get(n, timeout):
        try:
            r = httpx.get(url, timeout=timeout)
            results[n] = (r.status_code, r.text)
        except httpx.HTTPError as exc:
            results[n] = type(exc)

    first = threading.Thread(target=get, args=(1, 60))
    first.start()
    wait_for(lambda: running(tmp_path, 1), what="the first request running")
    metrics = controller().metrics
    impatient = [threading.Thread(target=get, args=(n, 3)) for n in (2, 3)]
    for t in impatient:
        t.start()
    wait_for(lambda: metrics.total_queued("gated_http#Gated") == 2, timeout=10,
             what="the proxy to report two queued requests")
    for t in impatient:
        t.join()
    assert results[2] is httpx.ReadTimeout and results[3] is httpx.ReadTimeout
    # the proxy's queue is empty again (before: the two were counted forever, so autoscaling
    # saw them and every further request was a 503 under max_queued_requests=2)
    wait_for(lambda: metrics.total_queued("gated_http#Gated") == 0, timeout=10,
             what="the queue report to drop to zero")
    fourth = threading.Thread(target=get, args=(4, 60))
    fourth.start()
    wait_for(lambda: metrics.total_queued("gated_http#Gated") == 1, timeout=10, what="the fourth request queued")
    open(tmp_path / "open", "w").close()
    first.join()
    fourth.join()
    assert results[1] == (200, "1")
    assert results[4] == (200, "2")
    serve.delete("gated_http")


def test_router_of_a_deleted_deployment_is_dropped(serve_instance):
    from dserve.runtime import current_runtime

    @serve.deployment
    def hello():
        return "hello"

    h = serve.run(hello.bind(), name="short_lived", route_prefix=None)
    assert h.remote().result(timeout_s=30) == "hello"
    routers = current_runtime().routers
    assert ("short_lived", "hello") in routers
    serve.delete("short_lived")
    wait_for(lambda: ("short_lived", "hello") not in routers, timeout=10, what="the router dropped")
    with pytest.raises(serve.exceptions.DeploymentUnavailableError):
        h.remote().result(timeout_s=30)
    h = serve.run(hello.bind(), name="short_lived", route_prefix=None)  # the same name again works
    assert h.remote().result(timeout_s=30) == "hello"
    serve.delete("short_lived")


def test_queue_reports_of_a_caller_that_went_away_are_forgotten(serve_instance):
    from dserve.autoscale.metrics import STALE_AFTER_S

    metrics = controller().metrics
    rpc("dserve_report_queued", source="gone-process", counts={"some_app#Model": 3, "some_app#Other": 0})
    assert metrics.queued.get(("some_app#Model", "gone-process"), (0, 0))[1] == 3
    assert ("some_app#Other", "gone-process") not in metrics.queued  # an empty queue keeps no entry
    started = time.monotonic()
    wait_for(lambda: ("some_app#Model", "gone-process") not in metrics.queued, timeout=10,
             what="the stale report pruned")
    assert time.monotonic() - started >= STALE_AFTER_S - 0.5  # not before it went stale
    assert metrics.total_queued("some_app#Model") == 0


@pytest.mark.slow
def test_replicas_lost_with_their_worker_are_forgotten_in_metrics(serve_instance):
    @serve.deployment(num_replicas=4, ray_actor_options={"num_cpus": 0})
    def pid():
        return os.getpid()

    serve.run(pid.bind(), name="lost", route_prefix=None)
    ctl = controller()
    dep = ctl.store.apps["lost"].deployments["pid"]
    by_worker = {}
    for r in list(dep.replicas.values()):
        by_worker.setdefault(r.worker, []).append(r.replica_id)
    assert len(by_worker) == min(4, os.cpu_count())  # spread over the replica workers (one per CPU)
    proxy_worker = next(iter(ctl.proxies.proxies))
    victim = next(address for address in by_worker if address != proxy_worker)
    lost = set(by_worker[victim])
    wait_for(lambda: lost <= set(ctl.metrics.running), timeout=10, what="load reports from every replica")
    os.kill(ctl.scheduler.workers[victim].pid, signal.SIGKILL)  # its nanny starts a new worker
    wait_for(lambda: victim not in ctl.scheduler.workers, timeout=60, what="the worker gone")
    wait_for(lambda: serve.status().applications["lost"].deployments["pid"].replica_states == {"RUNNING": 4},
             timeout=60, what="the lost replicas replaced")
    assert lost.isdisjoint(dep.replicas)
    assert lost.isdisjoint(ctl.metrics.running)  # at once, not only when the reports go stale
    assert victim not in ctl.ledger.used
    serve.delete("lost")
