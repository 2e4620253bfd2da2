"""The dserve CLI, run as a user would: real processes, a detached cluster, the REST API."""
import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
from distributed import Client
import yaml

from conftest import free_port, wait_for
from dserve.launcher import alive

APPS_DIR = os.path.join(os.path.dirname(__file__), "apps")


def dserve(*args, env=None, check=True, timeout=120, cwd=APPS_DIR, input=None):
    result = subprocess.run([sys.executable, "-m", "dserve.cli", *args], cwd=cwd, env=env, input=input,
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


def test_build_app_dir_and_grpc_servicer_functions(tmp_path, env):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "built.py").write_text(
        "import dserve as serve\n\n"
        "@serve.deployment(num_replicas=3, user_config={'k': 1})\n"
        "def one(request):\n"
        "    return 'one'\n\n"
        "@serve.deployment\n"
        "def two(request):\n"
        "    return 'two'\n\n"
        "app_one = one.bind()\n"
        "app_two = two.bind()\n")
    result = dserve("build", "-d", str(project), "built:app_one", "built:app_two", "--grpc-servicer-functions",
                    "pb2_grpc.add_XServicer_to_server", env=env, cwd=str(tmp_path))  # imported from -d, not the cwd
    assert result.stdout.startswith("# Written by `dserve build` (dserve ")
    assert yaml.safe_load(result.stdout) == {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "grpc_options": {"port": 9000, "grpc_servicer_functions": ["pb2_grpc.add_XServicer_to_server"]},
        "applications": [
            {"name": "app1", "route_prefix": "/app1", "import_path": "built:app_one", "runtime_env": {},
             "deployments": [{"name": "one", "num_replicas": 3, "user_config": {"k": 1}}]},
            {"name": "app2", "route_prefix": "/app2", "import_path": "built:app_two", "runtime_env": {},
             "deployments": [{"name": "two"}]},
        ],
    }
    missing = dserve("build", "built:app_one", env=env, cwd=str(tmp_path), check=False)  # without -d
    assert (missing.returncode, missing.stderr) == (
        1, "Error: cannot import built:app_one: ModuleNotFoundError: No module named 'built'\n")


def test_version_and_short_help(env):
    from dserve import __version__

    assert dserve("--version", env=env).stdout == f"dserve {__version__}\n"
    assert dserve("run", "-h", env=env).stdout.startswith("Usage: dserve run [OPTIONS] CONFIG_OR_IMPORT_PATH")


@pytest.mark.slow
def test_start_deploy_status_config_stop(tmp_path, env):
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
        # isolated placement: the proxy has a one-thread worker of its own, and no replica is there
        with open(os.path.join(env["DSERVE_HOME"], "cluster.json")) as f:
            address = json.load(f)["address"]
        with Client(address, timeout=10) as client:
            workers = client.scheduler_info()["workers"]
            proxy_workers = [a for a, w in workers.items() if w.get("resources") == {"proxy": 1}]
            assert len(proxy_workers) == 1 and workers[proxy_workers[0]]["nthreads"] == 1
            assert len(workers) == 3
            actors = client.run(lambda dask_worker: sorted(dask_worker.state.actors), workers=proxy_workers)
            assert actors == {proxy_workers[0]: []}
        configs = list(yaml.safe_load_all(dserve("config", env=env).stdout))
        assert {c["name"] for c in configs} == {"a", "b"}

        config["applications"][0]["deployments"][0]["user_config"] = {"suffix": "?"}
        path.write_text(yaml.safe_dump(config))
        dserve("deploy", str(path), env=env)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{http_port}/a").json()["text"] == "hello?", timeout=60,
                 what="the new user_config")
    finally:
        with open(os.path.join(env["DSERVE_HOME"], "cluster.json")) as f:
            pids = json.load(f)["pids"]
        stopped = dserve("stop", env=env)
    assert stopped.stdout.startswith("Stopped the cluster `dserve start` launched (tcp://127.0.0.1:")
    assert [pid for pid in pids if alive(pid)] == []
    assert not os.path.exists(os.path.join(env["DSERVE_HOME"], "cluster.json"))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{rest_port}/api/serve/applications/", timeout=2)
    again = dserve("stop", env=env)
    assert again.stdout == "No cluster launched by `dserve start` is recorded; nothing to stop.\n"


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
    mistakes = {
        ("run", "config_apps:greeter_app", "--non-blocking"):
            "Error: --non-blocking needs a cluster that outlives this command: run `dserve start` first or give "
            "-a/--address (an embedded cluster stops when `dserve run` exits)\n",
        ("run", "config_apps:greeter_app", "--reload", "--non-blocking"):
            "Error: --reload and --non-blocking conflict: reloading needs the command running\n",
        ("run", "config_apps:greeter_app", "--runtime-env", "env.yaml", "--runtime-env-json", "{}"):
            "Error: give --runtime-env or --runtime-env-json, not both\n",
        ("deploy", "config_apps:greeter_app", "--runtime-env-json", "{nope"):
            "Error: --runtime-env-json is not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)\n",
        ("deploy", "config_apps:greeter_app", "--runtime-env-json", '{"conda": "env"}'):
            "Error: invalid config: applications.0.runtime_env: Value error, runtime_env fields ['conda'] are not "
            "supported on Dask; supported: env_vars, working_dir, pip, py_modules\n",
        ("run", "config_apps:greeter_app", "oops"):
            "Error: application arguments must look like key=value, got 'oops'\n",
    }
    for args, message in mistakes.items():
        result = dserve(*args, env=env, check=False)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", message), args


@pytest.mark.slow
def test_run_serves_until_interrupted(env):
    port = free_port()
    env = dict(env, DASK_DSERVE__REST_PORT="0")
    proc = subprocess.Popen([sys.executable, "-m", "dserve.cli", "run", "config_apps:builder", "greeting=yo",
                             "--http-port", str(port)], cwd=APPS_DIR, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stdout:  # the progress, then the line saying it serves
            seen.append(line.rstrip("\n"))
            if line.startswith("Deployed; serving until Ctrl-C."):
                break
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).json()["text"] == "yo"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert seen[0] == "Deploying config_apps:builder to an embedded cluster."
    assert seen[-3:] == ["default: RUNNING", "default/Greeter: HEALTHY (1 RUNNING)", "Deployed; serving until Ctrl-C."]
    assert out == "Shutting down.\n"
    assert "Traceback" not in err, err


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
