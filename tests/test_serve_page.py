"""The Serve page on the Dask scheduler's dashboard server: its routes, its token, its data,
and the page itself in a real headless Chromium under load."""
import asyncio
import os
import threading
import time

import dask
import httpx
import pytest
from distributed import Scheduler

import dserve as serve
from cdp import Browser, chromium_path
from conftest import wait_for
from dserve import api
from dserve.auth import load_token
from dserve.controller.traffic import Traffic, quantile
from dserve.dashboard import handlers
from dserve.dashboard.handlers import COOKIE_NAME, cookie_value, install_serve_page, serve_page_url

ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")


def page_base() -> str:
    return f"http://127.0.0.1:{api._owned_cluster.scheduler.http_server.port}"


def page_data() -> dict:
    response = httpx.get(page_base() + "/serve/api/status", headers={"Authorization": f"Bearer {load_token()}"})
    assert response.status_code == 200, response.text
    return response.json()


def proxy_port() -> int:
    return next(p["port"] for p in page_data()["status"]["proxy_details"].values() if p["status"] == "HEALTHY")


def test_quantiles_interpolate_inside_histogram_buckets():
    assert quantile(0.5, [2, 2, 0, 0], [1, 2, 5]) == 1.0
    assert quantile(0.99, [2, 2, 0, 0], [1, 2, 5]) == pytest.approx(1.98)
    assert quantile(0.5, [0, 0, 0, 3], [1, 2, 5]) == 5.0  # over the last bound: the bound
    assert quantile(0.5, [0, 0, 0, 0], [1, 2, 5]) is None


def test_traffic_buckets_increments_per_deployment():
    traffic = Traffic(bucket_s=2.0, history_s=10.0, bounds=[1, 2, 5])
    traffic.report({"app#d#r1": [4, 1, 2, 2, 0, 0]}, now=100.5)
    traffic.report({"app#d#r1": [6, 1, 2, 4, 0, 0]}, now=101.0)  # +2 requests, both in (1, 2] ms
    traffic.report({"app#d#r2": [1, 0, 0, 0, 1, 0]}, now=103.0)
    series = traffic.series("app#d", now=106.0)
    assert series["requests"] == 7 and series["errors"] == 1 and series["bucket_s"] == 2.0
    assert series["points"] == [
        [100.0, 3.0, 0.5, 1.25, pytest.approx(1.985)],
        [102.0, 0.5, 0.0, 3.5, pytest.approx(4.97)],
        [104.0, 0.0, 0.0, None, None],
    ]
    traffic.report({"app#d#r1": [1, 0, 1, 0, 0, 0]}, now=106.5)  # a restarted count starts over
    assert traffic.series("app#d", now=108.0)["requests"] == 8
    traffic.report({"app#e#r3": [0, 0, 0, 0, 0, 0]}, now=120.0)  # everything of app#d is out of the window
    assert list(traffic.buckets) == ["app#e"] and list(traffic.last) == ["app#e#r3"]
    assert traffic.series("app#d", now=120.0) == {"bucket_s": 2.0, "points": [], "requests": 0, "errors": 0}


async def _bare_scheduler(routes_config: bool) -> tuple:
    """A scheduler without dserve: the routes answer 503; returns what the test checks."""
    routes = list(dask.config.get("distributed.scheduler.http.routes"))
    if routes_config:
        routes.append("dserve.dashboard")
    with dask.config.set({"distributed.scheduler.http.routes": routes}):
        async with Scheduler(host="127.0.0.1", port=0, dashboard=False, dashboard_address="127.0.0.1:0",
                             http_prefix="/dask") as scheduler:
            app = scheduler.http_application
            rules = len(app.default_router.rules)
            assert install_serve_page(scheduler) is True
            assert install_serve_page(scheduler) is True  # once only
            added = len(app.default_router.rules) - rules
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{scheduler.http_server.port}/dask/serve/api/status")
            url = f"http://127.0.0.1:{scheduler.http_server.port}/dask/serve"
            return added, app in handlers._installed, response.status_code, response.json(), serve_page_url(scheduler) == url


@pytest.mark.parametrize("routes_config", [False, True])
def test_routes_under_the_dashboard_prefix_from_config_or_at_runtime(routes_config):
    added, installed, code, body, url_ok = asyncio.run(_bare_scheduler(routes_config))
    # listed in Dask's route config, the scheduler already serves them: nothing is added
    assert (added, installed) == ((0, False) if routes_config else (1, True))
    assert (code, body, url_ok) == (503, {"error": "dserve is not running on this scheduler"}, True)


def test_page_and_api_need_the_token(serve_instance):
    token, base = load_token(), page_base()
    page = httpx.get(base + "/serve")
    assert page.status_code == 401 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "/serve?token=&lt;token&gt;" in page.text and token not in page.text
    api_answer = httpx.get(base + "/serve/api/status")
    assert api_answer.status_code == 401
    assert api_answer.json()["error"].startswith("missing or wrong token: send 'Authorization: Bearer <token>'")
    wrong = httpx.get(base + "/serve?token=not-the-token")
    assert (wrong.status_code, wrong.headers.get("set-cookie")) == (401, None)
    assert httpx.get(base + "/serve/api/status", cookies={COOKIE_NAME: token}).status_code == 401  # not the token

    login = httpx.get(base + f"/serve?token={token}")
    assert (login.status_code, login.headers["location"]) == (302, "/serve")
    assert login.headers["set-cookie"] == f"{COOKIE_NAME}={cookie_value(token)}; HttpOnly; Path=/serve; SameSite=Strict"
    with httpx.Client(base_url=base, cookies={COOKIE_NAME: cookie_value(token)}) as browser_like:
        page = browser_like.get("/serve")
        assert page.status_code == 200 and token not in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'none'; script-src 'nonce-")
        assert page.headers["cache-control"] == "no-store"
        assert browser_like.get("/serve/api/status").status_code == 200
    assert page_data()["status"]["applications"] == {}


@serve.deployment(num_replicas=2)
class Flaky:
    def __call__(self, request):
        if request.query_params.get("fail"):
            raise ValueError("asked to fail")
        return "ok"


def test_status_api_reports_state_and_exact_traffic(serve_instance):
    serve.run(Flaky.bind(), name="traffic", route_prefix="/traffic")
    url = f"http://127.0.0.1:{proxy_port()}/traffic"
    with httpx.Client(timeout=30) as client:
        codes = [client.get(url).status_code for _ in range(30)] + [client.get(url + "?fail=1").status_code
                                                                    for _ in range(3)]
    assert codes == [200] * 30 + [500] * 3

    def counted() -> dict:
        series = page_data()["traffic"]["traffic#Flaky"]
        complete = sum(round(p[1] * series["bucket_s"]) for p in series["points"])
        return series if (series["requests"], complete) == (33, 33) else {}

    series = wait_for(counted, timeout=20, what="33 requests in complete buckets")
    assert series["errors"] == 3 and sum(round(p[2] * series["bucket_s"]) for p in series["points"]) == 3
    latencies = [(p[3], p[4]) for p in series["points"] if p[3] is not None]
    assert latencies and all(0 < p50 <= p99 for p50, p99 in latencies)

    data = page_data()
    app = data["status"]["applications"]["traffic"]
    assert (app["status"], app["route_prefix"], app["ingress"]) == ("RUNNING", "/traffic", "Flaky")
    dep = app["deployments"]["Flaky"]
    assert (dep["status"], dep["target_replicas"], dep["replica_states"]) == ("HEALTHY", 2, {"RUNNING": 2})
    replicas = data["details"]["applications"]["traffic"]["deployments"]["Flaky"]["replicas"]
    workers = set(api._owned_cluster.scheduler.workers)
    assert len(replicas) == 2 and {r["worker_id"] for r in replicas} <= workers
    live = [data["replicas"][r["replica_id"]] for r in replicas]
    assert [(r["ongoing"], r["health_failures"]) for r in live] == [(0, 0), (0, 0)]
    assert [p["status"] for p in data["status"]["proxy_details"].values()] == ["HEALTHY"]
    assert data["refresh_s"] == 2.0 and data["history_s"] == 300.0
    serve.delete("traffic")


@serve.deployment
class Echo:
    def __call__(self, request):
        time.sleep(0.002)
        return "echo"


def _bounded_load(url: str, stop: threading.Event, sent: list) -> None:
    """GETs until ``stop`` (at most 4000 requests or 90 s)."""
    deadline = time.monotonic() + 90
    with httpx.Client(timeout=30) as client:
        while not stop.is_set() and len(sent) < 4000 and time.monotonic() < deadline:
            sent.append(client.get(url).status_code)


def test_page_in_chromium_shows_live_traffic(serve_instance, tmp_path):
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    serve.run(Echo.bind(), name="live", route_prefix="/live")
    token, stop, sent = load_token(), threading.Event(), []
    load = threading.Thread(target=_bounded_load, args=(f"http://127.0.0.1:{proxy_port()}/live", stop, sent))
    load.start()
    browser = Browser()
    try:
        browser.navigate(page_base() + f"/serve?token={token}")
        wait_for(lambda: browser.evaluate("location.pathname + ' ' + document.readyState") == "/serve complete",
                 timeout=20, what="the page, without the token in its address")
        browser.evaluate("window.loadedOnce = true")  # gone if the page reloaded
        first = wait_for(lambda: browser.evaluate("document.getElementById('updated').textContent")
                         .startswith("updated "), timeout=20, what="the first refresh")
        rate = wait_for(lambda: float(browser.evaluate(
            "(document.querySelector('.rate[data-key=\"live#Echo\"]') || {textContent: '0'}).textContent") or 0) > 0
            and browser.evaluate("document.querySelector('.rate[data-key=\"live#Echo\"]').textContent"),
            timeout=30, what="a live request rate for live#Echo")
        assert float(rate) > 0 and first
        wait_for(lambda: len([p for p in page_data()["traffic"]["live#Echo"]["points"] if p[1] > 0]) >= 3,
                 timeout=30, what="three buckets with traffic (lines in the screenshot)")
        shown = browser.evaluate("document.getElementById('updated').textContent")
        wait_for(lambda: browser.evaluate("document.getElementById('updated').textContent") != shown,
                 timeout=10, what="one more refresh (it draws them)")
        assert browser.evaluate("document.querySelector('#apps tbody').innerText") == "live\tRUNNING\t/live\tEcho\t—"
        assert browser.evaluate("document.querySelector('#deployments tbody').innerText") == (
            "live\tEcho\tHEALTHY\t1\t1\t0\tfixed\t—")
        replica = browser.evaluate("document.querySelector('#replicas tbody tr').innerText").split("\t")
        assert (replica[1], replica[3], replica[5]) == ("live / Echo", "RUNNING", "healthy")
        assert browser.evaluate("document.querySelectorAll('#charts canvas').length") == 2
        assert browser.evaluate("window.loadedOnce === true && performance.getEntriesByType('navigation').length")
        assert browser.evaluate("document.cookie") == ""  # HttpOnly
        assert token not in browser.evaluate("document.documentElement.outerHTML")
        png = browser.screenshot(str(tmp_path / "serve_page.png"))
        os.makedirs(ARTIFACTS, exist_ok=True)
        browser.screenshot(os.path.join(ARTIFACTS, "serve_page.png"))
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert browser.errors() == []
    finally:
        browser.close()
        stop.set()
        load.join()
    assert sent and set(sent) == {200}
    serve.delete("live")


def test_dasks_navigation_links_to_the_serve_page_when_bokeh_is_installed():
    """Dask's Bokeh pages (status, workers, ...) get a "Serve" link in their navigation bar.
    Bokeh is not a test dependency: this runs where it is installed (checked by hand with bokeh
    3.9.2)."""
    pytest.importorskip("bokeh")

    async def main():
        async with Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0") as scheduler:
            assert install_serve_page(scheduler) is True
            async with httpx.AsyncClient() as client:
                page = await client.get(f"http://127.0.0.1:{scheduler.http_server.port}/status")
            return page.status_code, page.text

    status, text = asyncio.run(main())
    assert status == 200
    assert text.count('<a href="serve">Serve</a>') == 1
