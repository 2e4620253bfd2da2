"""Ray Serve behaviours that plain Ray Serve code relies on: return-value conversion,
no-argument handlers, ingress factories, batch result types, per-replica ingress apps."""
from __future__ import annotations

import dataclasses
import enum

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import dserve as serve
from dserve.ingress import prepare_asgi_app
from conftest import proxy_url


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Color(enum.Enum):
    RED = "red"


@serve.deployment
class Echo:
    def __call__(self, request):
        kind = request.query_params["kind"]
        return {
            "query": lambda: request.query_params,
            "dataclass": lambda: Point(1, 2),
            "tuple": lambda: (1, "a"),
            "numpy": lambda: {"scalar": np.int64(7), "array": np.arange(3)},
            "enum": lambda: [Color.RED],
        }[kind]()


@serve.deployment
def no_arguments():
    return "called with nothing"


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    def hello() -> dict:
        return {"from": "factory"}

    return app


@serve.deployment
@serve.ingress(make_app)
class FromFactory:
    pass


@pytest.fixture(scope="module")
def url(serve_instance):
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    serve.run(no_arguments.bind(), name="noargs", route_prefix="/noargs")
    serve.run(FromFactory.bind(), name="factory", route_prefix="/factory")
    yield proxy_url()
    for name in ("echo", "noargs", "factory"):
        serve.delete(name)


@pytest.mark.parametrize("kind,expected", [
    ("query", {"kind": "query", "extra": "1"}),
    ("dataclass", {"x": 1, "y": 2}),
    ("tuple", [1, "a"]),
    ("numpy", {"scalar": 7, "array": [0, 1, 2]}),
    ("enum", ["red"]),
])
def test_return_values_are_converted_like_ray(url, kind, expected):
    r = httpx.get(f"{url}/echo", params={"kind": kind, "extra": "1"} if kind == "query" else {"kind": kind})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == expected


def test_a_handler_without_arguments_is_called_without_the_request(url):
    r = httpx.get(f"{url}/noargs")
    assert (r.status_code, r.text) == (200, "called with nothing")


def test_ingress_accepts_an_app_factory(url):
    r = httpx.get(f"{url}/factory/hello")
    assert (r.status_code, r.json()) == (200, {"from": "factory"})


def test_each_replica_binds_its_own_copy_of_a_shared_ingress_app():
    app = FastAPI()

    class Greeter:
        def __init__(self, name):
            self.name = name

        @app.get("/")
        def hello(self) -> dict:
            return {"name": self.name}

    serve.ingress(app)(Greeter)
    first, second = prepare_asgi_app(Greeter("first")), prepare_asgi_app(Greeter("second"))
    assert TestClient(first).get("/").json() == {"name": "first"}
    assert TestClient(second).get("/").json() == {"name": "second"}
    assert TestClient(first).get("/").json() == {"name": "first"}  # not rebound by the second replica
    assert app.router.routes[-1].endpoint is Greeter.__dict__["hello"]  # the shared app is untouched


@serve.deployment
class Broken:
    def __call__(self, x):
        return self.explode(x)

    def explode(self, x):
        raise KeyError(f"no such key {x}")  # the line the caller must see


def test_remote_tracebacks_show_the_users_file_and_line_without_dserve_frames(serve_instance):
    handle = serve.run(Broken.bind(), name="broken", route_prefix=None)
    try:
        with pytest.raises(KeyError) as caught:
            handle.remote("k").result(timeout_s=30)
        text = str(caught.value)
        assert f'File "{__file__}"' in text
        assert 'raise KeyError(f"no such key {x}")  # the line the caller must see' in text
        assert "<dynamic-code>" not in text
        assert "dserve/actors" not in text and "dserve/routing" not in text
    finally:
        serve.delete("broken")


@serve.deployment
class Caller:
    async def __call__(self, x: int) -> int:
        other = serve.get_app_handle("echo_target")  # in async replica code: must not block or raise
        return await other.remote(x)


@serve.deployment
def add_one(x: int) -> int:
    return x + 1


def test_get_app_handle_works_in_async_replica_code(serve_instance):
    serve.run(add_one.bind(), name="echo_target", route_prefix=None)
    caller = serve.run(Caller.bind(), name="caller", route_prefix=None)
    try:
        assert caller.remote(41).result(timeout_s=30) == 42
    finally:
        serve.delete("caller")
        serve.delete("echo_target")


def test_num_replicas_none_without_autoscaling_means_one(serve_instance):
    serve.run(add_one.options(name="one", num_replicas=None).bind(), name="none_replicas", route_prefix=None)
    try:
        dep = serve.status().applications["none_replicas"].deployments["one"]
        assert dep.replica_states == {"RUNNING": 1}
    finally:
        serve.delete("none_replicas")


def test_root_path_strips_only_a_whole_path_segment():
    from dserve.proxy.http_proxy import strip_root_path

    assert strip_root_path("/base/x", "/base") == "/x"
    assert strip_root_path("/base", "/base") == "/"
    assert strip_root_path("/basement", "/base") == "/basement"


def test_unknown_arguments_are_type_errors_naming_them():
    with pytest.raises(TypeError, match="run\\(\\) got an unexpected keyword argument 'routeprefix'"):
        serve.run(add_one.bind(), routeprefix="/x")
    with pytest.raises(TypeError, match="start\\(\\) got an unexpected keyword argument 'http_port'"):
        serve.start(http_port=8000)
    with pytest.raises(TypeError, match=r"deployment 'add_one': unknown option\(s\) \['num_replica'\]"):
        add_one.options(num_replica=2)
    with pytest.raises(ValueError, match="placement_group_bundles is not supported: dserve places each replica"):
        add_one.options(placement_group_bundles=[{"CPU": 1}])
    with pytest.raises(ValueError, match="external_scaler_enabled=True is not supported by dserve"):
        serve.run(add_one.bind(), external_scaler_enabled=True)
