"""Deployments, applications and handles on a real embedded Dask cluster."""
import asyncio
import os
import pickle

import pytest

import dserve as serve
from dserve.exceptions import BackPressureError, DeploymentFailedError, RayServeException, RequestCancelledError
from conftest import wait_for


class MyError(Exception):
    pass


@serve.deployment
class Counter:
    def __init__(self, start=0):
        self.value = start
        self.pid = os.getpid()

    def __call__(self, inc=1):
        self.value += inc
        return self.value

    def whoami(self):
        return (id(self), self.pid)

    async def fail(self):
        raise MyError("boom from replica")


@serve.deployment
def double(x):
    return 2 * x


@serve.deployment
class Ingress:
    def __init__(self, counter, doubler):
        self.counter = counter
        self.doubler = doubler

    async def __call__(self, x):
        # chained: the response of one call is an argument of the next
        return await self.doubler.remote(self.counter.remote(x))


def test_class_and_function_deployments(clean):
    h = serve.run(Counter.bind(10), name="c")
    assert h.remote().result() == 11
    assert h.remote(inc=5).result() == 16
    f = serve.run(double.bind(), name="f", route_prefix="/f")
    assert f.remote(21).result() == 42


def test_composition_and_chained_responses(clean):
    h = serve.run(Ingress.bind(Counter.bind(0), double.bind()))
    assert h.remote(5).result() == 10
    assert h.remote(1).result() == 12


@serve.deployment
class Unwrapper:
    async def __call__(self, listed, keyed):
        # responses nested in arguments arrive as awaitables, as Ray's object references do
        return [await listed[0], listed[1], await keyed["k"]]


@serve.deployment
class NestedIngress:
    def __init__(self, doubler, unwrapper):
        self.doubler = doubler
        self.unwrapper = unwrapper

    async def __call__(self, request):
        return await self.unwrapper.remote([self.doubler.remote(5), "plain"], keyed={"k": self.doubler.remote(1)})


def test_responses_nested_in_arguments_are_awaited_by_the_receiver(clean):
    import httpx

    from conftest import proxy_url

    serve.run(NestedIngress.bind(double.bind(), Unwrapper.bind()), name="nested", route_prefix="/nested")
    assert httpx.get(f"{proxy_url()}/nested", timeout=30).json() == [10, "plain", 2]


def test_methods_and_user_exceptions_keep_type_and_traceback(clean):
    h = serve.run(Counter.bind())
    with pytest.raises(MyError, match="boom from replica") as info:
        h.fail.remote().result()
    assert "Traceback" in str(info.value) and "in fail" in str(info.value)
    with pytest.raises(AttributeError) as info:  # names the methods there are
        h.options(method_name="missing").remote().result()
    assert str(info.value).startswith("deployment 'Counter' has no method 'missing'; its callable methods: [")
    assert "'fail'" in str(info.value)


def test_async_usage_from_another_event_loop(clean):
    h = serve.run(Counter.bind())

    async def main():
        results = await asyncio.gather(*[h.remote() for _ in range(20)])
        return sorted(results)

    assert asyncio.run(main()) == list(range(1, 21))


def test_result_timeout_and_cancel(clean):
    @serve.deployment
    class Slow:
        def __init__(self):
            self.started = []
            self.cancelled = []

        async def __call__(self, s):
            self.started.append(s)
            try:
                await asyncio.sleep(s)
            except asyncio.CancelledError:
                self.cancelled.append(s)
                raise
            return "done"

        def seen(self):
            return self.started, self.cancelled

    h = serve.run(Slow.bind())
    timed_out = h.remote(1.0)
    with pytest.raises(TimeoutError):
        timed_out.result(timeout_s=0.1)
    assert timed_out.result(timeout_s=30) == "done"  # a result() timeout does not cancel the request
    r = h.remote(30)
    wait_for(lambda: 30 in h.seen.remote().result()[0], what="the request to reach the replica")
    r.cancel()
    with pytest.raises(RequestCancelledError):
        r.result()
    wait_for(lambda: h.seen.remote().result() == ([1.0, 30], [30]), what="the replica to see the cancellation")


def test_user_config_reconfigures_in_place(clean):
    @serve.deployment(user_config={"greeting": "hello"})
    class Greeter:
        def __init__(self):
            self.greeting = None
            self.identity = os.urandom(4).hex()

        def reconfigure(self, config):
            self.greeting = config["greeting"]

        def __call__(self):
            return self.greeting, self.identity

    h = serve.run(Greeter.bind(), name="g")
    greeting, identity = h.remote().result()
    assert greeting == "hello"
    serve.run(Greeter.options(user_config={"greeting": "bonjour"}).bind(), name="g")
    greeting2, identity2 = h.remote().result()
    assert greeting2 == "bonjour"
    assert identity2 == identity  # same replica object: reconfigured, not restarted


def test_redeploy_new_code_replaces_and_scale(clean):
    @serve.deployment
    class V:
        def __call__(self):
            return ("v1", id(self))

    h = serve.run(V.bind(), name="v")
    assert h.remote().result()[0] == "v1"

    @serve.deployment(name="V", num_replicas=2)
    class V2:
        def __call__(self):
            return ("v2", id(self))

    serve.run(V2.bind(), name="v")
    seen = {h.remote().result() for _ in range(40)}
    assert {s[0] for s in seen} == {"v2"}
    assert len({s[1] for s in seen}) == 2  # two replicas answering
    st = serve.status().applications["v"].deployments["V"]
    assert st.replica_states == {"RUNNING": 2}


def test_several_apps_status_and_delete(clean):
    serve.run(Counter.bind(), name="a", route_prefix="/a")
    serve.run(double.bind(), name="b", route_prefix="/b")
    status = serve.status()
    assert set(status.applications) == {"a", "b"}
    assert status.applications["a"].status == "RUNNING"
    assert status.applications["a"].deployments["Counter"].status == "HEALTHY"
    serve.delete("a")
    assert set(serve.status().applications) == {"b"}
    assert serve.get_app_handle("b").remote(2).result() == 4
    with pytest.raises(RayServeException, match="does not exist"):
        serve.get_app_handle("a")


def test_route_prefix_conflict_rejected(clean):
    serve.run(Counter.bind(), name="a", route_prefix="/same")
    with pytest.raises(ValueError, match="/same"):
        serve.run(double.bind(), name="b", route_prefix="/same")


def test_get_handles(clean):
    serve.run(Ingress.bind(Counter.bind(0), double.bind()), name="app")
    assert serve.get_app_handle("app").remote(2).result() == 4
    dh = serve.get_deployment_handle("double", "app")
    assert dh.remote(4).result() == 8
    with pytest.raises(RayServeException, match="Deployment 'nope' in application 'app' does not exist."):
        serve.get_deployment_handle("nope", "app")


def test_constructor_failure_is_deploy_failed_and_others_keep_serving(clean):
    ok = serve.run(double.bind(), name="ok", route_prefix="/ok")

    @serve.deployment
    class Broken:
        def __init__(self):
            raise RuntimeError("constructor exploded")

    with pytest.raises(DeploymentFailedError, match="constructor exploded"):
        serve.run(Broken.bind(), name="bad", route_prefix="/bad")
    app = serve.status().applications["bad"]
    assert app.status == "DEPLOY_FAILED"
    assert "constructor exploded" in app.message and "Traceback" in app.message
    assert ok.remote(3).result() == 6


def test_async_constructor_and_replica_context(clean):
    @serve.deployment
    class Ctx:
        async def __init__(self):
            await asyncio.sleep(0.01)
            self.ready = True

        def __call__(self):
            ctx = serve.get_replica_context()
            return ctx.app_name, ctx.deployment, ctx.replica_id, ctx.servable_object is self, self.ready

    h = serve.run(Ctx.bind(), name="ctxapp")
    app, dep, rid, is_self, ready = h.remote().result()
    assert (app, dep, is_self, ready) == ("ctxapp", "Ctx", True, True)
    assert rid.startswith("ctxapp#Ctx#")
    with pytest.raises(RayServeException, match="may only be called from within a dserve deployment"):
        serve.get_replica_context()


def test_handles_pickle_into_dask_tasks(clean):
    from distributed import Client

    h = serve.run(double.bind(), name="p")
    assert pickle.loads(pickle.dumps(h)).remote(5).result() == 10
    from dserve.runtime import current_runtime

    with Client(current_runtime().scheduler_address) as client:
        fut = client.submit(lambda handle, x: handle.remote(x).result(), h, 7, pure=False)
        assert fut.result(timeout=30) == 14


def test_backpressure_when_queue_full(clean, tmp_path):
    @serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
    class Busy:
        async def __call__(self, gate=None):
            while gate is not None and not os.path.exists(gate):  # busy until the test opens the gate
                await asyncio.sleep(0.01)
            return "ok"

    h = serve.run(Busy.bind(), name="bp")
    assert h.remote().result() == "ok"  # this caller now knows the replica
    gate = str(tmp_path / "gate")
    # requests leave this caller in order: the first takes the only slot, the second waits in the queue
    first = h.remote(gate)
    second = h.remote(gate)
    with pytest.raises(BackPressureError):
        h.remote(gate).result()
    open(gate, "w").close()
    assert first.result(timeout_s=30) == "ok" and second.result(timeout_s=30) == "ok"


def test_max_ongoing_requests_bounds_concurrency(clean):
    @serve.deployment(max_ongoing_requests=2)
    class Track:
        def __init__(self):
            self.now = 0
            self.peak = 0

        async def __call__(self):
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.05)
            self.now -= 1
            return self.peak

    h = serve.run(Track.bind(), name="t")
    results = [h.remote() for _ in range(10)]
    assert max(r.result() for r in results) == 2


def test_unplaceable_replica_explains_missing_resource(clean):
    @serve.deployment(ray_actor_options={"num_gpus": 1})
    class NeedsGPU:
        def __call__(self):
            return 1

    from dserve import api
    from dserve.build import application_spec
    from dserve.runtime import get_runtime

    spec = application_spec(NeedsGPU.bind(), "gpu", "/gpu")
    api.deploy_specs(get_runtime(), [spec])
    status = wait_for(lambda: serve.status().applications.get("gpu"), what="app status")
    assert status.status == "DEPLOYING"
    msg = wait_for(lambda: serve.status().applications["gpu"].deployments["NeedsGPU"].message, what="message")
    assert "GPU" in msg and "cannot be placed" in msg
    assert serve.status().applications["gpu"].deployments["NeedsGPU"].status == "UPDATING"


def test_failing_health_check_replaces_replica(clean):
    @serve.deployment(health_check_period_s=0.2, health_check_timeout_s=1)
    class Sick:
        def __init__(self):
            self.calls = 0

        def check_health(self):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("unwell")

        def __call__(self):
            return id(self)

    h = serve.run(Sick.bind(), name="sick")
    first = h.remote().result()
    wait_for(lambda: h.remote().result() != first, timeout=30, what="a replacement replica")


def test_legacy_handles(clean):
    serve.run(double.bind(), name="legacy")
    sync_handle = serve.RayServeSyncHandle("double", "legacy")
    assert sync_handle.remote(3).result() == 6
    assert isinstance(sync_handle.options(use_new_handle_api=True), serve.DeploymentHandle)

    async def main():
        ref = await serve.RayServeHandle("double", "legacy").remote(4)
        return await ref

    assert asyncio.run(main()) == 8
