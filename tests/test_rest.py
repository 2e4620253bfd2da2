"""The REST admin API (V1 and V2) against a real controller in the embedded scheduler."""

import httpx
import pytest

import dserve as serve
from conftest import auth_headers, free_port, make_apps_importable, proxy_url, wait_for



@pytest.fixture(scope="module")
def rest_client():
    """dserve whose workers can import tests/apps; yields an httpx client on the REST API."""
    with pytest.MonkeyPatch.context() as mp:  # later modules get sys.path and PYTHONPATH back as they were
        make_apps_importable(mp)
        serve.start(http_options={"port": free_port()})
        try:
            from dserve.api import _sync
            from dserve.runtime import current_runtime

            rt = current_runtime()
            port = _sync(rt, rt.rpc("dserve_status"))["rest_port"]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=auth_headers()) as client:
                yield client
        finally:
            serve.shutdown()


@pytest.fixture
def rest(rest_client):
    """The REST client; every application is deleted after the test."""
    yield rest_client
    assert rest_client.delete("/api/serve/applications/").status_code == 200


def two_apps(suffix="", greeting="bonjour"):
    return {
        "applications": [
            {"name": "a", "route_prefix": "/a", "import_path": "config_apps:greeter_app",
             "deployments": [{"name": "Greeter", "user_config": {"suffix": suffix}}]},
            {"name": "b", "route_prefix": "/b", "import_path": "config_apps:builder",
             "args": {"greeting": greeting}},
        ]
    }


def app_status(rest, name):
    return rest.get("/api/serve/applications/").json()["applications"].get(name, {}).get("status")


def test_v2_put_get_update_and_delete(rest):
    r = rest.put("/api/serve/applications/", json=two_apps("!"))
    assert r.status_code == 200
    wait_for(lambda: app_status(rest, "a") == "RUNNING" and app_status(rest, "b") == "RUNNING", timeout=60,
             what="both apps RUNNING")
    assert httpx.get(f"{proxy_url()}/a").json()["text"] == "hello!"
    assert httpx.get(f"{proxy_url()}/b").json()["text"] == "bonjour"
    details = rest.get("/api/serve/applications/").json()
    assert details["deploy_mode"] == "MULTI_APP" and details["proxy_location"] == "EveryNode"
    assert list(details["proxies"].values())[0]["status"] == "HEALTHY"
    greeter = details["applications"]["a"]["deployments"]["Greeter"]
    replica = greeter["replicas"][0]
    assert replica["state"] == "RUNNING" and replica["pid"] and replica["worker_id"].startswith("tcp://")
    assert greeter["deployment_config"]["user_config"] == {"suffix": "!"}
    assert details["applications"]["a"]["deployed_app_config"]["import_path"] == "config_apps:greeter_app"
    b_replica = details["applications"]["b"]["deployments"]["Greeter"]["replicas"][0]["replica_id"]
    identity = httpx.get(f"{proxy_url()}/a").json()["identity"]

    # user_config change: reconfigured in place; app b untouched
    assert rest.put("/api/serve/applications/", json=two_apps("?")).status_code == 200
    wait_for(lambda: httpx.get(f"{proxy_url()}/a").json()["text"] == "hello?", timeout=60, what="reconfigure")
    assert httpx.get(f"{proxy_url()}/a").json()["identity"] == identity
    details = rest.get("/api/serve/applications/").json()
    assert details["applications"]["b"]["deployments"]["Greeter"]["replicas"][0]["replica_id"] == b_replica

    # apps not listed are deleted
    config = two_apps("?")
    config["applications"] = config["applications"][:1]
    assert rest.put("/api/serve/applications/", json=config).status_code == 200
    wait_for(lambda: "b" not in rest.get("/api/serve/applications/").json()["applications"], timeout=60,
             what="app b deleted")
    assert rest.delete("/api/serve/applications/").status_code == 200
    assert rest.get("/api/serve/applications/").json()["applications"] == {}


def test_bad_json_and_invalid_config_are_400(rest):
    r = rest.put("/api/serve/applications/", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = rest.put("/api/serve/applications/", json={"applications": [{"import_path": "x:y", "route_prefix": "nope"}]})
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert errors[0]["loc"] == ["applications", 0, "route_prefix"] and "start with" in errors[0]["msg"]


def test_import_error_fails_only_that_app(rest):
    config = two_apps()
    config["applications"].append({"name": "broken", "route_prefix": "/broken", "import_path": "broken_app:app"})
    assert rest.put("/api/serve/applications/", json=config).status_code == 200
    wait_for(lambda: app_status(rest, "broken") == "DEPLOY_FAILED", timeout=60, what="DEPLOY_FAILED")
    message = rest.get("/api/serve/applications/").json()["applications"]["broken"]["message"]
    assert "this_module_does_not_exist" in message and "Traceback" in message
    wait_for(lambda: app_status(rest, "a") == "RUNNING", timeout=60, what="app a RUNNING")
    r = httpx.get(f"{proxy_url()}/a")
    assert r.status_code == 200, (r.status_code, r.text)


def test_v1_single_app_and_mode_exclusion(rest):
    assert rest.put("/api/serve/applications/", json=two_apps()).status_code == 200
    single = {"import_path": "config_apps:greeter_app", "route_prefix": "/"}
    r = rest.put("/api/serve/deployments/", json=single)
    assert r.status_code == 400 and "multi-app" in r.json()["error"]
    assert rest.delete("/api/serve/applications/").status_code == 200
    assert rest.put("/api/serve/deployments/", json=single).status_code == 200
    wait_for(lambda: rest.get("/api/serve/deployments/status").json()["app_status"]["status"] == "RUNNING",
             timeout=60, what="V1 app RUNNING")
    status = rest.get("/api/serve/deployments/status").json()
    assert status["name"] == "default"
    assert status["deployment_statuses"] == [{"name": "Greeter", "status": "HEALTHY", "message": ""}]
    assert rest.get("/api/serve/deployments/").json()["import_path"] == "config_apps:greeter_app"
    assert httpx.get(f"{proxy_url()}/").json()["text"] == "hello"
    assert rest.delete("/api/serve/deployments/").status_code == 200
    assert rest.get("/api/serve/deployments/status").json()["app_status"]["status"] == "NOT_STARTED"


@pytest.mark.slow
def test_runtime_env_vars_apply_cluster_wide(rest):
    config = {"applications": [{"name": "env", "route_prefix": "/env", "import_path": "config_apps:env_app",
                                "runtime_env": {"env_vars": {"DSERVE_TEST_RUNTIME_ENV": "from-config"}}}]}
    assert rest.put("/api/serve/applications/", json=config).status_code == 200
    wait_for(lambda: app_status(rest, "env") == "RUNNING", timeout=120, what="the app RUNNING after worker restarts")
    wait_for(lambda: httpx.get(f"{proxy_url()}/env", timeout=10).json()["value"] == "from-config", timeout=60,
             what="the env var visible in the replica")
    bad = {"applications": [{"name": "env", "import_path": "config_apps:env_app", "runtime_env": {"conda": "x"}}]}
    r = rest.put("/api/serve/applications/", json=bad)
    assert r.status_code == 400 and "conda" in r.json()["error"]
