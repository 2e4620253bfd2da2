"""The controller contains faults: one deployment's failing policy never harms the others."""
from __future__ import annotations

import sys
import time

import pytest

import dserve as serve
from conftest import wait_for


def exits_the_process(ctx):
    sys.exit(3)


def raises(ctx):
    raise ValueError("policy bug")


def sleeps_forever(ctx):
    time.sleep(3600)


@serve.deployment
def echo(x: int = 1) -> int:
    return x


FAILED = "The autoscaling policy failed ({}); keeping 2 replica(s)."


@pytest.mark.parametrize("policy,message", [
    (exits_the_process, FAILED.format("SystemExit: 3")),
    (raises, FAILED.format("ValueError: policy bug")),
    (sleeps_forever, "The autoscaling policy did not return within 1s; keeping 2 replica(s)."),
])
def test_a_failing_policy_keeps_its_target_and_the_rest_serving(serve_instance, policy, message):
    faulty = echo.options(name="faulty", autoscaling_config={
        "min_replicas": 1, "max_replicas": 3, "initial_replicas": 2, "policy": policy})
    handle = serve.run(faulty.bind(), name="faulty", route_prefix="/faulty")
    healthy = serve.run(echo.bind(), name="healthy", route_prefix="/healthy")

    def failure_shown():
        dep = serve.status().applications["faulty"].deployments["faulty"]
        return dep.message == message and dep
    dep = wait_for(failure_shown, timeout=30, what="the policy failure in the status")
    assert dep.replica_states == {"RUNNING": 2}
    assert serve.status().applications["faulty"].status == "RUNNING"
    assert handle.remote(5).result(timeout_s=30) == 5
    assert healthy.remote(7).result(timeout_s=30) == 7
    serve.delete("faulty")
    serve.delete("healthy")


def test_a_policy_the_scheduler_cannot_import_is_rejected_at_deploy(serve_instance):
    bad = echo.options(name="unimportable", autoscaling_config={
        "min_replicas": 1, "max_replicas": 2, "policy": "no_such_module_for_dserve:policy"})
    with pytest.raises(ValueError, match="Deployment 'unimportable': its autoscaling policy "
                                         "'no_such_module_for_dserve:policy' cannot be imported on the scheduler: "
                                         "ModuleNotFoundError"):
        serve.run(bad.bind(), name="unimportable", route_prefix="/unimportable")
    assert "unimportable" not in serve.status().applications
