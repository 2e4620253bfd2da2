"""Nothing of a deleted application outlives it (issue #14: memory grew with deploy/delete
cycles in a soak). After ``serve.delete`` the controller's tables keyed by its application,
deployments and replicas hold no entry for it, and no worker keeps its replicas' metric
series (built-in and ``dserve.metrics`` user metrics), log sinks, actors, routers or the
proxy's request series for it; over further cycles every such table stays exactly as big
as after the first."""
import pytest
from distributed import Client

import dserve as serve
from conftest import proxy_url, wait_for

pytestmark = pytest.mark.slow  # a few deploy/delete cycles on a real cluster: ~30-60 s

APP = "leaky"


@serve.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 2, "initial_replicas": 2,
                                      "upscale_delay_s": 0, "downscale_delay_s": 0, "look_back_period_s": 0.5})
class Backend:
    def __init__(self):
        from dserve.metrics import Counter

        self.calls = Counter("cleanup_test_calls", description="calls", tag_keys=("kind",))

    async def __call__(self, x):
        self.calls.inc(tags={"kind": "backend"})
        print("backend called")
        return x + 1


@serve.deployment
class Front:
    def __init__(self, backend):
        from dserve.metrics import Gauge

        self.backend = backend
        self.last = Gauge("cleanup_test_last", description="last answer")

    async def __call__(self, request=None):
        answer = await self.backend.remote(1)
        self.last.set(answer)
        return str(answer)


def controller():
    """The controller object (the embedded cluster's scheduler runs in this process)."""
    return serve.api._owned_cluster.scheduler.plugins["dserve-controller"]


def controller_entries(app):
    """Every entry the controller keeps under the application, its deployments or replicas."""
    c, prefix = controller(), app + "#"
    return {
        "apps": [n for n in c.store.apps if n == app],
        "load.running": [k for k in c.metrics.running if k.startswith(prefix)],
        "load.samples": [k for k in c.metrics.samples if k.startswith(prefix)],
        "load.queued": [k for k in c.metrics.queued if k[0].startswith(prefix)],
        "load.custom": [k for k in [*c.metrics.custom, *c.metrics.custom_errors] if k.startswith(prefix)],
        "traffic.buckets": [k for k in c.traffic.buckets if k.startswith(prefix)],
        "traffic.last": [k for k in c.traffic.last if k.startswith(prefix)],
        "decisions": [k for k in c.telemetry.decisions.values if k[1] == app],
        "ledger": [k for tenants in c.ledger.tenants.values() for k in tenants if k.startswith(prefix)],
        "unplaceable": [k for k in c.coupling.unplaceable if k.startswith(prefix)],
        "backoff": [k for k in c.reconciler._backoff if k.startswith(prefix)],
    }


def controller_sizes():
    c = controller()
    return {"apps": len(c.store.apps), "load.running": len(c.metrics.running), "load.samples": len(c.metrics.samples),
            "load.queued": len(c.metrics.queued), "traffic.buckets": len(c.traffic.buckets),
            "decisions": len(c.telemetry.decisions.values), "ledger": sum(map(len, c.ledger.tenants.values())),
            "unplaceable": len(c.coupling.unplaceable)}


def worker_state(app, dask_worker):
    """In one worker: how many entries of ``app`` it keeps, and the sizes of its tables."""
    from dserve import metrics
    from dserve.actors.replica_metrics import _LiveReplicas
    from dserve.logs import sinks
    from dserve.routing.router_metrics import _routers
    from dserve.runtime import current_runtime

    user = tables = 0
    user_total = table_total = 0
    for metric in list(metrics._user_metrics.values()):
        position = metric._labelnames.index("application")
        keys = list(metric._metrics)
        user_total += len(keys)
        user += sum(1 for k in keys if k[position] == app)
    for table in list(metrics._collector.tables if metrics._collector is not None else []):
        keys = list(getattr(table, "series", None) or table.values)
        table_total += len(keys)
        if "application" in table.labels:
            position = table.labels.index("application")
            tables += sum(1 for k in keys if k[position] == app)
    runtime = current_runtime()
    routers = dict(runtime.routers) if runtime is not None else {}
    return {
        "user_series": user,
        "table_series": tables,
        "sinks": sum(1 for s in list(sinks._sinks.values()) if s.app == app),
        "actors": sum(1 for key in list(dask_worker.state.actors) if f"-{app}#" in key),
        "live_replicas": sum(1 for r in list(_LiveReplicas.replicas) if r.app == app),
        "routers": sum(1 for (a, _) in routers if a == app),
        "tracked_routers": sum(1 for r in list(_routers) if r.app == app),
        "sizes": {"user_series": user_total, "table_series": table_total, "sinks": len(sinks._sinks),
                  "stopped_sinks": len(sinks._stopped), "routers": len(routers), "actors": len(dask_worker.state.actors),
                  "tracked_routers": len(_routers)},
    }


def on_workers(app):
    """``worker_state`` summed over every worker (sizes: per worker)."""
    with Client(serve.api._owned_cluster.scheduler_address, timeout=30) as client:
        per_worker = client.run(worker_state, app)
    total = {k: sum(s[k] for s in per_worker.values()) for k in next(iter(per_worker.values())) if k != "sizes"}
    return total, {w: s["sizes"] for w, s in per_worker.items()}


def deploy_and_use(url):
    serve.run(Front.bind(Backend.bind()), name=APP, route_prefix=f"/{APP}")
    # the autoscaler takes Backend down to 1: a decision counted, a replica stopped and forgotten
    wait_for(lambda: controller_entries(APP)["decisions"], timeout=60, what="a downscale decision")
    wait_for(lambda: len(controller().store.apps[APP].deployments["Backend"].replicas) == 1, timeout=60,
             what="Backend down to one replica")
    import httpx

    for _ in range(5):
        assert httpx.get(f"{url}/{APP}", timeout=30).text == "2"


def test_a_deleted_application_leaves_nothing_behind(serve_instance):
    url = proxy_url()
    sizes = None
    for cycle in range(3):
        deploy_and_use(url)
        # what the application has while it lives: the checks below look in the right places
        wait_for(lambda: controller_entries(APP)["traffic.buckets"], what="traffic reported")
        live, _ = on_workers(APP)
        assert live["user_series"] == 2  # Front's gauge and the one Backend replica's counter
        assert live["sinks"] == 2 and live["actors"] == 2 and live["live_replicas"] == 2
        assert live["routers"] == 2  # the proxy's to Front, Front's process's to Backend
        assert live["table_series"] > 0

        serve.delete(APP)
        assert APP not in serve.status().applications
        assert controller_entries(APP) == {k: [] for k in controller_entries(APP)}
        # routers and the proxy's series go when the long poll tells their process
        try:
            wait_for(lambda: not any(on_workers(APP)[0].values()), timeout=30, what=f"every worker forgetting {APP}")
        finally:  # exactly nothing (and what is left, if anything is)
            assert on_workers(APP)[0] == {"user_series": 0, "table_series": 0, "sinks": 0, "actors": 0,
                                          "live_replicas": 0, "routers": 0, "tracked_routers": 0}
        now = (controller_sizes(), on_workers(APP)[1])
        for per_worker in now[1].values():
            per_worker.pop("stopped_sinks")  # bounded ring of the last LOG_RINGS_KEPT_STOPPED stopped ones
        if sizes is None:
            sizes = now
        else:  # every table exactly as big as after the first cycle
            assert now == sizes, f"cycle {cycle}"
