"""A standalone cluster: `dask scheduler --preload dserve` plus `dask worker` processes."""
import os
import signal
import subprocess
import sys
import time

import pytest

import dserve as serve
from conftest import free_port, wait_for


@serve.deployment(num_replicas=2, max_replicas_per_node=None)
class WhereAmI:
    def __call__(self):
        return os.getpid()


@serve.deployment
class Front:
    def __init__(self, back):
        self.back = back

    async def __call__(self):
        return await self.back.remote()


def _spawn(args):
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="warning")
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def standalone_cluster():
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [_spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                     "--dashboard-address", ":0", "--preload", "dserve", "--dserve-http-port", str(free_port())])]
    try:
        for _ in range(2):
            procs.append(_spawn(["distributed.cli.dask_worker", address, "--nthreads", "4", "--no-nanny",
                                 "--host", "127.0.0.1"]))
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, procs
    finally:
        serve.shutdown()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_preload_controller_and_run_with_address(standalone_cluster):
    address, procs = standalone_cluster
    start = time.monotonic()
    h = serve.run(Front.bind(WhereAmI.bind()), address=address)
    assert time.monotonic() - start < 30
    pids = {h.remote().result() for _ in range(30)}
    worker_pids = {p.pid for p in procs[1:]}
    assert pids <= worker_pids and len(pids) == 2  # spread over both workers


@pytest.mark.slow
def test_killing_a_worker_keeps_the_app_answering(standalone_cluster):
    address, procs = standalone_cluster
    h = serve.run(Front.bind(WhereAmI.bind()), address=address)
    victim = procs[2]
    victim.kill()
    victim.wait()
    # calls keep succeeding (in-flight ones may fail with a typed error, then retries land on live replicas)
    def answered_by_survivor():
        try:
            return h.remote().result(timeout_s=10) != victim.pid
        except serve.exceptions.ActorDiedError:
            return False
    wait_for(answered_by_survivor, timeout=60, what="the app to answer after a worker died")
    ok = sum(1 for _ in range(20) if h.remote().result(timeout_s=10))
    assert ok == 20
    wait_for(lambda: serve.status().applications["default"].deployments["WhereAmI"].replica_states.get("RUNNING") == 2,
             timeout=60, what="the lost replica to be replaced")
