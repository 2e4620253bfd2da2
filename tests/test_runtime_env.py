"""runtime_env.working_dir ships the user's directory to every worker's sys.path."""
from __future__ import annotations

import io
import threading
import zipfile

import httpx
import pytest

import dserve as serve
from dserve.api import _sync
from dserve.controller.runtime_env import _archive, _unpack
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


def deploy_and_get(rest, module: str, working_dir: str = "", py_modules=()) -> str:
    runtime_env = {"working_dir": working_dir} if working_dir else {"py_modules": list(py_modules)}
    config = {"applications": [{"name": module, "route_prefix": f"/{module}", "import_path": f"{module}:app",
                                "runtime_env": runtime_env}]}
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


def test_a_py_modules_package_is_importable_by_its_own_name(rest, tmp_path):
    package = tmp_path / "wd_pkg_app"
    package.mkdir()
    (package / "__init__.py").write_text(APP.format(text="from the package"))
    assert deploy_and_get(rest, "wd_pkg_app", py_modules=[str(package)]) == "from the package"


def test_nannies_sharing_a_directory_unpack_the_same_code_once(tmp_path):
    """Nannies of one host share their local directory and set up the plugin at the same
    moment (Dask's UploadDirectory failed here with FileExistsError)."""
    source = tmp_path / "tests" / "docs" / "code"  # path words Dask's uploader skipped
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "mod.py").write_text("X = 1\n")
    (source / "pkg" / "__pycache__").mkdir()
    (source / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    for scratch in ("dask-scratch-space", "dserve-code-0123abcd", ".dserve-code-0123abcd-x"):  # Dask's local dir inside
        (source / scratch).mkdir()
        (source / scratch / "old.py").write_text("")
    data = _archive(str(source), under_own_name=False)
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["pkg/mod.py"]

    base, results, errors = tmp_path / "scratch", [], []
    barrier = threading.Barrier(8)

    def unpack():
        barrier.wait()
        try:
            results.append(_unpack(str(base), "abc123", data))
        except Exception as exc:  # noqa: BLE001 - the assertion below names it
            errors.append(exc)
    threads = [threading.Thread(target=unpack) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert set(results) == {str(base / "dserve-code-abc123")}
    assert sorted(p.name for p in base.iterdir()) == ["dserve-code-abc123"]  # no scratch left
    assert (base / "dserve-code-abc123" / "pkg" / "mod.py").read_text() == "X = 1\n"


def test_a_missing_module_suggests_working_dir(rest):
    config = {"applications": [{"name": "missing", "route_prefix": "/missing", "import_path": "nowhere_module:app"}]}
    assert rest.put("/api/serve/applications/", json=config).status_code == 200

    def failed():
        app = rest.get("/api/serve/applications/").json()["applications"].get("missing", {})
        return app.get("status") == "DEPLOY_FAILED" and app["message"]
    message = wait_for(failed, timeout=60)
    assert "ModuleNotFoundError: No module named 'nowhere_module'" in message
    assert "ship your code with runtime_env={'working_dir': '.'} (or py_modules)" in message
