"""The controller contains faults: one deployment's failing policy never harms the others."""
from __future__ import annotations

import sys

import pytest

import dserve as serve
from conftest import wait_for


def exits_the_process(ctx):
    sys.exit(3)


def raises(ctx):
    raise ValueError("policy bug")


@serve.deployment
def echo(x: int = 1) -> int:
    return x


@pytest.mark.parametrize("policy,reason", [(exits_the_process, "SystemExit: 3"), (raises, "ValueError: policy bug")])
def test_a_failing_policy_keeps_its_target_and_the_rest_serving(serve_instance, policy, reason):
    faulty = echo.options(name="faulty", autoscaling_config={
        "min_replicas": 1, "max_replicas": 3, "initial_replicas": 2, "policy": policy})
    handle = serve.run(faulty.bind(), name="faulty", route_prefix="/faulty")
    healthy = serve.run(echo.bind(), name="healthy", route_prefix="/healthy")

    def failure_shown():
        dep = serve.status().applications["faulty"].deployments["faulty"]
        return reason in dep.message and dep
    dep = wait_for(failure_shown, timeout=30, what="the policy failure in the status")
    assert dep.message == f"The autoscaling policy failed ({reason}); keeping 2 replica(s)."
    assert dep.replica_states == {"RUNNING": 2}
    assert serve.status().applications["faulty"].status == "RUNNING"
    assert handle.remote(5).result(timeout_s=30) == 5
    assert healthy.remote(7).result(timeout_s=30) == 7
    serve.delete("faulty")
    serve.delete("healthy")
