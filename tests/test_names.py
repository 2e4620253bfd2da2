"""Application, deployment and route names are checked where they are given: decoration,
``.options()``, ``serve.run``, the config schemas (and so the REST API) and the controller."""
import httpx
import pytest
from pydantic import ValidationError

import dserve as serve
from conftest import auth_headers
from dserve.schema import ServeDeploySchema

LONG = "x" * 257

# (name, the end of the message after "<field> ")
BAD_NAMES = [
    ("", "must not be empty or only whitespace, got ''"),
    ("  \t", "must not be empty or only whitespace, got '  \\t'"),
    ("a#b", "must not contain '#', got 'a#b'"),
    ("a\nb", "must not contain control characters (found '\\n'), got 'a\\nb'"),
    ("a\x00b", "must not contain control characters (found '\\x00'), got 'a\\x00b'"),
    (LONG, "must be at most 256 characters, got 257"),
]
BAD_PREFIXES = [
    ("/a#b", "route_prefix must not contain '#' or '?', got '/a#b'"),
    ("/a?b", "route_prefix must not contain '#' or '?', got '/a?b'"),
    ("/a\tb", "route_prefix must not contain control characters (found '\\t'), got '/a\\tb'"),
    ("/" + LONG, "route_prefix must be at most 256 characters, got 258"),
]


def echo(x=None):
    return x


@pytest.mark.parametrize("name,reason", BAD_NAMES)
def test_decorator_rejects_bad_deployment_names(name, reason):
    with pytest.raises(ValueError) as info:
        serve.deployment(name=name)(echo)
    assert str(info.value) == f"deployment name {reason}"


@pytest.mark.parametrize("name,reason", BAD_NAMES)
def test_options_rejects_bad_deployment_names(name, reason):
    with pytest.raises(ValueError) as info:
        serve.deployment(echo).options(name=name)
    assert str(info.value) == f"deployment name {reason}"


@pytest.mark.parametrize("name,reason", BAD_NAMES)
def test_run_rejects_bad_application_names(name, reason):
    with pytest.raises(ValueError) as info:
        serve.run(serve.deployment(echo).bind(), name=name)
    assert str(info.value) == f"application name {reason}"


@pytest.mark.parametrize("prefix,message", BAD_PREFIXES)
def test_run_rejects_bad_route_prefixes(prefix, message):
    with pytest.raises(ValueError) as info:
        serve.run(serve.deployment(echo).bind(), name="app", route_prefix=prefix)
    assert str(info.value) == message


def test_local_testing_mode_rejects_bad_application_names():
    with pytest.raises(ValueError) as info:
        serve.run(serve.deployment(echo).bind(), name="a#b", _local_testing_mode=True)
    assert str(info.value) == "application name must not contain '#', got 'a#b'"


def config(app_name="app", deployment_name="Greeter", prefix="/app"):
    return {"applications": [{"name": app_name, "route_prefix": prefix, "import_path": "config_apps:greeter_app",
                              "deployments": [{"name": deployment_name}]}]}


@pytest.mark.parametrize("field,loc,kwargs,message", [
    ("application name", ["applications", 0, "name"], {"app_name": "a#b"},
     "Value error, application name must not contain '#', got 'a#b'"),
    ("deployment name", ["applications", 0, "deployments", 0, "name"], {"deployment_name": " "},
     "Value error, deployment name must not be empty or only whitespace, got ' '"),
    ("route prefix", ["applications", 0, "route_prefix"], {"prefix": "/a\x7f"},
     "Value error, route_prefix must not contain control characters (found '\\x7f'), got '/a\\x7f'"),
])
def test_config_schema_names_the_field(field, loc, kwargs, message):
    with pytest.raises(ValidationError) as info:
        ServeDeploySchema.model_validate(config(**kwargs))
    errors = info.value.errors(include_url=False)
    assert [(list(e["loc"]), e["msg"]) for e in errors] == [(loc, message)]


def test_unusual_but_valid_names_are_served(serve_instance):
    @serve.deployment(name="mödel v2/α")
    def model(x):
        return f"got {x}"

    handle = serve.run(model.bind(), name="my app: ünïcode", route_prefix="/my-app")
    assert handle.remote(1).result(timeout_s=30) == "got 1"
    assert list(serve.status().applications) == ["my app: ünïcode"]
    serve.delete("my app: ünïcode")


def test_controller_rejects_a_bad_name_from_any_client(serve_instance):
    """A client that skips the Python checks still cannot deploy a name the controller's
    keys cannot hold (before, the deploy was accepted and requests then hung)."""
    from dserve.api import deploy_specs
    from dserve.build import application_spec
    from dserve.runtime import current_runtime

    spec = application_spec(serve.deployment(echo).bind(), "fine", None)
    spec.name = "a#b"
    with pytest.raises(ValueError) as info:
        deploy_specs(current_runtime(), [spec])
    assert str(info.value) == "application name must not contain '#', got 'a#b'"
    spec.name = "fine"
    spec.deployments[0].name = "echo#1"
    with pytest.raises(ValueError) as info:
        deploy_specs(current_runtime(), [spec])
    assert str(info.value) == "deployment name must not contain '#', got 'echo#1'"
    assert serve.status().applications == {}


def test_rest_put_with_a_bad_name_is_a_400_naming_the_field(serve_instance):
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    rt = current_runtime()
    port = _sync(rt, rt.rpc("dserve_status"))["rest_port"]
    r = httpx.put(f"http://127.0.0.1:{port}/api/serve/applications/", json=config(app_name="a#b"),
                  headers=auth_headers(), timeout=30)
    assert r.status_code == 400
    assert r.json()["errors"] == [{"loc": ["applications", 0, "name"], "type": "value_error",
                                   "msg": "Value error, application name must not contain '#', got 'a#b'"}]
    r = httpx.put(f"http://127.0.0.1:{port}/api/serve/deployments/",
                  json=config(deployment_name="G\x1bx")["applications"][0], headers=auth_headers(), timeout=30)
    assert r.status_code == 400
    assert r.json()["errors"] == [{"loc": ["deployments", 0, "name"], "type": "value_error",
                                   "msg": "Value error, deployment name must not contain control characters "
                                          "(found '\\x1b'), got 'G\\x1bx'"}]
    assert serve.status().applications == {}
