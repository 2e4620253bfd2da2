"""Ray Serve behaviours of the control API: a proxy that cannot bind its port, ``serve.*`` control
calls from inside replicas (async methods included), event-loop use in a sync constructor, rolling
updates of ``max_ongoing_requests`` and ``last_deployed_time_s``."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import warnings

import pytest

import dserve as serve
from dserve.schema import ProxyStatus
from conftest import free_port, make_apps_importable, proxy_details, wait_for


def _occupied_port() -> socket.socket:
    """A plain listening socket on 127.0.0.1 holding a port nobody else may take."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    return blocker


def test_a_proxy_that_cannot_bind_its_port_warns_the_caller_and_says_why_in_status():
    # Ray Serve's proxy fails its readiness check with the port in its error and shows UNHEALTHY in
    # serve.status().proxies; serve.start itself returns. dserve returns too, warns the caller with
    # the reason, and keeps the reason in serve.status().proxy_messages (the proxy is retried).
    first, second = _occupied_port(), _occupied_port()
    busy, busy2 = first.getsockname()[1], second.getsockname()[1]
    try:
        with pytest.warns(RuntimeWarning) as caught:  # a fresh instance: the embedded cluster starts here
            serve.start(http_options={"port": busy})
        worker = proxy_details()["127.0.0.1"]["worker"]
        expected = f"HTTP proxy could not start on {worker}: port {busy} on 127.0.0.1 is already in use"
        assert [str(w.message) for w in caught] == [f"dserve: the proxy on 127.0.0.1 is UNHEALTHY: {expected}"]
        assert caught[0].filename == __file__  # it points at the caller's line
        status = serve.status()
        assert status.proxies == {"127.0.0.1": ProxyStatus.UNHEALTHY}
        assert status.proxy_messages == {"127.0.0.1": expected}

        with pytest.warns(RuntimeWarning) as caught:  # a running instance given another taken port
            serve.start(http_options={"port": busy2})
        expected = expected.replace(f"port {busy} ", f"port {busy2} ")
        assert [str(w.message) for w in caught] == [f"dserve: the proxy on 127.0.0.1 is UNHEALTHY: {expected}"]
        assert serve.status().proxy_messages == {"127.0.0.1": expected}
    finally:
        first.close()
        second.close()
    try:
        port = free_port()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a proxy that starts: no warning
            serve.start(http_options={"port": port})
        status = serve.status()
        assert (status.proxies, status.proxy_messages) == ({"127.0.0.1": ProxyStatus.HEALTHY}, {})
    finally:
        serve.shutdown()


def test_the_status_table_shows_why_a_proxy_is_unhealthy():
    from dserve.status_view import status_table

    tree = {"applications": {}, "proxies": {"127.0.0.1": "UNHEALTHY", "127.0.0.2": "HEALTHY"},
            "proxy_messages": {"127.0.0.1": "HTTP proxy could not start on tcp://127.0.0.1:1: port 8 on "
                                            "127.0.0.1 is already in use\nsecond line"}}
    assert status_table(tree).splitlines()[3:] == [
        "PROXY      STATUS     MESSAGE",
        "127.0.0.1  UNHEALTHY  HTTP proxy could not start on tcp://127.0.0.1:1: port 8 on 127.0.0.1 is already in use …",
        "127.0.0.2  HEALTHY",
    ]


# ---- serve.* control calls from inside replicas -------------------------------------------------

@serve.deployment
class Echo:
    def __call__(self, x):
        return f"echo {x}"


@serve.deployment
class Operator:
    """Ray users call serve.* synchronously in replicas, in async methods too."""

    async def __call__(self):
        return {name: app.status for name, app in serve.status().applications.items()}

    def sync_status(self):
        return {name: app.status for name, app in serve.status().applications.items()}

    async def call_app(self, name, x):
        return await serve.get_app_handle(name).remote(x)

    async def call_deployment(self, app, deployment, x):
        return await serve.get_deployment_handle(deployment, app).remote(x)

    async def missing_app(self):
        try:
            serve.get_app_handle("nope")
        except Exception as exc:  # noqa: BLE001 - returned for the test to pin
            return type(exc).__name__, str(exc)

    async def delete(self, name):
        serve.delete(name)

    async def deploy_and_call(self, name, x):
        handle = serve.run(Echo.bind(), name=name, route_prefix=None)
        return await handle.remote(x)




@pytest.fixture(scope="module")
def instance():
    """dserve on an embedded cluster whose workers can import tests/apps (config deploys)."""
    with pytest.MonkeyPatch.context() as mp:  # later modules get sys.path and PYTHONPATH back as they were
        make_apps_importable(mp)
        serve.start(http_options={"port": free_port()})
        try:
            yield serve
        finally:
            serve.shutdown()


@pytest.fixture(scope="module")
def operator(instance):
    serve.run(Echo.bind(), name="victim", route_prefix="/victim")
    handle = serve.run(Operator.bind(), name="probe", route_prefix="/probe")
    yield handle
    for name in list(serve.status().applications):
        serve.delete(name)


def test_serve_status_from_an_async_replica_method(operator):
    assert operator.remote().result(timeout_s=30) == {"victim": "RUNNING", "probe": "RUNNING"}
    assert operator.sync_status.remote().result(timeout_s=30) == {"victim": "RUNNING", "probe": "RUNNING"}


def test_handles_from_an_async_replica_method(operator):
    assert operator.call_app.remote("victim", 1).result(timeout_s=30) == "echo 1"
    assert operator.call_deployment.remote("victim", "Echo", 2).result(timeout_s=30) == "echo 2"
    assert operator.missing_app.remote().result(timeout_s=30) == (
        "RayServeException", "Application 'nope' does not exist.")


def test_serve_run_and_delete_from_an_async_replica_method(operator):
    assert operator.deploy_and_call.remote("child", 3).result(timeout_s=60) == "echo 3"
    # serve.run there does not wait for RUNNING: the status follows the replica that answered
    wait_for(lambda: serve.status().applications["child"].status == "RUNNING", timeout=30, what="child RUNNING")
    assert operator.delete.remote("victim").result(timeout_s=30) is None
    wait_for(lambda: "victim" not in serve.status().applications, timeout=30, what="victim deleted")
    assert operator.remote().result(timeout_s=30) == {"probe": "RUNNING", "child": "RUNNING"}


# ---- a sync constructor finds the replica's event loop -------------------------------------------

@serve.deployment
class Ticker:
    def __init__(self):
        self.ticks = 0
        self.seen_in_task = None
        self.task = asyncio.get_running_loop().create_task(self.tick())
        self.helper = asyncio.create_task(self.note_context())  # asyncio's own helper, too
        self.later = []
        asyncio.get_running_loop().call_later(0.01, self.later.append, "called later")

    async def tick(self):
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    async def note_context(self):
        self.seen_in_task = serve.get_replica_context().deployment

    async def __call__(self):
        deadline = time.monotonic() + 20
        while self.ticks < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return {"ticks >= 3": self.ticks >= 3, "task running": not self.task.done(),
                "same loop": self.task.get_loop() is asyncio.get_running_loop(),
                "helper saw": self.seen_in_task, "later": self.later}


def test_a_sync_constructor_can_create_tasks_on_the_replica_loop(operator):
    handle = serve.run(Ticker.bind(), name="ticker", route_prefix=None)
    assert handle.remote().result(timeout_s=30) == {
        "ticks >= 3": True, "task running": True, "same loop": True, "helper saw": "Ticker",
        "later": ["called later"]}
    serve.delete("ticker")


# ---- config schema defaults and required fields vs Ray Serve ---------------------------------------

REQUIRED = "<required>"
UNSET = "<unset>"  # Ray's DEFAULT.VALUE: an override that is not given changes nothing (dserve: None, unset)


class DefaultOf:
    """The field's default is a default instance of another schema in this table."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"{self.name}()"


# Ray Serve's documented defaults, from the signatures on docs.ray.io/en/latest/serve/api/doc/<name>.html
# (e.g. ray.serve.schema.ServeDeploySchema.html, ray.serve.config.HTTPOptions.html) unless noted.
RAY_DEFAULTS = {
    "ServeDeploySchema": {  # ray.serve.schema.ServeDeploySchema.html
        "proxy_location": "EveryNode", "http_options": DefaultOf("HTTPOptionsSchema"),
        "grpc_options": DefaultOf("gRPCOptionsSchema"), "logging_config": None, "applications": REQUIRED,
        "target_capacity": None},
    "ServeApplicationSchema": {  # ray.serve.schema.ServeApplicationSchema.html
        "name": "default", "route_prefix": "/", "import_path": REQUIRED, "runtime_env": {}, "host": "0.0.0.0",
        "port": 8000, "deployments": [], "autoscaling_policy": None, "args": {}, "logging_config": None,
        "external_scaler_enabled": False},
    "DeploymentSchema": {  # ray.serve.schema.DeploymentSchema.html: every option DEFAULT.VALUE
        "name": REQUIRED, **{f: UNSET for f in (
            "num_replicas", "max_ongoing_requests", "max_queued_requests", "user_config", "autoscaling_config",
            "graceful_shutdown_wait_loop_s", "graceful_shutdown_timeout_s", "health_check_period_s",
            "health_check_timeout_s", "ray_actor_options", "placement_group_bundles", "placement_group_strategy",
            "max_replicas_per_node", "logging_config", "request_router_config")}},
    "RayActorOptionsSchema": {  # ray/serve/schema.py (the docs page renders no signature)
        "runtime_env": {}, "num_cpus": None, "num_gpus": None, "memory": None, "resources": {},
        "accelerator_type": None},
    "HTTPOptionsSchema": {  # ray.serve.schema.HTTPOptionsSchema.html
        "host": "0.0.0.0", "port": 8000, "root_path": "", "request_timeout_s": None, "keep_alive_timeout_s": 90,
        "ssl_keyfile": None, "ssl_certfile": None, "ssl_keyfile_password": None, "ssl_ca_certs": None},
    "gRPCOptionsSchema": {  # ray.serve.schema.gRPCOptionsSchema.html
        "port": 9000, "grpc_servicer_functions": [], "request_timeout_s": None},
    "LoggingConfig": {  # ray.serve.schema.LoggingConfig.html; encoding: RAY_SERVE_LOG_ENCODING's default
        "encoding": "TEXT", "log_level": "INFO", "logs_dir": None, "enable_access_log": True,
        "additional_log_standard_attrs": []},  # a default_factory=list in ray/serve/schema.py
    "HTTPOptions": {  # ray.serve.config.HTTPOptions.html
        "host": "127.0.0.1", "port": 8000, "middlewares": [], "location": "HeadOnly", "num_cpus": 0,
        "root_url": "", "root_path": "", "request_timeout_s": None, "keep_alive_timeout_s": 90,
        "ssl_keyfile": None, "ssl_certfile": None, "ssl_keyfile_password": None, "ssl_ca_certs": None},
    "gRPCOptions": {  # ray.serve.config.gRPCOptions.html
        "port": 9000, "grpc_servicer_functions": [], "request_timeout_s": None},
    "AutoscalingConfig": {  # ray.serve.config.AutoscalingConfig.html
        "min_replicas": 1, "initial_replicas": None, "max_replicas": 1, "target_ongoing_requests": 2,
        "metrics_interval_s": 10.0, "look_back_period_s": 30.0, "smoothing_factor": 1.0,
        "upscale_smoothing_factor": None, "downscale_smoothing_factor": None, "upscaling_factor": None,
        "downscaling_factor": None, "downscale_delay_s": 600.0, "downscale_to_zero_delay_s": None,
        "upscale_delay_s": 30.0, "aggregation_function": "mean", "policy": None},
    "DeploymentConfig": {  # @serve.deployment's documented defaults (serve/configure-serve-deployment.html;
        # DEFAULT_* in ray/serve/_private/constants.py); Ray's DeploymentConfig class itself is private
        "num_replicas": 1, "max_ongoing_requests": 5, "max_queued_requests": -1, "user_config": None,
        "autoscaling_config": None, "graceful_shutdown_wait_loop_s": 2.0, "graceful_shutdown_timeout_s": 20.0,
        "health_check_period_s": 10.0, "health_check_timeout_s": 30.0, "max_replicas_per_node": None,
        "max_constructor_retry_count": 20, "logging_config": None},
}

# Where dserve differs on purpose (README "Migrating from Ray Serve"): field -> dserve's default.
DELIBERATE = {
    # nothing listens beyond this machine unless the config asks (Ray's config schema: every interface)
    ("HTTPOptionsSchema", "host"): "127.0.0.1",
    # deprecated in Ray, unused by dserve: a 0.0.0.0 default would suggest a bind that never happens
    ("ServeApplicationSchema", "host"): None,
    ("ServeApplicationSchema", "port"): None,
}

# Ray's fields dserve does not have (a config or call that sets one is rejected, naming it).
RAY_ONLY = {
    "ServeApplicationSchema": {"autoscaling_policy"},  # application-level policies
    "DeploymentSchema": {"placement_group_bundles", "placement_group_strategy", "request_router_config"},
    "HTTPOptions": {"middlewares", "location", "num_cpus", "root_url"},  # deprecated or unused in Ray 2.x
}


def _dserve_class(name: str) -> type:
    from dserve import config, schema

    return getattr(schema, name, None) or getattr(config, name)


def _dserve_default(cls: type, field: str) -> object:
    info = cls.model_fields[field]
    if info.is_required():
        return REQUIRED
    value = info.get_default(call_default_factory=True)
    return getattr(value, "value", value)  # an enum member compares as its value


@pytest.mark.parametrize("name", sorted(RAY_DEFAULTS))
def test_config_defaults_and_required_fields_match_ray_serve(name):
    cls = _dserve_class(name)
    ray = RAY_DEFAULTS[name]
    assert set(ray) - set(cls.model_fields) == RAY_ONLY.get(name, set())
    mismatches = {}
    for field, expected in ray.items():
        if field in RAY_ONLY.get(name, set()):
            continue
        if isinstance(expected, DefaultOf):
            expected = _dserve_class(expected.name)()
        if expected == UNSET:  # not given, it overrides nothing
            assert _dserve_default(cls, field) is None and field not in cls(name="d").model_fields_set
            continue
        expected = DELIBERATE.get((name, field), expected)
        actual = _dserve_default(cls, field)
        if actual != expected:
            mismatches[field] = (actual, expected)
    assert mismatches == {}


def test_the_deliberate_differences_are_still_differences():
    for (name, field), ours in DELIBERATE.items():
        assert RAY_DEFAULTS[name][field] != ours  # else it is no difference: drop it from DELIBERATE
        assert _dserve_default(_dserve_class(name), field) == ours


def test_a_deploy_config_without_applications_is_rejected_as_in_ray():
    from pydantic import ValidationError
    from dserve.schema import ServeDeploySchema

    with pytest.raises(ValidationError) as info:
        ServeDeploySchema.model_validate({"http_options": {"port": 8001}})
    assert [(e["loc"], e["msg"]) for e in info.value.errors(include_url=False)] == [
        (("applications",), "Field required")]


def test_the_rest_api_shows_http_options_with_rays_fields_but_never_the_key_password(operator):
    import httpx
    from dserve.api import _sync
    from dserve.runtime import current_runtime
    from conftest import auth_headers

    serve.start(http_options={"ssl_keyfile_password": "s3cret"})  # no key file: plain HTTP still
    runtime = current_runtime()
    rest_port = _sync(runtime, runtime.rpc("dserve_status"))["rest_port"]
    details = httpx.get(f"http://127.0.0.1:{rest_port}/api/serve/applications/", headers=auth_headers(),
                        timeout=10).json()
    shown = details["http_options"]
    assert {k: shown[k] for k in ("ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_ca_certs")} == {
        "ssl_keyfile": None, "ssl_certfile": None, "ssl_keyfile_password": None, "ssl_ca_certs": None}
    assert "s3cret" not in json.dumps(details)


# ---- a rolling update of max_ongoing_requests ------------------------------------------------------

@serve.deployment(max_ongoing_requests=2)
class Rolling:
    def __init__(self, gate=None):
        deadline = time.monotonic() + 120
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)  # a slow constructor: the test opens the gate

    def __call__(self):
        return "ok"


def _published(key: str) -> dict:
    """The controller's current replica-set snapshot under ``key``."""
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    runtime = current_runtime()
    return _sync(runtime, runtime.rpc("dserve_listen", versions={key: -1}, timeout=5))[key]


def test_old_replicas_keep_their_max_ongoing_requests_until_replaced(operator, tmp_path):
    from dserve.runtime import current_runtime

    handle = serve.run(Rolling.bind(), name="rolling", route_prefix=None)
    assert handle.remote().result(timeout_s=30) == "ok"
    router = current_runtime().routers[("rolling", "Rolling")]
    [(old_id, old_limit)] = [(s.replica_id, s.max_ongoing) for s in router.slots]
    assert old_limit == 2

    gate = str(tmp_path / "gate")
    update = threading.Thread(target=serve.run, args=(Rolling.options(max_ongoing_requests=7).bind(gate),),
                              kwargs={"name": "rolling", "route_prefix": None})
    update.start()
    try:
        def starting():
            states = serve.status().applications["rolling"].deployments["Rolling"].replica_states
            return states == {"RUNNING": 1, "STARTING": 1}

        wait_for(starting, timeout=30, what="the new replica starting beside the old one")
        snapshot = _published("rolling#Rolling")
        assert [(r["id"], r["max_ongoing"]) for r in snapshot["replicas"]] == [(old_id, 2)]
        wait_for(lambda: router.version == snapshot["version"], timeout=30, what="the router up to date")
        assert [(s.replica_id, s.max_ongoing) for s in router.slots] == [(old_id, 2)]
    finally:
        open(gate, "w").close()
        update.join(timeout=120)
    assert not update.is_alive()
    [(new_id, new_limit)] = [(r["id"], r["max_ongoing"]) for r in _published("rolling#Rolling")["replicas"]]
    assert (new_id != old_id, new_limit) == (True, 7)
    wait_for(lambda: [(s.replica_id, s.max_ongoing) for s in router.slots] == [(new_id, 7)], timeout=30,
             what="the router with only the new replica")
    serve.delete("rolling")


# ---- last_deployed_time_s --------------------------------------------------------------------------

def _deployed_at(name: str) -> float:
    return serve.status().applications[name].last_deployed_time_s


def test_last_deployed_time_changes_on_every_deploy(instance):
    serve.run(Echo.bind(), name="stamped", route_prefix=None)
    first = _deployed_at("stamped")
    serve.run(Echo.bind(), name="stamped", route_prefix=None)  # the same application again
    second = _deployed_at("stamped")
    serve.run(Echo.options(num_replicas=2).bind(), name="stamped", route_prefix=None)
    third = _deployed_at("stamped")
    assert first < second < third <= time.time()
    serve.delete("stamped")


def test_a_config_deploy_stamps_every_application_in_it_changed_or_not(instance):
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    runtime = current_runtime()

    def deploy(greeting):
        config = {"applications": [
            {"name": "kept", "route_prefix": "/kept", "import_path": "config_apps:greeter_app"},
            {"name": "built", "route_prefix": "/built", "import_path": "config_apps:builder",
             "args": {"greeting": greeting}}]}
        before = time.time()
        assert _sync(runtime, runtime.rpc("dserve_deploy_config", config=config)) == {"ok": True}
        return before

    def running():
        apps = serve.status().applications
        return all(name in apps and apps[name].status == "RUNNING" for name in ("kept", "built"))

    deploy("hello")
    wait_for(running, timeout=90, what="both applications RUNNING")
    first = {name: _deployed_at(name) for name in ("kept", "built")}
    asked = deploy("hello")  # unchanged: nothing rebuilt, both stamped
    second = {name: _deployed_at(name) for name in ("kept", "built")}
    assert second["kept"] == second["built"] and second["kept"] >= asked > max(first.values())
    asked = deploy("bonjour")  # "built" changes: stamped when asked, not when its build ends
    third = _deployed_at("built")
    assert third == _deployed_at("kept") and third >= asked > second["built"]
    wait_for(running, timeout=90, what="the changed application RUNNING again")
    wait_for(lambda: serve.status().applications["built"].deployments["Greeter"].replica_states == {"RUNNING": 1},
             timeout=60, what="the old replica of 'built' replaced")
    assert _deployed_at("built") == third
    assert _sync(runtime, runtime.rpc("dserve_deploy_config", config={"applications": []})) == {"ok": True}
    wait_for(lambda: not serve.status().applications, timeout=60, what="every application deleted")


# ---- an autoscaling key Ray Serve no longer has ------------------------------------------------------

def test_the_old_per_replica_target_key_is_accepted_and_ignored_as_in_ray(instance):
    # Ray 2.60's AutoscalingConfig drops keys it does not know, target_num_ongoing_requests_per_replica
    # (the name target_ongoing_requests had before) among them: the deployment runs with the default
    # target of 2, not the 10 asked for. dserve drops that one key too, saying so in a FutureWarning;
    # any other unknown key is still an error.
    legacy = {"min_replicas": 1, "max_replicas": 5, "target_num_ongoing_requests_per_replica": 10}
    with pytest.warns(FutureWarning, match="target_num_ongoing_requests_per_replica") as caught:
        scaled = Echo.options(autoscaling_config=legacy)
    assert len(caught) == 1 and "target_ongoing_requests" in str(caught[0].message)
    config = scaled.autoscaling_config
    assert (config.min_replicas, config.max_replicas, config.target_ongoing_requests) == (1, 5, 2.0)
    assert "target_num_ongoing_requests_per_replica" not in config.model_dump()
    assert legacy["target_num_ongoing_requests_per_replica"] == 10  # the caller's dict is left alone

    handle = serve.run(scaled.bind(), name="legacy_key", route_prefix=None)
    assert handle.remote(7).result(timeout_s=60) == "echo 7"
    assert serve.status().applications["legacy_key"].deployments["Echo"].replica_states == {"RUNNING": 1}
    serve.delete("legacy_key")

    with pytest.raises(ValueError) as info:  # a misspelling is no old key
        Echo.options(autoscaling_config={"min_replicas": 1, "target_ongoing_requests_per_replica": 10})
    assert str(info.value).startswith("invalid options for deployment 'Echo': 1 validation error for DeploymentConfig\n"
                                      "autoscaling_config.target_ongoing_requests_per_replica\n"
                                      "  Extra inputs are not permitted")
