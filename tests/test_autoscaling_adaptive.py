"""Dask's cluster following replicas: Adaptive adds a worker for replicas that do not fit.

Its own module: it needs a dserve instance on a LocalCluster of its own, so it
shuts down any other instance of this process, which no other test here shares.
"""
import pytest

import dserve as serve
from conftest import free_port, wait_for


@pytest.mark.slow
def test_adaptive_dask_cluster_follows_replicas():
    """A deployment needing more CPUs than the cluster has makes Adaptive add a
    worker; when it scales down, the extra worker goes away and replica hosts stay."""
    from distributed import LocalCluster

    serve.shutdown()
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    adaptive = cluster.adapt(minimum=1, maximum=3, interval="200ms", wait_count=2)
    try:
        serve.start(address=cluster.scheduler_address, http_options={"port": free_port()},
                    proxy_location="Disabled")

        @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1})
        class Wide:
            def __call__(self):
                return "ok"

        from dserve import api
        from dserve.build import application_spec
        from dserve.runtime import get_runtime

        api.deploy_specs(get_runtime(), [application_spec(Wide.bind(), "wide", None)])
        wait_for(lambda: len(cluster.scheduler_info["workers"]) >= 2, timeout=60, what="a second worker")
        wait_for(lambda: serve.status().applications["wide"].status == "RUNNING", timeout=60, what="RUNNING")
        serve.run(Wide.options(num_replicas=1).bind(), name="wide", route_prefix=None)
        wait_for(lambda: len(cluster.scheduler_info["workers"]) == 1, timeout=60, what="the extra worker retired")
        assert serve.get_app_handle("wide").remote().result(timeout_s=30) == "ok"
    finally:
        serve.shutdown()
        adaptive.stop()
        cluster.close()
