"""The dserve CLI, run as a user would: real processes, a detached cluster, the REST API."""
import os
import signal
import subprocess
import sys

import httpx
import pytest
import yaml

from conftest import free_port, wait_for

APPS_DIR = os.path.join(os.path.dirname(__file__), "apps")


def dserve(*args, env=None, check=True, timeout=120):
    result = subprocess.run([sys.executable, "-m", "dserve.cli", *args], cwd=APPS_DIR, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"dserve {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, DSERVE_HOME=str(tmp_path / "home"), DASK_LOGGING__DISTRIBUTED="warning")


def test_build_writes_a_config(tmp_path, env):
    out = tmp_path / "config.yaml"
    dserve("build", "config_apps:greeter_app", "-o", str(out), env=env)
    config = yaml.safe_load(out.read_text())
    app = config["applications"][0]
    assert app["import_path"] == "config_apps:greeter_app" and app["route_prefix"] == "/"
    assert app["deployments"][0]["name"] == "Greeter"


@pytest.mark.slow
def test_start_deploy_status_config_shutdown(tmp_path, env):
    http_port, rest_port = free_port(), free_port()
    started = dserve("start", "--http-port", str(http_port), "--rest-port", str(rest_port), env=env)
    assert f"127.0.0.1:{rest_port}" in started.stdout
    try:
        page = started.stdout.split("Serve page: ")[1].split(" ")[0]
        with open(os.path.join(env["DSERVE_HOME"], "auth_token")) as f:
            token = f.read().strip()
        assert httpx.get(page).status_code == 401  # the page wants the token, as the REST API does
        assert httpx.get(page, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        config = {"applications": [
            {"name": "a", "route_prefix": "/a", "import_path": "config_apps:greeter_app",
             "deployments": [{"name": "Greeter", "user_config": {"suffix": "!"}}]},
            {"name": "b", "route_prefix": "/b", "import_path": "config_apps:builder", "args": {"greeting": "hey"}},
        ]}
        path = tmp_path / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        dserve("deploy", str(path), env=env)

        def running():
            status = yaml.safe_load(dserve("status", env=env).stdout)
            return all(status["applications"].get(n, {}).get("status") == "RUNNING" for n in ("a", "b"))

        wait_for(running, timeout=90, interval=0.5, what="both applications RUNNING")
        assert httpx.get(f"http://127.0.0.1:{http_port}/a").json()["text"] == "hello!"
        assert httpx.get(f"http://127.0.0.1:{http_port}/b").json()["text"] == "hey"
        configs = list(yaml.safe_load_all(dserve("config", env=env).stdout))
        assert {c["name"] for c in configs} == {"a", "b"}

        config["applications"][0]["deployments"][0]["user_config"] = {"suffix": "?"}
        path.write_text(yaml.safe_dump(config))
        dserve("deploy", str(path), env=env)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{http_port}/a").json()["text"] == "hello?", timeout=60,
                 what="the new user_config")
    finally:
        dserve("shutdown", "-y", env=env)
    assert not os.path.exists(os.path.join(env["DSERVE_HOME"], "cluster.json"))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{rest_port}/api/serve/applications/", timeout=2)


def test_user_mistakes_are_one_line_errors(tmp_path, env):
    missing_path = tmp_path / "missing.yaml"
    missing = dserve("deploy", str(missing_path), env=env, check=False)
    assert (missing.returncode, missing.stderr) == (1, f"Error: cannot read {missing_path}: No such file or directory\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"applications": [{"import_path": "x:y", "route_prefix": "nope"}]}))
    invalid = dserve("deploy", str(bad), env=env, check=False)
    assert (invalid.returncode, invalid.stderr) == (
        1, "Error: invalid config: applications.0.route_prefix: Value error, route_prefix must start with \"/\", "
           "got 'nope'\n")
    url = f"http://127.0.0.1:{free_port()}"
    unreachable = dserve("status", "-a", url, env=env, check=False)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(f"Error: cannot reach the dserve REST API at {url}: ")
    assert len(unreachable.stderr.splitlines()) == 1  # one line, no traceback


@pytest.mark.slow
def test_run_serves_until_interrupted(env):
    port = free_port()
    env = dict(env, DASK_DSERVE__REST_PORT="0")
    proc = subprocess.Popen([sys.executable, "-m", "dserve.cli", "run", "config_apps:builder", "greeting=yo",
                             "--http-port", str(port)], cwd=APPS_DIR, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=2).json()["text"] == "yo", timeout=90,
                 interval=0.3, what="dserve run to serve")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Shutting down" in out


@pytest.mark.slow
def test_run_reload_redeploys_changed_code(tmp_path, env):
    app_dir = tmp_path / "proj"
    app_dir.mkdir()
    source = (
        "import dserve as serve\n\n"
        "@serve.deployment\n"
        "def hello(request):\n"
        "    return 'VERSION'\n\n"
        "app = hello.bind()\n"
    )
    (app_dir / "reload_app.py").write_text(source.replace("VERSION", "one"))
    port = free_port()
    env = dict(env, DASK_DSERVE__REST_PORT="0")
    proc = subprocess.Popen([sys.executable, "-m", "dserve.cli", "run", "reload_app:app", "--reload",
                             "--http-port", str(port)], cwd=app_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text == "one", timeout=90,
                 interval=0.3, what="the first version")
        path = app_dir / "reload_app.py"
        old_mtime = path.stat().st_mtime
        path.write_text(source.replace("VERSION", "two"))
        os.utime(path, (old_mtime + 10, old_mtime + 10))  # a new mtime, whatever the filesystem's granularity
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text == "two", timeout=90,
                 interval=0.3, what="the reloaded version")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert "Files changed; redeploying." in out, err


def test_start_with_address_installs_dserve_on_an_existing_cluster(env):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        http_port = free_port()
        result = dserve("start", "--address", cluster.scheduler_address, "--http-port", str(http_port),
                        "--proxy-location", "Disabled", env=dict(env, DASK_DSERVE__REST_PORT="-1"))
        assert "running on the Dask cluster" in result.stdout
        assert "dserve-controller" in cluster.scheduler.plugins
