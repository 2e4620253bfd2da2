"""`dserve run`, `deploy --wait`, `status`, `shutdown` and `start --grpc-servicer-functions`
against the cluster `dserve start` launched: real processes, the REST API, HTTP and gRPC."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import zipfile
from types import SimpleNamespace

import grpc
import httpx
import pytest
import yaml

from conftest import free_port, wait_for
from test_cli import APPS_DIR, dserve

from dserve.cli.run import _importable_from

pytestmark = pytest.mark.slow

PROTO = """
syntax = "proto3";
package clirun;
message Ping { string name = 1; }
message Pong { string message = 1; }
service Pinger { rpc Call(Ping) returns (Pong); }
"""
SERVICER = "clirun_pb2_grpc.add_PingerServicer_to_server"
GARBAGE = b"garbage, not a checkpoint\x00\xff"


def write(directory, name, source):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(textwrap.dedent(source))
    return directory


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dserve start`: one worker, gRPC on, and a state file it cannot read (for checkpoint_message)."""
    root = tmp_path_factory.mktemp("cli_run")
    protos = root / "protos"
    write(protos, "clirun.proto", PROTO)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{protos}", f"--python_out={protos}",
                    f"--grpc_python_out={protos}", str(protos / "clirun.proto")], check=True)
    state = root / "state.pkl"
    state.write_bytes(GARBAGE)
    env = dict(os.environ, DSERVE_HOME=str(root / "home"), DASK_LOGGING__DISTRIBUTED="warning",
               DSERVE_STATE_PATH=str(state),
               PYTHONPATH=os.pathsep.join(filter(None, [str(protos), os.environ.get("PYTHONPATH")])))
    ports = SimpleNamespace(http=free_port(), rest=free_port(), grpc=free_port())
    dserve("start", "--http-port", str(ports.http), "--rest-port", str(ports.rest), "--grpc-port", str(ports.grpc),
           "--grpc-servicer-functions", SERVICER, "--n-workers", "1", "--nthreads", "4", env=env)
    token = (root / "home" / "auth_token").read_text().strip()
    try:
        yield SimpleNamespace(root=root, env=env, protos=protos, state=state, token=token, **vars(ports))
    finally:
        dserve("stop", env=env)


def details(cluster):
    return httpx.get(f"http://127.0.0.1:{cluster.rest}/api/serve/applications/",
                     headers={"Authorization": f"Bearer {cluster.token}"}, timeout=30).json()


def refused(url):
    try:
        httpx.get(url, timeout=2)
    except httpx.ConnectError:
        return True
    return False


def hello_dir(tmp_path, text):
    return write(tmp_path / "proj", "hello_mod.py", f"""\
        import dserve as serve

        @serve.deployment
        def hello(request):
            return {text!r}

        app = hello.bind()
        """)


def test_run_app_dir_non_blocking_deploys_to_the_launched_cluster(cluster, tmp_path):
    project = hello_dir(tmp_path, "hello from the app dir")
    result = dserve("run", "-d", str(project), "hello_mod:app", "--name", "appdir", "--route-prefix", "/appdir",
                    "--non-blocking", env=cluster.env, cwd=str(tmp_path))  # not importable from the cwd
    record = json.loads((cluster.root / "home" / "cluster.json").read_text())
    lines = result.stdout.splitlines()
    assert lines[0] == f"Deploying hello_mod:app to the cluster `dserve start` launched ({record['address']})."
    assert lines[-3:] == ["appdir: RUNNING", "appdir/hello: HEALTHY (1 RUNNING)",
                          f"Deployed to the cluster `dserve start` launched ({record['address']}); left running "
                          "(`dserve status`, `dserve shutdown`)."]
    status = yaml.safe_load(dserve("status", "-n", "appdir", env=cluster.env).stdout)
    assert (status["status"], status["deployments"]["hello"]["replica_states"]) == ("RUNNING", {"RUNNING": 1})
    assert httpx.get(f"http://127.0.0.1:{cluster.http}/appdir").text == "hello from the app dir"
    missing = dserve("status", "-n", "nope", env=cluster.env, check=False)
    assert (missing.returncode, missing.stderr) == (1, "Error: Application 'nope' does not exist.\n")


def test_runtime_env_json_working_dir_makes_a_module_importable_on_the_workers(cluster, tmp_path):
    code = write(tmp_path / "wd_code", "wd_helper.py", "VALUE = 'from the working dir'\n")
    write(code, "wd_app.py", """\
        import dserve as serve
        import wd_helper  # imported on the worker when the replica loads: only the working_dir has it

        @serve.deployment
        def where(request):
            return {"value": wd_helper.VALUE, "file": wd_helper.__file__}

        app = where.bind()
        """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = dserve("run", "--runtime-env-json", json.dumps({"working_dir": str(code)}), "wd_app:app",
                    "--name", "wd", "--route-prefix", "/wd", "--non-blocking", env=cluster.env, cwd=str(elsewhere))
    assert result.stdout.splitlines()[-3:-1] == ["wd: RUNNING", "wd/where: HEALTHY (1 RUNNING)"]
    answer = httpx.get(f"http://127.0.0.1:{cluster.http}/wd").json()
    assert answer["value"] == "from the working dir"
    folder, name = os.path.split(answer["file"])
    assert name == "wd_helper.py" and os.path.basename(folder).startswith("dserve-code-")  # the uploaded copy


def test_deploy_wait_exits_1_with_the_reason_and_status_prints_it_as_a_block(cluster):
    result = dserve("deploy", "broken_app:app", "--name", "broken", "--route-prefix", "/broken", "--wait",
                    env=cluster.env, check=False)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"Sent deploy request to http://127.0.0.1:{cluster.rest}; waiting for broken."
    assert lines[-1] == "broken: DEPLOY_FAILED"
    message = details(cluster)["applications"]["broken"]["message"]
    assert message.startswith("Deploying application 'broken' failed:\nTraceback (most recent call last):\n")
    assert "ModuleNotFoundError: No module named 'this_module_does_not_exist'\n" in message
    assert result.stderr == f"Error: Application 'broken' is DEPLOY_FAILED:\n{message}\n"

    printed = dserve("status", env=cluster.env).stdout
    assert ("  broken:\n    status: DEPLOY_FAILED\n    message: |-\n"
            "      Deploying application 'broken' failed:\n      Traceback (most recent call last):\n") in printed
    assert yaml.safe_load(printed)["applications"]["broken"]["message"] == message
    assert yaml.safe_load(dserve("status", "-n", "broken", env=cluster.env).stdout)["message"] == message


def test_deploy_wait_shows_what_a_deployment_waits_for(cluster, tmp_path):
    config = tmp_path / "big.yaml"
    config.write_text(yaml.safe_dump({"applications": [
        {"name": "big", "route_prefix": "/big", "import_path": "config_apps:greeter_app",
         "deployments": [{"name": "Greeter", "ray_actor_options": {"num_cpus": 64}}]}]}))
    proc = subprocess.Popen([sys.executable, "-m", "dserve.cli", "deploy", str(config), "--wait"], cwd=APPS_DIR,
                            env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))
            if "cannot be placed" in line:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    assert re.fullmatch(r"big/Greeter: UPDATING -- Deployment 'Greeter' has replicas that cannot be placed yet: "
                        r"no worker has enough free resources: needs CPU=64 \(most free on one worker: \d\)\.",
                        seen[-1]), seen
    assert (proc.returncode, err) == (1, "Error: stopped waiting (the deploy goes on; see `dserve status`)\n")
    assert details(cluster)["applications"]["big"]["status"] == "DEPLOYING"
    dserve("shutdown", "-y", env=cluster.env)


def test_deploy_wait_succeeds_and_config_n(cluster):
    result = dserve("deploy", "config_apps:builder", "greeting=hey", "--name", "g", "--route-prefix", "/g", "--wait",
                    env=cluster.env)
    lines = result.stdout.splitlines()
    assert lines[0] == f"Sent deploy request to http://127.0.0.1:{cluster.rest}; waiting for g."
    assert lines[-3:] == ["g: RUNNING", "g/Greeter: HEALTHY (1 RUNNING)", "Deployed: g RUNNING."]
    assert httpx.get(f"http://127.0.0.1:{cluster.http}/g").json()["text"] == "hey"
    assert yaml.safe_load(dserve("config", "-n", "g", env=cluster.env).stdout) == {
        "name": "g", "route_prefix": "/g", "import_path": "config_apps:builder", "args": {"greeting": "hey"}}
    assert dserve("config", "-n", "other", env=cluster.env).stdout == "No config for application 'other'.\n"


def test_status_shows_the_checkpoint_message(cluster):
    moved = [p for p in cluster.root.iterdir() if p.name.startswith("state.pkl.corrupt-")]
    assert len(moved) == 1 and moved[0].read_bytes() == GARBAGE
    expected = (f"the state file {cluster.state} could not be read (UnpicklingError: pickle data was truncated); "
                f"it was moved to {moved[0]} and the controller started with no applications")
    assert yaml.safe_load(dserve("status", env=cluster.env).stdout)["checkpoint_message"] == expected
    assert json.loads(dserve("status", "-o", "json", env=cluster.env).stdout)["checkpoint_message"] == expected


def test_start_grpc_servicer_functions_enable_the_grpc_proxy(cluster, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(cluster.protos))
    import clirun_pb2
    import clirun_pb2_grpc

    assert details(cluster)["grpc_options"] == {"port": cluster.grpc, "grpc_servicer_functions": [SERVICER],
                                                "request_timeout_s": None}
    project = write(tmp_path / "grpc_proj", "pinger_app.py", """\
        import clirun_pb2
        import dserve as serve

        @serve.deployment
        class Pinger:
            def Call(self, request):
                return clirun_pb2.Pong(message=f"pong {request.name}")

        app = Pinger.bind()
        """)
    dserve("run", "-d", str(project), "pinger_app:app", "--name", "pinger", "--route-prefix", "/pinger",
           "--non-blocking", env=cluster.env)
    with grpc.insecure_channel(f"127.0.0.1:{cluster.grpc}") as channel:
        stub = clirun_pb2_grpc.PingerStub(channel)
        reply = wait_for(lambda: stub.Call(clirun_pb2.Ping(name="ann"), metadata=(("application", "pinger"),)),
                         timeout=30, what="the gRPC proxy to route to pinger")
    assert reply.message == "pong ann"


def test_ctrl_c_on_run_shuts_serve_down_quietly_and_the_cluster_stays(cluster, tmp_path):
    project = hello_dir(tmp_path, "blocking")
    proc = subprocess.Popen([sys.executable, "-m", "dserve.cli", "run", "-d", str(project), "hello_mod:app",
                             "--name", "fg", "--route-prefix", "/fg"], cwd=str(tmp_path), env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))
            if line.startswith("Deployed; serving until Ctrl-C."):
                break
        assert httpx.get(f"http://127.0.0.1:{cluster.http}/fg").text == "blocking"
    finally:
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    assert (proc.returncode, rest, err) == (0, "Shutting down.\n", ""), seen
    after = details(cluster)
    assert (after["applications"], after["proxies"]) == ({}, {})


def test_shutdown_asks_then_removes_serve_and_keeps_the_cluster(cluster, tmp_path):
    project = hello_dir(tmp_path, "before shutdown")
    dserve("run", "-d", str(project), "hello_mod:app", "--name", "s", "--route-prefix", "/s", "--non-blocking",
           env=cluster.env)
    declined = dserve("shutdown", env=cluster.env, input="n\n", check=False)
    assert declined.returncode == 1 and declined.stderr.endswith("Aborted!\n")
    assert list(details(cluster)["applications"]) == ["s"]

    result = dserve("shutdown", "-y", env=cluster.env)
    assert result.stdout == (f"Shut down Serve at http://127.0.0.1:{cluster.rest}: every application deleted, "
                             "proxies stopped.\n")
    status = yaml.safe_load(dserve("status", env=cluster.env).stdout)
    status.pop("checkpoint_message")
    assert status == {"proxies": {}, "applications": {}, "target_capacity": None}
    wait_for(lambda: refused(f"http://127.0.0.1:{cluster.http}/s"), timeout=30, what="the HTTP proxy to stop")
    record = json.loads((cluster.root / "home" / "cluster.json").read_text())
    from dserve.launcher import ours

    assert ours(record) == record["pids"]  # scheduler and worker still the processes `dserve start` launched

    dserve("run", "-d", str(project), "hello_mod:app", "--name", "s", "--route-prefix", "/s", "--non-blocking",
           env=cluster.env)  # Serve comes back on the same cluster
    assert httpx.get(f"http://127.0.0.1:{cluster.http}/s").text == "before shutdown"


def test_py_modules_are_importable_in_dserve_run_as_on_the_workers(tmp_path):
    """A package directory or .py file is imported by its own name (its folder on the path); a
    zip or wheel from itself (its contents at the root, as the workers unpack it)."""
    (tmp_path / "pkg").mkdir()
    archive = tmp_path / "zmod.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zmod/__init__.py", "VALUE = 1\n")
    assert _importable_from(str(tmp_path / "pkg")) == str(tmp_path)
    assert _importable_from(str(tmp_path / "pkg") + "/") == str(tmp_path)  # a trailing slash changes nothing
    assert _importable_from(str(archive)) == str(archive)
