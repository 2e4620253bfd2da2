"""A controller that cannot boot answers every call with the reason, instead of hanging."""
from __future__ import annotations

import cloudpickle
import dask
import pytest
from distributed import LocalCluster

import dserve as serve
from dserve.exceptions import RayServeException


def test_a_controller_that_cannot_boot_says_why(tmp_path):
    state = tmp_path / "state.pkl"
    state.write_bytes(cloudpickle.dumps({"format": 1, "apps": [42]}))  # unpickles, but not to specs
    with dask.config.set({"dserve.state-path": str(state), "dserve.rest-port": -1}):
        with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
            with pytest.raises(RayServeException, match="the dserve controller failed to start: AttributeError"):
                serve.start(address=cluster.scheduler_address)
            serve.shutdown()
