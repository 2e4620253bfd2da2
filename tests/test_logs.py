"""Logs: replica and request context on every line, JSON encoding, the proxy's access log,
``dserve logs`` (through the REST API), rotated log files, and quiet defaults.

Lines are read back the way a user would: ``GET /api/serve/logs`` (what ``dserve logs``
calls), the ``dserve logs --follow`` command, the files in ``logs_dir``, or the output of
a real ``dserve run`` / user script.
"""
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from types import SimpleNamespace

import httpx
import pytest
from pydantic import ValidationError

import dserve as serve
import dserve.schema
from dserve import LoggingConfig
from dserve.config import LOG_RING_LINES
from conftest import APPS_DIR, auth_headers, free_port, make_apps_importable, proxy_url, wait_for

ROTATE_BYTES = 4096  # the workers' DSERVE_ROTATION_MAX_BYTES in this module


@pytest.fixture(scope="module")
def logs_env():
    """dserve whose workers import tests/apps and rotate log files at ROTATE_BYTES (2 backups)."""
    with pytest.MonkeyPatch.context() as mp:  # later modules get the environment back as it was
        make_apps_importable(mp)
        mp.setenv("DSERVE_ROTATION_MAX_BYTES", str(ROTATE_BYTES))
        mp.setenv("DSERVE_ROTATION_BACKUP_COUNT", "2")
        serve.start(http_options={"port": free_port()})
        try:
            from dserve.api import _sync
            from dserve.runtime import current_runtime

            rt = current_runtime()
            rest_address = f"http://127.0.0.1:{_sync(rt, rt.rpc('dserve_status'))['rest_port']}"
            with httpx.Client(base_url=rest_address, timeout=30, headers=auth_headers()) as client:
                yield SimpleNamespace(rest=client, rest_address=rest_address, http=proxy_url())
        finally:
            serve.shutdown()


@pytest.fixture
def env(logs_env):
    yield logs_env
    for name in list(serve.status().applications):
        serve.delete(name)


def log_lines(env, app=None, deployment=None):
    """Every line the ring buffers hold (of ``app``/``deployment``; with the proxies' without app)."""
    params = {"app": app or "", "deployment": deployment or "", "tail": LOG_RING_LINES}
    response = env.rest.get("/api/serve/logs", params=params)
    assert response.status_code == 200, response.text
    return [entry["line"] for entry in response.json()["lines"]]


def test_logging_config_has_rays_fields_defaults_and_errors():
    assert dserve.schema.LoggingConfig is LoggingConfig is serve.LoggingConfig
    assert LoggingConfig().model_dump() == {"encoding": "TEXT", "log_level": "INFO", "logs_dir": None,
                                            "enable_access_log": True, "additional_log_standard_attrs": []}
    assert LoggingConfig(log_level=logging.DEBUG, encoding="JSON").model_dump()["log_level"] == "DEBUG"
    with pytest.raises(ValidationError, match=r'Got "XML" for encoding\. Encoding must be one of \[\'JSON\', \'TEXT\'\]'):
        LoggingConfig(encoding="XML")
    with pytest.raises(ValidationError, match=r'Got "LOUD" for log_level\. log_level must be one of'):
        LoggingConfig(log_level="LOUD")
    with pytest.raises(ValidationError, match=r"Unknown attributes \['nope'\]"):
        LoggingConfig(additional_log_standard_attrs=["funcName", "nope"])
    with pytest.raises(ValidationError, match="colour"):
        LoggingConfig(colour=True)

    def f(request):
        return "f"

    assert serve.deployment(logging_config={"encoding": "JSON"})(f).logging_config == LoggingConfig(encoding="JSON")
    assert serve.deployment(f).options(logging_config=LoggingConfig(log_level="DEBUG")).logging_config.log_level == "DEBUG"
    with pytest.raises(ValueError, match="Encoding must be one of"):
        serve.deployment(logging_config={"encoding": "XML"})(f)
    schema = dserve.schema.DeploymentSchema(name="f", logging_config={"enable_access_log": False})
    assert schema.options() == {"logging_config": LoggingConfig(enable_access_log=False)}


def test_json_logs_parse_line_by_line_and_carry_the_request_id(env):
    @serve.deployment(logging_config=LoggingConfig(encoding="JSON"))
    class Child:
        def __call__(self, tag):  # sync: runs in the replica's thread pool
            print(f"child print {tag}")
            logging.getLogger("user").info("child log %s", tag)
            logging.getLogger("user").debug("child debug %s", tag)  # below the default INFO: not kept
            return tag

    @serve.deployment
    class Parent:  # JSON from serve.run's logging_config
        def __init__(self, child):
            self.child = child
            print("parent constructed")

        async def __call__(self, request):
            tag = request.query_params["tag"]
            logging.getLogger("user").info("parent log %s", tag, extra={"tag": tag})
            print(f"parent print {tag}")
            return await self.child.remote(tag)

    serve.run(Parent.bind(Child.bind()), name="json", route_prefix="/json", logging_config={"encoding": "JSON"})
    request_ids = {}
    for tag in ("a", "b", "c"):
        response = httpx.get(f"{env.http}/json?tag={tag}")
        assert (response.status_code, response.text) == (200, tag)
        request_ids[tag] = response.headers["x-request-id"]
    def replica_lines():  # (the application's lines also hold the proxy's access lines, in its encoding)
        return log_lines(env, app="json", deployment="Parent") + log_lines(env, app="json", deployment="Child")

    lines = wait_for(lambda: (lambda got: got if len(got) >= 13 else None)(replica_lines()),
                     timeout=10, what="13 log lines of the application's replicas")
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len(records) == 13
    by_request = defaultdict(list)
    for record in records:
        by_request[record["request_id"]].append((record["deployment"], record["logger"], record["message"]))
        assert record["application"] == "json" and record["component_name"] == "replica"
        assert re.fullmatch(rf"json#{record['deployment']}#[0-9a-f]{{8}}", record["replica"])
        assert record["levelname"] == "INFO"
        assert record["route"] == ("/json" if record["request_id"] else "")
    assert set(by_request) == {"", *request_ids.values()}
    assert by_request[""] == [("Parent", "stdout", "parent constructed")]
    for tag, request_id in request_ids.items():
        assert sorted(by_request[request_id]) == [
            ("Child", "stdout", f"child print {tag}"), ("Child", "user", f"child log {tag}"),
            ("Parent", "stdout", f"parent print {tag}"), ("Parent", "user", f"parent log {tag}"),
        ]
    assert sorted(r["tag"] for r in records if r["message"].startswith("parent log")) == ["a", "b", "c"]
    assert [json.loads(line)["deployment"] for line in log_lines(env, app="json", deployment="Child")] == ["Child"] * 6


def test_dserve_logs_follow_shows_a_print_within_a_second(env):
    from logging_apps import Printer

    serve.run(Printer.bind(), name="follow", route_prefix="/follow")
    follow = subprocess.Popen([sys.executable, "-m", "dserve.cli", "logs", "follow", "--follow", "-a", env.rest_address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in follow.stdout], daemon=True).start()

    def next_line_with(text: str, deadline: float) -> str:
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            if text in line:
                return line

    try:
        first = next_line_with("Printer ready", time.monotonic() + 60)  # the tail: following from here on
        assert re.fullmatch(r"INFO \S+ \S+ follow_Printer [0-9a-f]{8} -- Printer ready", first)
        tag = uuid.uuid4().hex
        response = httpx.get(f"{env.http}/follow?tag={tag}")
        assert response.status_code == 200
        printed = next_line_with(f"printed {tag}", time.monotonic() + 1.0)
        request_id = response.headers["x-request-id"]
        assert re.fullmatch(rf"INFO \S+ \S+ follow_Printer [0-9a-f]{{8}} {request_id} -- printed {tag}", printed)
    finally:
        follow.terminate()
        follow.communicate(timeout=30)


def test_access_log_is_on_by_default_and_off_for_an_ingress_that_says_so(env):
    @serve.deployment
    def loud(request):
        return "loud"

    @serve.deployment(logging_config={"enable_access_log": False})
    def quiet(request):
        return "quiet"

    serve.run(loud.bind(), name="loud", route_prefix="/loud")
    serve.run(quiet.bind(), name="quiet", route_prefix="/quiet")
    quiet_id = httpx.get(f"{env.http}/quiet/x").headers["x-request-id"]
    loud_id = httpx.get(f"{env.http}/loud/x").headers["x-request-id"]  # logged after quiet's would have been
    logged = wait_for(lambda: [line for line in log_lines(env) if loud_id in line], timeout=10, what="loud's access line")
    assert len(logged) == 1
    assert re.fullmatch(rf"INFO \S+ \S+ proxy {loud_id} -- GET /loud 200 \d+\.\dms", logged[0])
    assert [line for line in log_lines(env, app="loud") if loud_id in line] == logged  # counted as the app's
    assert [line for line in log_lines(env) if quiet_id in line] == []


def test_access_log_can_be_switched_off_for_every_application(env):
    @serve.deployment
    def loud(request):
        return "loud"

    @serve.deployment
    def marker(request):
        return "marker"

    def routes():
        return httpx.get(f"{env.http}/-/routes").json()

    serve.run(loud.bind(), name="loud", route_prefix="/loud")
    try:
        serve.start(logging_config={"enable_access_log": False})
        serve.run(marker.bind(), name="marker", route_prefix="/marker")
        wait_for(lambda: "/marker" in routes(), timeout=10, what="the route table with the switch")
        off_id = httpx.get(f"{env.http}/loud").headers["x-request-id"]
    finally:
        serve.start(logging_config={"enable_access_log": True})
    serve.delete("marker")
    wait_for(lambda: "/marker" not in routes(), timeout=10, what="the route table with the access log back on")
    on_id = httpx.get(f"{env.http}/loud").headers["x-request-id"]
    assert len(wait_for(lambda: [line for line in log_lines(env) if on_id in line], timeout=10)) == 1
    assert [line for line in log_lines(env) if off_id in line] == []


def test_logging_config_from_a_config_file_through_the_rest_api(env):
    config = {"applications": [{
        "name": "cfg", "route_prefix": "/cfg", "import_path": "logging_apps:front_app",
        "logging_config": {"encoding": "JSON"},  # the application's: Front
        "deployments": [{"name": "Helper", "logging_config": {"additional_log_standard_attrs": ["funcName"]}}],
    }]}
    assert httpx.get(f"{env.rest_address}/api/serve/logs").status_code == 401  # token-protected like the rest
    bad = {"applications": [dict(config["applications"][0], logging_config={"encoding": "XML"})]}
    response = env.rest.put("/api/serve/applications/", json=bad)
    assert response.status_code == 400 and 'Got \\"XML\\" for encoding' in response.text
    assert env.rest.put("/api/serve/applications/", json=config).status_code == 200
    wait_for(lambda: serve.status().applications["cfg"].status == "RUNNING", timeout=90, what="cfg RUNNING")
    response = httpx.get(f"{env.http}/cfg?tag=z")
    assert response.text == "z"
    request_id = response.headers["x-request-id"]
    front = wait_for(lambda: log_lines(env, app="cfg", deployment="Front"), timeout=10)
    assert [(json.loads(line)["message"], json.loads(line)["request_id"]) for line in front] == [("front z", request_id)]
    helper = log_lines(env, app="cfg", deployment="Helper")
    assert len(helper) == 1
    assert re.fullmatch(rf"INFO \S+ \S+ cfg_Helper [0-9a-f]{{8}} {request_id} logging_apps\.py:\d+ -- helper z "
                        r"funcName=__call__", helper[0])
    assert env.rest.delete("/api/serve/applications/").status_code == 200


def test_logs_dir_files_rotate_with_size_and_count_bounded(env, tmp_path):
    @serve.deployment(logging_config={"logs_dir": str(tmp_path)})
    class Chatty:
        def __call__(self, request):
            for i in range(int(request.query_params["n"])):
                logging.getLogger("user").info("line %04d %s", i, "x" * 80)
            return serve.get_replica_context().replica_id

    serve.run(Chatty.bind(), name="files", route_prefix="/files")
    replica_id = httpx.get(f"{env.http}/files?n=200").text  # the lines are written before the response
    name = f"replica_files_Chatty_{replica_id.rpartition('#')[2]}.log"
    assert sorted(os.listdir(tmp_path)) == [name, f"{name}.1", f"{name}.2"]
    assert all(os.path.getsize(tmp_path / f) <= ROTATE_BYTES for f in os.listdir(tmp_path))
    last = (tmp_path / name).read_text().splitlines()[-1]
    assert last.endswith("-- line 0199 " + "x" * 80) and "files_Chatty" in last


QUIET_SCRIPT = """
import httpx
import dserve as serve
from distributed import Client, LocalCluster

@serve.deployment
def hello(request):
    print("hello printed")
    return "hello"

if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=":0") as cluster, Client(cluster):
        serve.start(http_options={"port": PORT})
        serve.run(hello.bind())
        print(httpx.get("http://127.0.0.1:PORT/").text, flush=True)
        serve.shutdown()
"""


def test_serve_run_on_a_users_local_cluster_prints_no_operational_noise(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(QUIET_SCRIPT.replace("PORT", str(free_port())))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                            env=dict(os.environ, DASK_DSERVE__REST_PORT="0"))
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "hello" in out
    assert [line for line in out if line.endswith("hello printed")] == [
        next(line for line in out if re.fullmatch(r"\(ServeReplica:default:hello pid=\d+\) hello printed", line))]
    assert [line for line in result.stderr.splitlines() if "dserve" in line or "Traceback" in line] == []


def test_ctrl_c_on_dserve_run_is_quiet_and_replica_output_is_attributed():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dserve.cli", "run", "logging_apps:printer_app", "--http-port", str(port)],
                            cwd=APPS_DIR, env=dict(os.environ, DASK_DSERVE__REST_PORT="0"), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: "queue.Queue[str]" = queue.Queue()
    reader = threading.Thread(target=lambda: [out.put(line.rstrip("\n")) for line in proc.stdout], daemon=True)
    reader.start()
    seen = []

    def wait_line(text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = out.get(timeout=max(deadline - time.monotonic(), 0.001))
            seen.append(line)
            if text in line:
                return line

    try:
        wait_line("Deployed; serving until Ctrl-C.", 120)
        # once, under the full suite's load, the very first connection was dropped unanswered
        # (not understood; see issue #18's notes): this test is about output, so it retries that
        answer = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/?tag=t1").json(), timeout=30,
                          what="the first answer from `dserve run`'s proxy")
        assert wait_line("printed t1", 10) == f"(ServeReplica:default:Printer pid={answer['pid']}) printed t1"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        proc.wait(timeout=60)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert re.search(rf"^\(ServeReplica:default:Printer pid={answer['pid']}\) INFO \S+ \S+ default_Printer "
                     rf"[0-9a-f]{{8}} [0-9a-f]{{32}} logging_apps\.py:\d+ -- logged t1$", err, re.MULTILINE), err
    assert "Traceback" not in err and "long poll failed" not in err, err
    reader.join(timeout=10)  # it ends with the pipe
    seen += list(out.queue)
    assert seen[-1] == "Shutting down.", seen
