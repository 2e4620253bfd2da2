"""runtime_env.working_dir ships the user's directory to every worker's sys.path."""
from __future__ import annotations

import zipfile

import httpx
import pytest

import dserve as serve
from dserve.api import _sync
from dserve.runtime import current_runtime
from conftest import auth_headers, free_port, proxy_url, wait_for

pytestmark = pytest.mark.slow

APP = '''
import dserve as serve

@serve.deployment
def hello():
    return "{text}"

app = hello.bind()
'''


@pytest.fixture(scope="module")
def rest():
    serve.start(http_options={"port": free_port()})
    rt = current_runtime()
    port = _sync(rt, rt.rpc("dserve_status"))["rest_port"]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=auth_headers()) as client:
        yield client
    serve.shutdown()


def deploy_and_get(rest, module: str, working_dir: str) -> str:
    config = {"applications": [{"name": module, "route_prefix": f"/{module}", "import_path": f"{module}:app",
                                "runtime_env": {"working_dir": working_dir}}]}
    assert rest.put("/api/serve/applications/", json=config).status_code == 200

    def status():
        return rest.get("/api/serve/applications/").json()["applications"].get(module, {}).get("status")
    assert wait_for(lambda: status() in ("RUNNING", "DEPLOY_FAILED") and status(), timeout=120) == "RUNNING"
    return wait_for(lambda: httpx.get(f"{proxy_url()}/{module}", timeout=10).text, timeout=60)


def test_working_dir_dot_lands_on_the_workers_path(rest, tmp_path, monkeypatch):
    (tmp_path / "wd_dot_app.py").write_text(APP.format(text="from the working dir"))
    monkeypatch.chdir(tmp_path)  # the embedded scheduler resolves "." here
    assert deploy_and_get(rest, "wd_dot_app", ".") == "from the working dir"


def test_a_zip_working_dir(rest, tmp_path):
    archive = tmp_path / "code.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("wd_zip_app.py", APP.format(text="from the zip"))
    assert deploy_and_get(rest, "wd_zip_app", str(archive)) == "from the zip"


def test_a_missing_module_suggests_working_dir(rest):
    config = {"applications": [{"name": "missing", "route_prefix": "/missing", "import_path": "nowhere_module:app"}]}
    assert rest.put("/api/serve/applications/", json=config).status_code == 200

    def failed():
        app = rest.get("/api/serve/applications/").json()["applications"].get("missing", {})
        return app.get("status") == "DEPLOY_FAILED" and app["message"]
    message = wait_for(failed, timeout=60)
    assert "ModuleNotFoundError: No module named 'nowhere_module'" in message
    assert "ship your code with runtime_env={'working_dir': '.'} (or py_modules)" in message
