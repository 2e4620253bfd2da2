"""Status for people: ``dserve status --table`` / ``-o json``, notebook HTML of
``serve.status()`` and handles, informative reprs, and where the Serve page is logged."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

import dserve as serve
from conftest import free_port
from dserve.api import _sync
from dserve.runtime import current_runtime


@serve.deployment(num_replicas=2)
class Model:
    def __call__(self, x):
        return x * 2


@serve.deployment
class Front:
    def __init__(self, model):
        self.model = model

    async def __call__(self, request=None):
        return await self.model.remote(21)

    def fail(self):
        raise ValueError("no")

    async def slow(self, seconds):
        import asyncio

        await asyncio.sleep(seconds)
        return "slept"

    def count(self, n):
        yield from range(n)


@pytest.fixture(scope="module")
def app(serve_instance):
    handle = serve.run(Front.bind(Model.bind()), name="views", route_prefix="/views")
    yield handle
    serve.delete("views")


def cli(*args: str) -> str:
    rest_port = _sync(current_runtime(), current_runtime().rpc("dserve_status"))["rest_port"]
    result = subprocess.run([sys.executable, "-m", "dserve.cli", "status", "-a", f"http://127.0.0.1:{rest_port}", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_status_table_json_and_yaml(app):
    assert cli("--table") == textwrap.dedent("""\
        APPLICATION / DEPLOYMENT  STATUS   REPLICAS   ROUTE   MESSAGE
        views                     RUNNING             /views
          Front                   HEALTHY  RUNNING 1
          Model                   HEALTHY  RUNNING 2

        PROXY      STATUS
        127.0.0.1  HEALTHY
        """)
    as_json = json.loads(cli("-o", "json"))
    assert as_json == yaml.safe_load(cli())  # the same content as Ray's YAML
    views = as_json["applications"]["views"]
    assert (views["status"], views["message"]) == ("RUNNING", "")
    assert views["deployments"] == {
        "Model": {"status": "HEALTHY", "status_trigger": "CONFIG_UPDATE_COMPLETED", "replica_states": {"RUNNING": 2},
                  "message": ""},
        "Front": {"status": "HEALTHY", "status_trigger": "CONFIG_UPDATE_COMPLETED", "replica_states": {"RUNNING": 1},
                  "message": ""},
    }
    assert as_json["proxies"] == {"127.0.0.1": "HEALTHY"}


def test_handle_and_response_reprs(app):
    assert repr(app) == "DeploymentHandle(deployment='Front', app='views', method='__call__')"
    assert repr(app.options(method_name="count", stream=True)) == (
        "DeploymentHandle(deployment='Front', app='views', method='count', stream=True)")
    slow = app.slow.remote(1.0)
    assert repr(slow) == (f"DeploymentResponse(deployment='Front', app='views', method='slow', state='pending', "
                          f"request_id={slow.request_id!r})")
    assert slow.result(timeout_s=30) == "slept"
    assert repr(slow).endswith(f"method='slow', state='done', request_id={slow.request_id!r})")
    failed = app.fail.remote()
    with pytest.raises(ValueError):
        failed.result(timeout_s=30)
    assert repr(failed).endswith(f"method='fail', state='failed', request_id={failed.request_id!r})")
    stream = app.options(stream=True).count.remote(3)
    assert list(stream) == [0, 1, 2]
    assert repr(stream) == (f"DeploymentResponseGenerator(deployment='Front', app='views', method='count', "
                            f"state='finished', request_id={stream.request_id!r})")


def test_notebook_html(app):
    page = app._repr_html_()
    assert "<h4>DeploymentHandle</h4>" in page
    assert ("<tr><th>Deployment</th><td>Front</td></tr><tr><th>Application</th><td>views</td></tr>"
            "<tr><th>Method</th><td>__call__</td></tr>") in page
    assert ('<tr><td>views</td><td class="ok"><b>RUNNING</b></td><td></td><td>/views</td><td></td></tr>'
            '<tr><td>&nbsp;&nbsp;Front</td><td class="ok"><b>HEALTHY</b></td><td>RUNNING 1</td><td></td><td></td></tr>'
            '<tr><td>&nbsp;&nbsp;Model</td><td class="ok"><b>HEALTHY</b></td><td>RUNNING 2</td>') in page
    assert "Serve page: <a href=\"http://127.0.0.1:" in page
    status = serve.status()._repr_html_()
    assert "<h4>dserve status</h4>" in status and "<td>&nbsp;&nbsp;Model</td>" in status
    assert "<p>Proxies: 127.0.0.1 <b>HEALTHY</b></p>" in status


def test_start_logs_where_the_serve_page_is_once(tmp_path):
    script = textwrap.dedent(f"""\
        import logging
        logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
        import dserve as serve
        from dserve import api
        serve.start(http_options={{"port": {free_port()}}})
        serve.start()
        print("PORT", api._owned_cluster.scheduler.http_server.port)
        serve.shutdown()
    """)
    env = dict(os.environ, DASK_DSERVE__REST_PORT="0", DSERVE_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    port = int(result.stdout.split("PORT ")[1])
    url = f"http://127.0.0.1:{port}/serve"
    lines = [line for line in result.stderr.splitlines() if "Serve page" in line]
    assert lines == [f"dserve dserve's Serve page: {url} (open it once as {url}?token=<token>; the token is in "
                     f"DSERVE_AUTH_TOKEN or {tmp_path}/auth_token)"]
    with open(tmp_path / "auth_token") as f:
        assert f.read().strip() not in result.stderr
