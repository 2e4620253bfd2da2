"""Newer Ray Serve APIs: dict-form and class-based autoscaling policies, custom metrics
(``record_autoscaling_stats``), replica ranks, and ``GangSchedulingConfig``."""
import asyncio
import os
import sys

os.environ["DSERVE_RECORD_AUTOSCALING_STATS_TIMEOUT_S"] = "1"  # before the workers start (they inherit it)

import pytest  # noqa: E402

import dserve as serve  # noqa: E402
from conftest import wait_for  # noqa: E402
from dserve.config import (  # noqa: E402
    AutoscalingConfig, AutoscalingContext, AutoscalingPolicy, DeploymentID, GangPlacementStrategy,
    GangRuntimeFailurePolicy, GangSchedulingConfig, TimeStampedValue,
)
from dserve.schema import ReplicaRank  # noqa: E402

APPS_DIR = os.path.join(os.path.dirname(__file__), "apps")


def running(app, dep):
    return serve.status().applications[app].deployments[dep].replica_states.get("RUNNING", 0)


def dep_status(app, dep):
    return serve.status().applications[app].deployments[dep]


def autoscaling_info(app, dep):
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    rt = current_runtime()
    return _sync(rt, rt.rpc("dserve_status"))["applications"][app]["deployments"][dep]["autoscaling"]


@pytest.fixture
def policies():
    """tests/apps on sys.path: the controller (in this process) imports the policies from there."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(APPS_DIR)
        yield
    sys.modules.pop("new_api_policies", None)


# ---- 1. dict-form and class-based policies ----

def test_policy_config_forms():
    policy = AutoscalingConfig(policy={"policy_function": "m:f", "policy_kwargs": {"n": 1}}).policy
    assert isinstance(policy, AutoscalingPolicy)
    assert (policy.policy_function, policy.policy_kwargs) == ("m:f", {"n": 1})
    assert AutoscalingPolicy().policy_function == "ray.serve.autoscaling_policy:default_autoscaling_policy"
    assert AutoscalingConfig(policy={}).policy is None  # Ray's default policy is dserve's built-in one
    with pytest.raises(ValueError, match="policy_kwargs must be JSON-serializable"):
        AutoscalingPolicy(policy_function="m:f", policy_kwargs={"x": object()})
    with pytest.raises(ValueError, match="must be an import path 'module:attribute'"):
        AutoscalingPolicy(policy_function="nodots")


def test_dict_form_function_policy_by_import_path(policies, clean):
    app = serve.deployment(lambda: "ok", name="halves", autoscaling_config={
        "min_replicas": 1, "max_replicas": 5, "policy": {"policy_function": "new_api_policies:two_and_a_half"}})
    h = serve.run(app.bind(), name="halves")
    wait_for(lambda: running("halves", "halves") == 3, timeout=30, what="ceil(2.5) = 3 replicas")
    assert dep_status("halves", "halves").replica_states == {"RUNNING": 3}
    info = autoscaling_info("halves", "halves")
    assert (info["target_replicas"], info["last_decision"]) == (3, "custom policy chose 3 (was 1)")
    assert h.remote().result(timeout_s=30) == "ok"


def test_the_older_name_key_names_the_policy_function(policies, clean):
    assert AutoscalingPolicy(name="m:f").policy_function == "m:f"
    with pytest.raises(ValueError, match="must be an import path 'module:attribute'"):
        AutoscalingPolicy(name="nodots")
    app = serve.deployment(lambda: "ok", name="named", autoscaling_config={
        "min_replicas": 1, "max_replicas": 5, "policy": {"name": "new_api_policies:two_and_a_half"}})
    serve.run(app.bind(), name="named")
    wait_for(lambda: running("named", "named") == 3, timeout=30, what="ceil(2.5) = 3 replicas")
    assert autoscaling_info("named", "named")["last_decision"] == "custom policy chose 3 (was 1)"


def test_class_based_policy_with_kwargs_is_built_once(policies, clean):
    import new_api_policies

    new_api_policies.FixedCount.instances = 0
    app = serve.deployment(lambda: "ok", name="fixed", autoscaling_config={
        "min_replicas": 1, "max_replicas": 6,
        "policy": AutoscalingPolicy(policy_function="new_api_policies:FixedCount", policy_kwargs={"count": 4})})
    serve.run(app.bind(), name="fixed")
    wait_for(lambda: running("fixed", "fixed") == 4, timeout=30, what="four replicas")
    assert autoscaling_info("fixed", "fixed")["last_decision"] == "custom policy chose 4 (was 1)"
    assert new_api_policies.FixedCount.instances == 1


def test_a_policy_path_that_does_not_import_is_refused_at_deploy(policies, clean):
    app = serve.deployment(lambda: "ok", name="nope", autoscaling_config={
        "policy": {"policy_function": "new_api_policies:missing"}})
    with pytest.raises(Exception, match="'new_api_policies:missing' cannot be imported on the scheduler: "
                                        "AttributeError"):
        serve.run(app.bind(), name="nope")


# ---- 2. custom metrics ----

@serve.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 8, "look_back_period_s": 5,
                                      "policy": {"policy_function": "new_api_policies:by_backlog"}})
class SyncBacklog:
    def record_autoscaling_stats(self):
        return {"backlog": 25}

    def __call__(self):
        return "ok"


@serve.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 8, "look_back_period_s": 5,
                                      "policy": {"policy_function": "new_api_policies:by_backlog"}})
class AsyncBacklog:
    async def record_autoscaling_stats(self):
        await asyncio.sleep(0)
        return {"backlog": 45.0}

    def __call__(self):
        return "ok"


@pytest.mark.parametrize("cls, backlog, replicas", [(SyncBacklog, 25.0, 3), (AsyncBacklog, 45.0, 5)])
def test_policy_scales_on_a_custom_metric(policies, clean, cls, backlog, replicas):
    import new_api_policies

    name = cls.name
    serve.run(cls.bind(), name=name)
    wait_for(lambda: running(name, name) == replicas, timeout=30, what=f"{replicas} replicas from the backlog")
    ctx = new_api_policies.SEEN[name]
    assert isinstance(ctx, AutoscalingContext)
    assert set(ctx.aggregated_metrics) == set(ctx.raw_metrics) == {"backlog"}
    assert set(ctx.aggregated_metrics["backlog"].values()) == {backlog}
    assert set(ctx.raw_metrics["backlog"]) <= set(ctx.running_replicas)
    samples = [s for series in ctx.raw_metrics["backlog"].values() for s in series]
    assert samples and all(isinstance(s, TimeStampedValue) and s.value == backlog for s in samples)
    assert ctx.deployment_id == DeploymentID(name=name, app_name=name)
    assert autoscaling_info(name, name)["target_replicas"] == replicas
    assert dep_status(name, name).message == ""


@serve.deployment
class Raising:
    def record_autoscaling_stats(self):
        raise ValueError("boom")

    def __call__(self):
        return "ok"


@serve.deployment
class Hanging:
    async def record_autoscaling_stats(self):
        await asyncio.sleep(3600)

    def __call__(self):
        return "ok"


def test_failing_or_hanging_stats_are_reported_and_stall_nothing(clean):
    autoscaling = {"min_replicas": 1, "max_replicas": 1, "policy": lambda ctx: 1}
    raising = serve.run(Raising.options(autoscaling_config=autoscaling).bind(), name="raising")
    hanging = serve.run(Hanging.options(autoscaling_config=autoscaling).bind(), name="hanging", route_prefix=None)
    wait_for(lambda: dep_status("raising", "Raising").message.endswith(
        ": record_autoscaling_stats() failed: ValueError: boom."), timeout=30, what="the stats error")
    wait_for(lambda: dep_status("hanging", "Hanging").message.endswith(
        ": record_autoscaling_stats() did not return within 1s."), timeout=30, what="the stats timeout")
    assert dep_status("raising", "Raising").message.startswith("Replica raising#Raising#")
    assert [raising.remote().result(timeout_s=30), hanging.remote().result(timeout_s=30)] == ["ok", "ok"]


# ---- 3. replica ranks ----

@serve.deployment(num_replicas=3, health_check_period_s=0.2, health_check_timeout_s=5)
class Ranked:
    def __init__(self, flag):
        self.flag = flag

    def check_health(self):
        ctx = serve.get_replica_context()
        if os.path.exists(self.flag) and open(self.flag).read() == ctx.replica_id:
            raise RuntimeError("told to fail")

    def __call__(self):
        ctx = serve.get_replica_context()
        return ctx.replica_id, ctx.rank, ctx.world_size


def collect_all(handle, n, timeout=30):
    """{replica id: (rank, world_size)} once exactly n distinct replicas answered in the last
    60 calls (a stopped replica no longer gets any)."""
    def attempt():
        seen = {}
        for _ in range(60):
            rid, rank, world = handle.remote().result(timeout_s=30)
            seen[rid] = (rank, world)
        return seen if len(seen) == n else None
    return wait_for(attempt, timeout=timeout, what=f"{n} replicas answering")


def test_ranks_are_0_to_n_minus_1_and_a_replacement_reuses_the_freed_rank(clean, tmp_path):
    flag = str(tmp_path / "fail")
    h = serve.run(Ranked.bind(flag), name="ranked")
    first = collect_all(h, 3)
    assert all(isinstance(rank, ReplicaRank) for rank, _ in first.values())
    assert sorted(rank.rank for rank, _ in first.values()) == [0, 1, 2]
    assert {rank.node_rank for rank, _ in first.values()} == {0}  # one host
    assert sorted(rank.local_rank for rank, _ in first.values()) == [0, 1, 2]
    assert {world for _, world in first.values()} == {3}
    victim = next(rid for rid, (rank, _) in first.items() if rank.rank == 1)
    with open(flag, "w") as f:
        f.write(victim)  # its health check fails from now on: it is replaced
    after = wait_for(lambda: (lambda seen: seen if victim not in seen else None)(collect_all(h, 3)),
                     timeout=60, what="the replica with rank 1 replaced")
    assert sorted(rank.rank for rank, _ in after.values()) == [0, 1, 2]
    (new,) = set(after) - set(first)
    assert after[new][0].rank == 1  # the lowest free rank: the one the replaced replica held
    assert {rid: r.rank for rid, (r, _) in after.items() if rid != new} == \
        {rid: r.rank for rid, (r, _) in first.items() if rid != victim}


@serve.deployment(num_replicas=2, user_config={"tag": "v1"})
class RankSubscriber:
    def __init__(self):
        self.seen = []

    async def reconfigure(self, user_config, rank: ReplicaRank):
        self.seen.append((user_config["tag"], rank.rank))

    def __call__(self):
        return self.seen


@serve.deployment
class RankOnly:
    def __init__(self):
        self.seen = []

    def reconfigure(self, user_config, rank):
        self.seen.append([user_config, rank.rank, isinstance(rank, ReplicaRank)])

    def __call__(self):
        return self.seen


def test_reconfigure_with_a_rank_parameter_is_given_the_replica_rank(clean):
    import httpx

    from conftest import proxy_url

    serve.run(RankSubscriber.bind(), name="subscriber", route_prefix="/subscriber")
    serve.run(RankOnly.bind(), name="rank_only", route_prefix="/rank_only")
    url = proxy_url()
    seen = set()

    def both_replicas():
        seen.add(tuple(tuple(x) for x in httpx.get(f"{url}/subscriber", timeout=10).json()))
        return len(seen) == 2

    wait_for(both_replicas, timeout=30, what="answers from both replicas")
    assert seen == {(("v1", 0),), (("v1", 1),)}
    # without a user_config, a reconfigure that takes ``rank`` still runs once, at start
    assert httpx.get(f"{url}/rank_only", timeout=10).json() == [[None, 0, True]]


def test_replica_context_rank_defaults_outside_a_deployment():
    assert ReplicaRank() == ReplicaRank(rank=0, node_rank=0, local_rank=0)


# ---- 4. gang scheduling ----

def test_gang_scheduling_config_fields_and_defaults():
    gang = GangSchedulingConfig(gang_size=4)
    assert (gang.gang_placement_strategy, gang.runtime_failure_policy) == (
        GangPlacementStrategy.PACK, GangRuntimeFailurePolicy.RESTART_GANG)
    assert [s.value for s in GangPlacementStrategy] == ["PACK", "SPREAD"]
    assert [p.value for p in GangRuntimeFailurePolicy] == ["RESTART_GANG", "RESTART_REPLICA"]
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        GangSchedulingConfig(gang_size=0)


def test_gangs_larger_than_one_are_refused_saying_what_dserve_does():
    with pytest.raises(ValueError, match=r"deployment 'g': gang_scheduling_config with gang_size=4 is not "
                                         r"supported: dserve starts each replica on a Dask worker of its own"):
        serve.deployment(lambda: "ok", name="g", num_replicas=8,
                         gang_scheduling_config=GangSchedulingConfig(gang_size=4))
    with pytest.raises(ValueError, match="gang_size=2 is not supported"):
        serve.deployment(lambda: "ok", name="g").options(gang_scheduling_config={"gang_size": 2})


def test_a_gang_of_one_runs_as_usual(clean):
    app = serve.deployment(lambda: "ok", name="solo", num_replicas=2,
                           gang_scheduling_config=GangSchedulingConfig(gang_size=1))
    h = serve.run(app.bind(), name="solo")
    assert dep_status("solo", "solo").replica_states == {"RUNNING": 2}
    assert h.remote().result(timeout_s=30) == "ok"
