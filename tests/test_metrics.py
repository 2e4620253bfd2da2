"""Ray Serve's metrics at Dask's /metrics: exact counts, Ray's names and labels, user metrics."""
from __future__ import annotations

import httpx
import pytest

import dserve as serve
from dserve.metrics import Counter, Gauge, Histogram
from conftest import proxy_url, scrape_all, value, wait_for


@serve.deployment
class Scorer:
    def __init__(self):
        self.scored = Counter("scored_items", description="Items scored.", tag_keys=("kind",))
        self.scored.set_default_tags({"kind": "plain"})
        self.size = Histogram("item_size", boundaries=[1, 10, 100], tag_keys=())
        self.last = Gauge("last_score", tag_keys=())

    def __call__(self, x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        self.scored.inc()
        self.scored.inc(2, tags={"kind": "double"})
        self.size.observe(x)
        self.last.set(x)
        return 2 * x


@serve.deployment
class Front:
    def __init__(self, scorer):
        self.scorer = scorer

    async def __call__(self, request):
        return {"score": await self.scorer.remote(int(request.query_params["x"]))}


@pytest.fixture(scope="module")
def traffic(serve_instance):
    serve.run(Front.bind(Scorer.bind()), name="metrics", route_prefix="/m")
    url = proxy_url()
    with httpx.Client(timeout=30) as http:
        codes = [http.get(f"{url}/m", params={"x": x}).status_code for x in [1, 2, 3, 4, 5, 6, 7, -1, -2, -3]]
    assert codes == [200] * 7 + [500] * 3
    scorer = serve.get_deployment_handle("Scorer", "metrics")
    assert [scorer.remote(x).result() for x in (10, 20)] == [20, 40]
    with pytest.raises(ValueError):
        scorer.remote(-5).result()
    yield
    serve.delete("metrics")


def test_proxy_counts_every_http_request_with_rays_labels(traffic):
    samples = wait_for(lambda: (s := scrape_all()) and value(
        s, "ray_serve_num_http_requests_total", application="metrics") == 10 and s, timeout=30, what="the counts")
    assert value(samples, "ray_serve_num_http_requests_total", application="metrics", route="/m", method="GET",
                 status_code="200") == 7
    assert value(samples, "ray_serve_num_http_requests_total", application="metrics", status_code="500") == 3
    assert value(samples, "ray_serve_num_http_error_requests_total", application="metrics", route="/m",
                 error_code="500", method="GET") == 3
    assert value(samples, "ray_serve_http_request_latency_ms_count", application="metrics") == 10
    assert value(samples, "ray_serve_http_request_latency_ms_bucket", application="metrics", le="+Inf") == 10
    assert value(samples, "ray_serve_num_ongoing_http_requests") == 0


def test_replicas_count_requests_and_errors_per_deployment(traffic):
    samples = scrape_all()
    # Front: 10 HTTP requests, 3 answered 500; Scorer: 10 from Front + 3 by handle, 4 raised
    assert value(samples, "ray_serve_deployment_request_counter_total", deployment="Front", application="metrics",
                 route="/m") == 10
    assert value(samples, "ray_serve_deployment_error_counter_total", deployment="Front", application="metrics") == 3
    assert value(samples, "ray_serve_deployment_request_counter_total", deployment="Scorer") == 13
    assert value(samples, "ray_serve_deployment_error_counter_total", deployment="Scorer") == 4
    assert value(samples, "ray_serve_deployment_processing_latency_ms_count", deployment="Scorer") == 13
    assert value(samples, "ray_serve_deployment_replica_starts_total", deployment="Scorer", application="metrics") == 1
    assert value(samples, "ray_serve_deployment_replica_healthy", deployment="Scorer") == 1
    assert value(samples, "ray_serve_replica_processing_queries", deployment="Scorer") == 0
    assert value(samples, "ray_serve_num_router_requests_total", deployment="Scorer", application="metrics") == 13
    assert value(samples, "ray_serve_deployment_queued_queries", deployment="Scorer") == 0


def test_user_metrics_carry_the_replica_tags(traffic):
    samples = scrape_all()
    tags = {"application": "metrics", "deployment": "Scorer"}
    assert value(samples, "ray_scored_items_total", kind="plain", **tags) == 9  # 7 + 2 successful calls
    assert value(samples, "ray_scored_items_total", kind="double", **tags) == 18
    assert value(samples, "ray_item_size_count", **tags) == 9
    assert value(samples, "ray_item_size_bucket", le="10.0", **tags) == 8  # 1..7 and 10 (le means <=); not 20
    assert value(samples, "ray_last_score", **tags) == 20
    replica = [dict(ls)["replica"] for (n, ls) in samples if n == "ray_scored_items_total"]
    assert replica and all(r.startswith("metrics#Scorer#") for r in replica)


def test_the_controller_reports_replicas_and_status(traffic):
    samples = scrape_all()
    assert value(samples, "ray_serve_autoscaling_target_replicas", deployment="Scorer", application="metrics") == 1
    assert value(samples, "ray_serve_deployment_running_replicas", deployment="Scorer", application="metrics") == 1
    assert value(samples, "ray_serve_application_status", application="metrics", status="RUNNING") == 1
    assert value(samples, "ray_serve_application_status", application="metrics", status="DEPLOYING") == 0
    assert value(samples, "ray_serve_controller_num_control_loops_total") > 0


def test_user_metric_arguments_are_checked():
    with pytest.raises(ValueError, match="'replica' tag is reserved"):
        Counter("bad_metric", tag_keys=("replica",))
    counter = Counter("checked_metric", tag_keys=("a",))
    with pytest.raises(ValueError, match=r"Missing value for tag keys \['a'\]"):
        counter.inc()
    with pytest.raises(ValueError, match="value must be > 0"):
        counter.inc(0, tags={"a": "x"})
