"""Durable state: a state file that cannot be read is moved aside (never lost) and reported;
a restart brings back the proxy options and the last good version of an application that was
being rebuilt, then finishes the rebuild.

Each test runs its own embedded cluster with a state path (Dask config ``dserve.state-path``);
a restart is the scheduler and its workers closed without ``serve.shutdown()`` (which would
delete the applications), then a new embedded cluster on the same state file.
"""
import json
import os
import re
import time

import dask
import httpx
import pytest

import dserve as serve
from conftest import free_port, make_apps_importable, proxy_details, wait_for
from dserve.controller import checkpoint



@pytest.fixture
def workers_import_test_apps(monkeypatch):
    """Worker subprocesses (and this process) can import tests/apps."""
    make_apps_importable(monkeypatch)


def start(state_path, **options):
    with dask.config.set({"dserve.state-path": str(state_path)}):
        serve.start(**options)


def crash():
    """The scheduler and its workers go away; nothing is deleted."""
    from dserve import cluster as _cluster
    from dserve.api import _sync
    from dserve.runtime import current_runtime, set_runtime

    runtime = current_runtime()
    _sync(runtime, runtime.close())
    set_runtime(None)
    owned, serve.api._owned_cluster = serve.api._owned_cluster, None
    _cluster.close_embedded_cluster(owned)


def rpc(op, **kwargs):
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    rt = current_runtime()
    return _sync(rt, rt.rpc(op, **kwargs))


def test_garbage_state_file_is_moved_aside_and_reported(tmp_path):
    path = tmp_path / "state.pkl"
    garbage = b"garbage, not a checkpoint\x00\xff"
    path.write_bytes(garbage)
    before = int(time.time())
    start(path, http_options={"port": free_port()})
    try:
        moved = [p for p in tmp_path.iterdir() if p.name != "state.pkl"]
        assert [p.name for p in moved] == [f"state.pkl.corrupt-{moved[0].name.rsplit('-', 1)[1]}"]
        stamp = int(re.fullmatch(r"state\.pkl\.corrupt-(\d+)", moved[0].name).group(1))
        assert before <= stamp <= int(time.time())
        assert moved[0].read_bytes() == garbage  # not lost
        status = serve.status()
        assert status.checkpoint_message == (
            f"the state file {path} could not be read (UnpicklingError: pickle data was truncated); "
            f"it was moved to {moved[0]} and the controller started with no applications")
        assert status.applications == {}
        assert rpc("dserve_status")["restored_from_checkpoint"] is False

        @serve.deployment
        def hello():
            return "hello"

        serve.run(hello.bind(), name="after", route_prefix=None)  # the next change writes a good file
        assert [spec.name for spec in checkpoint.load(str(path))["apps"]] == ["after"]
        assert moved[0].read_bytes() == garbage
    finally:
        serve.shutdown()


def test_a_state_file_of_an_unknown_format_is_moved_aside_too(tmp_path):
    path = tmp_path / "state.pkl"
    checkpoint.save(str(path), {"apps": []})
    data = path.read_bytes().replace(b"format", b"formaT")  # a valid pickle without our format tag
    path.write_bytes(data)
    start(path, http_options={"port": free_port()})
    try:
        moved = [p for p in tmp_path.iterdir() if p.name != "state.pkl"]
        assert len(moved) == 1 and moved[0].read_bytes() == data
        assert serve.status().checkpoint_message == (
            f"the state file {path} could not be read (unknown format None (this dserve reads format 1)); "
            f"it was moved to {moved[0]} and the controller started with no applications")
    finally:
        serve.shutdown()


def test_checkpoint_write_leaves_only_the_state_file(tmp_path):
    path = tmp_path / "state.pkl"
    checkpoint.save(str(path), {"apps": ["one"]})
    checkpoint.save(str(path), {"apps": ["two"]})
    assert os.listdir(tmp_path) == ["state.pkl"]  # the temporary file was renamed over it
    assert checkpoint.load(str(path)) == {"format": 1, "apps": ["two"]}


def config(version, gate=None):
    args = {"version": version, **({"gate": gate} if gate else {})}
    return {"applications": [{"name": "kept", "route_prefix": "/kept", "import_path": "gated_apps:builder",
                              "args": args}]}


@pytest.mark.slow
def test_restart_restores_proxy_options_and_the_last_good_version_while_rebuilding(tmp_path,
                                                                                  workers_import_test_apps):
    path = tmp_path / "state.pkl"
    gate = str(tmp_path / "gate")
    port = free_port()
    start(path, http_options={"port": port})
    try:
        assert [p["port"] for p in wait_for(lambda: [p for p in proxy_details().values()
                                                     if p["status"] == "HEALTHY"])] == [port]
        assert rpc("dserve_deploy_config", config=config("v1")) == {"ok": True}
        wait_for(lambda: serve.status().applications["kept"].status == "RUNNING", timeout=60, what="v1 RUNNING")
        assert httpx.get(f"http://127.0.0.1:{port}/kept", timeout=10).text == "v1"
        assert rpc("dserve_deploy_config", config=config("v2", gate)) == {"ok": True}  # its build waits
        saved = checkpoint.load(str(path))
        assert [spec.name for spec in saved["apps"]] == ["kept"]  # before: left out while building
        assert saved["apps"][0].source["full_config"]["args"] == {"version": "v1"}
        assert json.loads(json.dumps(saved["declarative"]["config"])) == config("v2", gate)
        assert saved["proxy_options"]["http_options"]["port"] == port
        crash()

        start(path)  # no proxy options given: the ones set before the restart stand
        assert rpc("dserve_status")["restored_from_checkpoint"] is True
        assert [p["port"] for p in wait_for(lambda: [p for p in proxy_details().values()
                                                     if p["status"] == "HEALTHY"], timeout=60)] == [port]
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/kept", timeout=10).text == "v1", timeout=60,
                 what="the last good version served again")
        status = serve.status().applications["kept"]
        assert (status.status, status.message) == ("DEPLOYING", "Building the application from its import path.")
        open(gate, "w").close()
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/kept", timeout=10).text == "v2", timeout=60,
                 what="the rebuild to finish")
        wait_for(lambda: serve.status().applications["kept"].status == "RUNNING", timeout=60, what="v2 RUNNING")
    finally:
        serve.shutdown()
