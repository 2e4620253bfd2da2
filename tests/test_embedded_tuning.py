"""The embedded cluster runs Dask's background work at serving rates (``cluster.SERVING_DASK_CONFIG``),
keeping whatever the user set themselves."""
import os

import dask
import pytest
from distributed import Client

import dserve as serve
from dserve.cluster import SERVING_DASK_CONFIG
from dserve.runtime import current_runtime
from conftest import free_port


@pytest.fixture(scope="module")
def tuned():
    os.environ["DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"] = "50ms"  # the user's own choice: kept
    try:
        with dask.config.set({"distributed.admin.tick.interval": "50ms"}):
            serve.start(http_options={"port": free_port()})
        with Client(current_runtime().scheduler_address) as client:
            yield client
    finally:
        os.environ.pop("DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL", None)
        serve.shutdown()


def test_workers_and_nannies_run_at_serving_rates_but_keep_user_settings(tuned):
    def _settings() -> dict:  # defined here: shipped by value to the workers
        import dask as _dask

        return {key: _dask.config.get(key) for key in (
            "distributed.worker.profile.enabled", "distributed.admin.tick.interval",
            "distributed.worker.memory.monitor-interval", "distributed.admin.system-monitor.interval",
            "distributed.admin.event-loop")}

    expected = {
        "distributed.worker.profile.enabled": False,
        "distributed.admin.tick.interval": "50ms",  # set by the user
        "distributed.worker.memory.monitor-interval": "500ms",
        "distributed.admin.system-monitor.interval": "2s",
        "distributed.admin.event-loop": "uvloop",
    }
    workers = tuned.run(_settings)
    assert len(workers) >= 2
    assert all(found == expected for found in workers.values()), workers
    nannies = tuned.run(_settings, nanny=True)
    assert all(found == expected for found in nannies.values()), nannies
    assert set(expected) == set(SERVING_DASK_CONFIG)


def test_the_schedulers_background_work_is_tuned_too(tuned):
    def intervals(dask_scheduler):
        return {name: pc.callback_time for name, pc in dask_scheduler.periodic_callbacks.items()
                if name in ("monitor", "tick")}

    found = tuned.run_on_scheduler(intervals)
    assert found == {"monitor": 2000, "tick": 50}  # ms: ours for the system monitor, the user's tick


def test_every_process_runs_uvloop(tuned):
    def loop_type() -> str:
        import asyncio as _asyncio

        return type(_asyncio.get_running_loop()).__module__

    async def on_worker() -> str:  # a coroutine: runs on the worker's event loop
        return loop_type()

    workers = tuned.run(on_worker)
    assert len(workers) >= 2
    assert set(workers.values()) == {"uvloop"}, workers
    assert set(tuned.run(on_worker, nanny=True).values()) == {"uvloop"}

    async def on_scheduler(dask_scheduler) -> str:
        return loop_type()
    assert tuned.run_on_scheduler(on_scheduler) == "uvloop"
