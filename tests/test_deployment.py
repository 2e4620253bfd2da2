"""@serve.deployment, .options(), .bind() and application building (no cluster)."""
import pytest

import dserve as serve
from dserve.deployment import build_application
from dserve.handle import DeploymentHandle


@serve.deployment
class Plain:
    def __call__(self):
        return "ok"


def test_defaults_match_ray_serve():
    d = Plain
    assert d.name == "Plain"
    assert d.num_replicas == 1
    assert d.max_ongoing_requests == 5
    assert d.max_queued_requests == -1
    assert d.config.graceful_shutdown_timeout_s == 20.0
    assert d.config.graceful_shutdown_wait_loop_s == 2.0
    assert d.config.health_check_period_s == 10.0
    assert d.config.health_check_timeout_s == 30.0


def test_options_copy_and_alias():
    d = Plain.options(name="Other", num_replicas=3, max_concurrent_queries=7, user_config={"a": 1})
    assert (d.name, d.num_replicas, d.max_ongoing_requests, d.user_config) == ("Other", 3, 7, {"a": 1})
    assert Plain.num_replicas == 1 and Plain.name == "Plain"


def test_decorator_with_options_and_function():
    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5})
    def f():
        return 1

    assert f.num_replicas == 2
    assert f.ray_actor_options == {"num_cpus": 0.5}


@pytest.mark.parametrize(
    "options, field",
    [
        ({"num_replicas": -1}, "num_replicas"),
        ({"max_ongoing_requests": 0}, "max_ongoing_requests"),
        ({"max_queued_requests": 0}, "max_queued_requests"),
        ({"ray_actor_options": {"cpus": 1}}, "ray_actor_options"),
        ({"health_check_period_s": 0}, "health_check_period_s"),
        ({"max_replicas_per_node": 0}, "max_replicas_per_node"),
        ({"user_config": {"f": object()}}, "user_config"),
        ({"autoscaling_config": {"min_replicas": 3, "max_replicas": 1}}, "min_replicas"),
    ],
)
def test_invalid_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        serve.deployment(**options)(Plain.func_or_class)
    with pytest.raises(ValueError, match=field):
        Plain.options(**options)


def test_version_is_rejected_clearly():
    with pytest.raises(ValueError, match="version"):
        serve.deployment(version="1")(Plain.func_or_class)


def test_num_replicas_auto_and_exclusive_with_autoscaling():
    d = Plain.options(num_replicas="auto")
    assert d.autoscaling_config.max_replicas == 100
    with pytest.raises(ValueError, match="num_replicas"):
        Plain.options(num_replicas=2, autoscaling_config={"max_replicas": 3})
    d2 = Plain.options(autoscaling_config={"min_replicas": 0, "max_replicas": 3})
    assert d2.autoscaling_config.min_replicas == 0


def test_deployment_not_callable_directly():
    with pytest.raises(RuntimeError, match="bind"):
        Plain()


def test_build_turns_nested_binds_into_handles():
    @serve.deployment
    class Outer:
        def __init__(self, a, b, others):
            pass

    inner = Plain.bind()
    app = Outer.bind(inner, b=inner, others=[Plain.options(name="P2").bind()])
    built = build_application(app, "app1")
    assert built.ingress == "Outer"
    assert [d.name for d in built.deployments] == ["Outer", "Plain", "P2"]
    outer = built.deployments[0]
    assert isinstance(outer.args[0], DeploymentHandle)
    assert outer.args[0].deployment_name == "Plain" and outer.args[0].app_name == "app1"
    assert outer.kwargs["b"].deployment_name == "Plain"
    assert outer.kwargs["others"][0].deployment_name == "P2"


def test_run_rejects_unbound_deployment():
    with pytest.raises(TypeError, match="bind"):
        build_application(Plain, "x")


def test_route_prefix_validation():
    with pytest.raises(ValueError, match="route_prefix"):
        build_application(Plain.bind(), "x", route_prefix="nope")
    assert build_application(Plain.bind(), "x", route_prefix=None).route_prefix is None
    assert build_application(Plain.options(route_prefix="/p").bind(), "x").route_prefix == "/p"
