"""Autoscaling: the policy, replicas following load, scale to zero, and Dask's cluster following replicas."""
import asyncio
import threading
import time

import httpx
import pytest

import dserve as serve
from dserve.autoscale.policy import Autoscaler, default_desired
from dserve.config import AutoscalingConfig
from conftest import free_port, proxy_url, wait_for


def test_default_policy_math():
    config = AutoscalingConfig(min_replicas=1, max_replicas=10, target_ongoing_requests=2)
    assert default_desired(config, 1, 8.0) == 4
    assert default_desired(config, 4, 0.0) == 1
    assert default_desired(config, 2, 100.0) == 10
    damped = AutoscalingConfig(min_replicas=0, max_replicas=10, target_ongoing_requests=1, upscaling_factor=0.5)
    assert default_desired(damped, 2, 6.0) == 4  # halfway from 2 to 6


def test_delays_and_zero_to_one():
    config = AutoscalingConfig(min_replicas=0, max_replicas=5, target_ongoing_requests=1,
                               upscale_delay_s=0.2, downscale_delay_s=0.2, downscale_to_zero_delay_s=0.4)
    scaler = Autoscaler()
    names = ("app", "dep")
    assert scaler.decide(config, 1, 1, [(0, 3.0)], 3, 0, names)[0] == 1  # wanted, but not for long enough
    time.sleep(0.25)
    target, why = scaler.decide(config, 1, 1, [(0, 3.0)], 3, 0, names)
    assert target == 3 and "scaled up" in why
    assert scaler.decide(config, 0, 0, [], 0, 2, names)[0] == 2  # from zero: at once
    assert scaler.decide(config, 1, 1, [(0, 0.0)], 0, 0, names)[0] == 1
    time.sleep(0.25)
    assert scaler.decide(config, 1, 1, [(0, 0.0)], 0, 0, names)[0] == 1  # to zero waits longer
    time.sleep(0.2)
    assert scaler.decide(config, 1, 1, [(0, 0.0)], 0, 0, names)[0] == 0


def test_custom_policy_callable():
    config = AutoscalingConfig(min_replicas=1, max_replicas=4, policy=lambda ctx: (ctx.total_num_requests + 1, {}))
    scaler = Autoscaler()
    assert scaler.decide(config, 1, 1, [(0, 2.0)], 2, 0, ("a", "d"))[0] == 3


@serve.deployment(
    max_ongoing_requests=10,
    autoscaling_config={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
                        "upscale_delay_s": 0.2, "downscale_delay_s": 1.0, "look_back_period_s": 1.0},
)
class Busy:
    async def __call__(self, seconds=0.2):
        await asyncio.sleep(seconds)
        return "ok"


def drive(handle, workers, seconds, errors, done):
    stop = time.monotonic() + seconds

    def loop():
        while time.monotonic() < stop:
            try:
                handle.remote().result(timeout_s=30)
                done.append(1)
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(exc)

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for t in threads:
        t.start()
    return threads


def running(app, dep):
    return serve.status().applications[app].deployments[dep].replica_states.get("RUNNING", 0)


def test_replicas_follow_load_and_lose_no_request(clean):
    h = serve.run(Busy.bind(), name="busy")
    assert running("busy", "Busy") == 1
    errors, done = [], []
    threads = drive(h, 6, 6.0, errors, done)
    wait_for(lambda: running("busy", "Busy") == 3, timeout=20, what="scale up to 3")
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    rt = current_runtime()
    info = _sync(rt, rt.rpc("dserve_status"))["applications"]["busy"]["deployments"]["Busy"]["autoscaling"]
    assert info["target_replicas"] == 3 and "scaled up" in info["last_decision"]
    for t in threads:
        t.join()
    wait_for(lambda: running("busy", "Busy") == 1, timeout=30, what="scale back down to 1")
    assert errors == [] and len(done) > 0
    dep = serve.status().applications["busy"].deployments["Busy"]
    assert dep.status == "HEALTHY" and dep.status_trigger == "DOWNSCALE_COMPLETED"


@serve.deployment(
    autoscaling_config={"min_replicas": 0, "initial_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 1,
                        "upscale_delay_s": 0.1, "downscale_delay_s": 0.5, "downscale_to_zero_delay_s": 0.5,
                        "look_back_period_s": 0.5},
)
def sleepy(request=None):
    return "awake"


def test_scale_to_zero_and_cold_start_over_handle_and_http(clean):
    h = serve.run(sleepy.bind(), name="zero", route_prefix="/zero")
    assert running("zero", "sleepy") == 0
    start = time.monotonic()
    assert h.remote().result(timeout_s=30) == "awake"
    assert time.monotonic() - start < 10
    wait_for(lambda: running("zero", "sleepy") == 0, timeout=30, what="scale to zero")
    r = httpx.get(f"{proxy_url()}/zero", timeout=30)
    assert (r.status_code, r.text) == (200, "awake")


@pytest.mark.slow
def test_adaptive_dask_cluster_follows_replicas():
    """A deployment needing more CPUs than the cluster has makes Adaptive add a
    worker; when it scales down, the extra worker goes away and replica hosts stay."""
    from distributed import LocalCluster

    serve.shutdown()
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    adaptive = cluster.adapt(minimum=1, maximum=3, interval="200ms", wait_count=2)
    try:
        serve.start(address=cluster.scheduler_address, http_options={"port": free_port()},
                    proxy_location="Disabled")

        @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1})
        class Wide:
            def __call__(self):
                return "ok"

        from dserve import api
        from dserve.build import application_spec
        from dserve.runtime import get_runtime

        api.deploy_specs(get_runtime(), [application_spec(Wide.bind(), "wide", None)])
        wait_for(lambda: len(cluster.scheduler_info["workers"]) >= 2, timeout=60, what="a second worker")
        wait_for(lambda: serve.status().applications["wide"].status == "RUNNING", timeout=60, what="RUNNING")
        serve.run(Wide.options(num_replicas=1).bind(), name="wide", route_prefix=None)
        wait_for(lambda: len(cluster.scheduler_info["workers"]) == 1, timeout=60, what="the extra worker retired")
        assert serve.get_app_handle("wide").remote().result(timeout_s=30) == "ok"
    finally:
        serve.shutdown()
        adaptive.stop()
        cluster.close()
