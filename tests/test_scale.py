"""The control plane at scale: thousands of replicas start (and drain) in bounded batches,
placed in O(replicas) per reconcile step, and the scheduler's event loop stays responsive;
a deployment larger than MAX_REPLICAS_PER_DEPLOYMENT is rejected up front."""
import asyncio
import gc
import time

import pytest
from pydantic import ValidationError

import dserve as serve
from conftest import wait_for
from dserve.api import deploy_specs
from dserve.build import application_spec
from dserve.config import MAX_REPLICAS_PER_DEPLOYMENT, MAX_STARTING_REPLICAS
from dserve.runtime import current_runtime
from dserve.schema import DeploymentSchema, ReplicaState


class LoopWatch:
    """Samples the scheduler's event loop (it runs in this process: the embedded cluster)
    every 50 ms: how late each sample was, and whatever ``probe`` returns. Python's full
    garbage collections stop every thread of the process (this test's, the scheduler's):
    their pauses are recorded apart, so ``max_lag_outside_gc`` is what the control plane's
    own work cost the loop."""

    def __init__(self, probe=lambda: 0):
        self.probe = probe
        self.samples = []  # (start, end, lag)
        self.probes = [0]
        self.gc_pauses = []  # (start, end)
        self._gc_started = 0.0
        self.stopped = False
        gc.callbacks.append(self._on_gc)
        loop = serve.api._owned_cluster.loop.asyncio_loop
        self.future = asyncio.run_coroutine_threadsafe(self._run(), loop)

    def _on_gc(self, phase, info):
        if phase == "start":
            self._gc_started = time.monotonic()
        else:
            self.gc_pauses.append((self._gc_started, time.monotonic()))

    async def _run(self):
        while not self.stopped:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            end = time.monotonic()
            self.samples.append((t, end, end - t - 0.05))
            self.probes.append(self.probe())

    def stop(self):
        self.stopped = True
        self.future.result(timeout=10)
        gc.callbacks.remove(self._on_gc)

    @property
    def max_lag(self):
        return max(lag for _, _, lag in self.samples)

    @property
    def max_lag_outside_gc(self):
        def in_gc(start, end):
            return sum(max(0.0, min(end, g1) - max(start, g0)) for g0, g1 in self.gc_pauses)

        return max(lag - in_gc(start, end) for start, end, lag in self.samples)

    def report(self):
        longest_gc = max((g1 - g0 for g0, g1 in self.gc_pauses), default=0.0)
        return (f"scheduler loop max lag {self.max_lag:.2f}s, {self.max_lag_outside_gc:.2f}s outside "
                f"garbage collection (longest collection {longest_gc:.2f}s)")


def zero_cpu(n):
    @serve.deployment(name="Tiny", num_replicas=n, ray_actor_options={"num_cpus": 0})
    def tiny():
        return "ok"

    return tiny


def deployment_state(app):
    controller = serve.api._owned_cluster.scheduler.plugins["dserve-controller"]
    application = controller.store.apps.get(app)
    return application.deployments.get("Tiny") if application is not None else None


def test_replicas_start_in_bounded_batches(serve_instance):
    def starting():
        dep = deployment_state("batches")
        return 0 if dep is None else sum(r.state == ReplicaState.STARTING for r in list(dep.replicas.values()))

    watch = LoopWatch(starting)
    handle = serve.run(zero_cpu(3 * MAX_STARTING_REPLICAS).bind(), name="batches", route_prefix=None)
    watch.stop()
    # the invariant, sampled on the scheduler's loop every 50 ms (before: all 300 at once)
    assert 0 < max(watch.probes) <= MAX_STARTING_REPLICAS
    assert serve.status().applications["batches"].deployments["Tiny"].replica_states == {"RUNNING": 300}
    assert handle.remote().result(timeout_s=30) == "ok"
    serve.delete("batches")


LIMIT_MESSAGE = ("must be at most 2000 (dserve's limit per deployment, see README \"Scale\"), got 10000")


def test_more_replicas_than_the_limit_are_rejected_up_front(serve_instance):
    assert MAX_REPLICAS_PER_DEPLOYMENT == 2000
    with pytest.raises(ValueError) as info:
        zero_cpu(10_000)
    assert str(info.value).splitlines()[:3] == [
        "invalid options for deployment 'Tiny': 1 validation error for DeploymentConfig", "num_replicas",
        f"  Value error, num_replicas {LIMIT_MESSAGE} [type=value_error, input_value=10000, input_type=int]"]
    with pytest.raises(ValueError) as info:
        zero_cpu(1).options(num_replicas=None, autoscaling_config={"min_replicas": 1, "max_replicas": 10_000})
    assert str(info.value).splitlines()[:3] == [
        "invalid options for deployment 'Tiny': 1 validation error for DeploymentConfig",
        "autoscaling_config.max_replicas",
        f"  Value error, max_replicas {LIMIT_MESSAGE} [type=value_error, input_value=10000, input_type=int]"]
    with pytest.raises(ValidationError) as info:
        DeploymentSchema(name="Tiny", num_replicas=10_000)
    assert [e["msg"] for e in info.value.errors()] == ["Value error, num_replicas " + LIMIT_MESSAGE]
    spec = application_spec(zero_cpu(1).bind(), "huge", None)  # a client that skips the check
    object.__setattr__(spec.deployments[0].config, "num_replicas", 10_000)
    with pytest.raises(ValueError) as info:
        deploy_specs(current_runtime(), [spec])
    assert str(info.value) == "num_replicas " + LIMIT_MESSAGE
    assert "huge" not in serve.status().applications


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_largest_deployment_reaches_running_with_a_responsive_scheduler(serve_instance):
    watch = LoopWatch()
    started = time.monotonic()
    deploy_specs(current_runtime(), [application_spec(zero_cpu(MAX_REPLICAS_PER_DEPLOYMENT).bind(), "big", None)])
    wait_for(lambda: serve.status().applications["big"].status == "RUNNING", timeout=600, interval=1,
             what=f"{MAX_REPLICAS_PER_DEPLOYMENT} replicas RUNNING")
    took = time.monotonic() - started
    states = serve.status().applications["big"].deployments["Tiny"].replica_states
    assert states == {"RUNNING": MAX_REPLICAS_PER_DEPLOYMENT}
    assert serve.get_app_handle("big").remote().result(timeout_s=60) == "ok"
    serve.delete("big")
    watch.stop()
    print(f"{MAX_REPLICAS_PER_DEPLOYMENT} replicas RUNNING after {took:.0f}s; deleted after "
          f"{time.monotonic() - started - took:.0f}s; {watch.report()}")
    assert watch.max_lag_outside_gc < 1.0
