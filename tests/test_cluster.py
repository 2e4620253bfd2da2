"""A standalone cluster: `dask scheduler --preload dserve` plus `dask worker` processes."""
import os
import signal
import subprocess
import sys
import time

import pytest

import dserve as serve
from dserve.exceptions import ActorDiedError
from conftest import free_port, proxy_details, wait_for


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

    def pid(self):
        return os.getpid()


def _spawn(args):
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="warning")
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def standalone_cluster():
    """A scheduler with dserve preloaded and two workers, for one test (a test may kill a worker)."""
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
    from distributed import Client

    with Client(address, timeout=30) as client:
        proxy_pid = client.run(os.getpid)[next(iter(proxy_details().values()))["worker"]]
    # isolated placement: the proxy keeps its worker to itself; with no third worker, Front and
    # WhereAmI share the other one (another deployment, rather than the proxy's process)
    assert pids == {h.pid.remote().result()} == worker_pids - {proxy_pid}


@pytest.mark.slow
def test_killing_a_worker_keeps_the_app_answering(standalone_cluster):
    address, procs = standalone_cluster
    h = serve.run(Front.bind(WhereAmI.bind()), address=address)
    front_pid = h.pid.remote().result(timeout_s=10)
    victim, survivor = sorted(procs[1:], key=lambda p: p.pid != front_pid)  # the worker hosting Front dies
    victim.kill()
    victim.wait()
    try:
        answer = h.remote().result(timeout_s=30)  # waits for Front's replacement
    except ActorDiedError:  # it was already on its way to the dead worker: the one allowed failure
        answer = h.remote().result(timeout_s=30)
    assert answer == survivor.pid
    assert [h.remote().result(timeout_s=10) for _ in range(20)] == [survivor.pid] * 20
    wait_for(lambda: serve.status().applications["default"].deployments["WhereAmI"].replica_states == {"RUNNING": 2},
             timeout=60, what="the lost replica to be replaced")
    assert [h.remote().result(timeout_s=10) for _ in range(20)] == [survivor.pid] * 20
