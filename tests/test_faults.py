"""Fault injection on real processes, with exact request accounting."""
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

import dserve as serve
from conftest import free_port, HTTPLoad, make_apps_importable, wait_for

pytestmark = pytest.mark.slow


class Cluster:
    """`dask scheduler --preload dserve` and `dask worker` processes we started (and only those)."""

    def __init__(self, tmp_path, workers=2):
        self.port = free_port()
        self.http_port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.state_path = str(tmp_path / "dserve-state.pkl")
        self.env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="warning",
                        DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL="5s")
        self.scheduler = None
        self.workers = []
        self.start_scheduler()
        for _ in range(workers):
            self.add_worker()
        self.wait_workers(workers)

    def _spawn(self, args):
        return subprocess.Popen([sys.executable, "-m", *args], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_scheduler(self):
        self.scheduler = self._spawn([
            "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port),
            "--dashboard-address", ":0", "--preload", "dserve", "--dserve-http-port", str(self.http_port),
            "--dserve-rest-port", "-1", "--dserve-state-path", self.state_path])

    def add_worker(self):
        self.workers.append(self._spawn(["distributed.cli.dask_worker", self.address, "--nthreads", "4",
                                         "--no-nanny", "--host", "127.0.0.1"]))

    def wait_workers(self, n):
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(n, timeout=60)
            return client.run(os.getpid)  # address -> pid

    def stop(self):
        for p in [*self.workers, self.scheduler]:
            if p is not None and p.poll() is None:
                p.kill()
        for p in [*self.workers, self.scheduler]:
            if p is not None:
                p.wait(10)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    serve.shutdown()
    c.stop()


@serve.deployment(num_replicas=2, max_ongoing_requests=8)
class Work:
    def __call__(self, request=None):
        time.sleep(0.01)
        return os.getpid()

    def crash(self):
        os._exit(1)


def test_kill_9_a_replica_worker_under_load(cluster):
    serve.run(Work.bind(), address=cluster.address, route_prefix="/work")
    pids = cluster.wait_workers(2)
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    rt = current_runtime()
    proxy_addr = next(iter(_sync(rt, rt.rpc("dserve_status"))["proxy_details"].values()))["worker"]
    victim_pid = next(pid for addr, pid in pids.items() if addr != proxy_addr)
    url = f"http://127.0.0.1:{cluster.http_port}/work"
    load = HTTPLoad(url)
    wait_for(lambda: load.ok > 200, timeout=30, what="load to run")
    os.kill(victim_pid, signal.SIGKILL)
    before = load.ok
    wait_for(lambda: load.ok > before + 300, timeout=60, what="requests to keep succeeding after the kill")
    load.stop()
    # only requests executing on the killed replica may fail (at most its max_ongoing_requests)
    assert len(load.failures) <= 8, load.failures
    assert all(code == 500 and "ActorDiedError" in text for code, text in load.failures), load.failures
    wait_for(lambda: serve.status().applications["default"].deployments["Work"].replica_states.get("RUNNING") == 2,
             timeout=60, what="the lost replica replaced")


def test_os_exit_inside_a_replica_fails_only_that_call(cluster):
    h = serve.run(Work.options(num_replicas=1).bind(), address=cluster.address, route_prefix=None)
    with pytest.raises(serve.exceptions.ActorDiedError):
        h.crash.remote().result(timeout_s=30)
    wait_for(lambda: h.remote().result(timeout_s=10), timeout=60, what="a replacement replica to answer")


def test_proxy_is_reelected_when_its_worker_dies(cluster):
    serve.run(Work.bind(), address=cluster.address, route_prefix="/work")
    pids = cluster.wait_workers(2)
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    rt = current_runtime()
    details = lambda: _sync(rt, rt.rpc("dserve_status"))["proxy_details"]  # noqa: E731
    first = next(iter(details().values()))["worker"]
    url = f"http://127.0.0.1:{cluster.http_port}/work"
    # serve.run returns once the application is RUNNING; the proxy learns its route a moment later
    wait_for(lambda: httpx.get(url, timeout=5).status_code == 200, timeout=30, what="the route at the proxy")
    os.kill(pids[first], signal.SIGKILL)
    wait_for(lambda: any(d["worker"] != first and d["status"] == "HEALTHY" for d in details().values()),
             timeout=60, what="a new proxy elected")
    wait_for(lambda: httpx.get(url, timeout=5).status_code == 200, timeout=60, what="HTTP served again")


def test_scheduler_restart_restores_applications(cluster):
    serve.run(Work.options(user_config=None).bind(), address=cluster.address, name="kept", route_prefix="/kept")
    url = f"http://127.0.0.1:{cluster.http_port}/kept"
    assert httpx.get(url).status_code == 200
    from dserve.api import _sync
    from dserve.runtime import current_runtime, set_runtime

    _sync(current_runtime(), current_runtime().close())  # this driver lets go; the apps stay deployed
    set_runtime(None)
    cluster.scheduler.send_signal(signal.SIGTERM)
    cluster.scheduler.wait(30)
    for w in cluster.workers:  # workers do not survive their scheduler
        w.wait(30)
    cluster.workers = []
    cluster.start_scheduler()
    for _ in range(2):
        cluster.add_worker()
    cluster.wait_workers(2)
    serve.start(address=cluster.address)
    wait_for(lambda: serve.status().applications.get("kept") is not None, timeout=30, what="the app restored")
    rt = current_runtime()
    assert _sync(rt, rt.rpc("dserve_status"))["restored_from_checkpoint"] is True
    wait_for(lambda: serve.status().applications["kept"].status == "RUNNING", timeout=60, what="RUNNING again")
    wait_for(lambda: httpx.get(url, timeout=5).status_code == 200, timeout=60, what="HTTP served again")




def _greeter_config(*names):
    return {"applications": [{"name": n, "route_prefix": f"/{n}", "import_path": "config_apps:greeter_app"}
                             for n in names]}


def _rpc(op, **kwargs):
    from dserve.api import _sync
    from dserve.runtime import current_runtime

    rt = current_runtime()
    return _sync(rt, rt.rpc(op, **kwargs))


def _let_go():
    """This driver lets go of the cluster (the applications stay deployed)."""
    from dserve.api import _sync
    from dserve.runtime import current_runtime, set_runtime

    _sync(current_runtime(), current_runtime().close())
    set_runtime(None)


def test_kill_9_of_the_scheduler_mid_deploy_loses_no_running_application(tmp_path, monkeypatch):
    """The scheduler SIGKILLed at several moments of a deploy (right away, while building, while
    replicas start, about when they run): after each restart on the same state file the
    application that had reached RUNNING is back and answering, and any application the
    checkpoint caught mid-deploy finishes deploying."""
    make_apps_importable(monkeypatch)
    cluster = Cluster(tmp_path, workers=1)
    try:
        serve.start(address=cluster.address)
        assert _rpc("dserve_deploy_config", config=_greeter_config("kept")) == {"ok": True}
        wait_for(lambda: serve.status().applications["kept"].status == "RUNNING", timeout=60, what="kept RUNNING")
        url = f"http://127.0.0.1:{cluster.http_port}"
        assert httpx.get(f"{url}/kept", timeout=10).json()["text"] == "hello"
        for k, delay in enumerate([0.0, 0.2, 0.5, 1.0]):
            assert _rpc("dserve_deploy_config", config=_greeter_config("kept", f"new{k}")) == {"ok": True}
            _let_go()
            time.sleep(delay)  # the moment of the kill within the deploy
            for p in [cluster.scheduler, *cluster.workers]:
                p.kill()
            for p in [cluster.scheduler, *cluster.workers]:
                p.wait(30)
            cluster.workers = []
            cluster.start_scheduler()
            cluster.add_worker()
            cluster.wait_workers(1)
            serve.start(address=cluster.address)
            wait_for(lambda: serve.status().applications.get("kept") is not None, timeout=30,
                     what=f"kept restored after the kill at {delay}s")
            wait_for(lambda: all(a.status == "RUNNING" for a in serve.status().applications.values()), timeout=90,
                     what=f"every restored application RUNNING after the kill at {delay}s")
            wait_for(lambda: httpx.get(f"{url}/kept", timeout=5).status_code == 200, timeout=60,
                     what="kept answering again")
            assert httpx.get(f"{url}/kept", timeout=10).json()["text"] == "hello"
            assert set(serve.status().applications) <= {"kept", f"new{k}"}
    finally:
        serve.shutdown()
        cluster.stop()
