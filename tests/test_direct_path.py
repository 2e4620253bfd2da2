"""The proxy's task-less path (``proxy.direct``): what it answers itself, and that every
case it hands to the ASGI path is answered the same (streams, queues, errors, pipelining,
large bodies, 100-continue, forwarded headers, clients that leave)."""
import asyncio
import socket
import time

import httpx
import pytest
from distributed import Client
from starlette.requests import Request
from starlette.responses import StreamingResponse

import dserve as serve
from dserve.proxy.server import PROXY_PLUGIN_NAME
from dserve.runtime import current_runtime
from conftest import proxy_details, proxy_url, wait_for


@pytest.fixture(scope="module")
def http(serve_instance):
    with httpx.Client(base_url=proxy_url(), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def dask_client(serve_instance):
    with Client(current_runtime().scheduler_address) as client:
        yield client


def deploy(http, app, name: str) -> None:
    """Run ``app`` at ``/name`` and make its first request (the proxy learns its replicas then)."""
    serve.run(app, name=name, route_prefix=f"/{name}")
    assert http.get(f"/{name}", params={"s": "0"}).status_code == 200


def direct_counts(dask_client) -> tuple:
    """(answered, handed_over) of the proxy's direct path."""
    worker = [p["worker"] for p in proxy_details().values()][0]

    def read(dask_worker):
        direct = dask_worker.plugins[PROXY_PLUGIN_NAME].proxy.direct
        return direct.answered, direct.handed_over

    return dask_client.run(read, workers=[worker])[worker]


@serve.deployment
class Echo:
    async def __call__(self, request: Request):
        body = await request.body()
        if request.query_params.get("fail"):
            raise ValueError("asked to fail")
        if request.query_params.get("stream"):
            async def chunks():
                for i in range(3):
                    yield f"chunk{i};"
            return StreamingResponse(chunks(), media_type="text/plain")
        return {"len": len(body), "client": request.client.host, "path": request.url.path}


def test_plain_requests_are_answered_without_a_task(http, dask_client, clean):
    deploy(http, Echo.bind(), "echo")
    answered, handed = direct_counts(dask_client)
    for i in range(20):
        r = http.post("/echo/x", content=b"a" * i)
        assert r.status_code == 200 and r.json()["len"] == i and r.json()["path"] == "/echo/x"
    answered2, handed2 = direct_counts(dask_client)
    assert (answered2 - answered, handed2 - handed) == (20, 0)


def test_user_error_is_500_with_request_id(http, dask_client, clean):
    deploy(http, Echo.bind(), "echo")
    r = http.get("/echo?fail=1", headers={"x-request-id": "rid-42"})
    assert r.status_code == 500
    assert "ValueError: asked to fail" in r.text
    assert r.headers["x-request-id"] == "rid-42"


def test_streamed_response_is_handed_over_whole(http, dask_client, clean):
    deploy(http, Echo.bind(), "echo")
    _, handed = direct_counts(dask_client)
    r = http.get("/echo?stream=1")
    assert r.status_code == 200 and r.text == "chunk0;chunk1;chunk2;"
    assert direct_counts(dask_client)[1] == handed + 1


def test_pipelined_requests_answer_in_order(http, clean):
    deploy(http, Echo.bind(), "echo")
    port = int(str(http.base_url).rsplit(":", 1)[1].rstrip("/"))
    requests = b"".join(
        b"POST /echo/%d HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n\r\n%s" % (i, i, b"z" * i) for i in range(1, 4))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(requests)
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
            received += sock.recv(65536)
    bodies = [part for part in received.split(b"\r\n\r\n")[1:]]
    assert received.count(b"HTTP/1.1 200") == 3
    assert [b'"len":%d' % i in body for i, body in zip(range(1, 4), bodies)] == [True, True, True]


def test_large_body_streams_to_the_app(http, clean):
    deploy(http, Echo.bind(), "echo")
    r = http.post("/echo", content=b"b" * (1 << 20))
    assert r.status_code == 200 and r.json()["len"] == 1 << 20


def test_expect_100_continue(http, clean):
    deploy(http, Echo.bind(), "echo")
    port = int(str(http.base_url).rsplit(":", 1)[1].rstrip("/"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        received = b""
        deadline = time.monotonic() + 10
        while b'"len":5' not in received and time.monotonic() < deadline:
            received += sock.recv(65536)
    assert b"HTTP/1.1 200" in received and b'"len":5' in received


def test_forwarded_headers_reach_the_app(http, clean):
    deploy(http, Echo.bind(), "echo")
    r = http.get("/echo", headers={"x-forwarded-for": "10.1.2.3"})
    assert r.status_code == 200 and r.json()["client"] == "10.1.2.3"


def test_head_request_has_no_body(http, clean):
    deploy(http, Echo.bind(), "echo")
    r = http.head("/echo")
    assert r.status_code == 200 and r.content == b""


@serve.deployment(max_ongoing_requests=1, max_queued_requests=2)
class Slow:
    def __init__(self):
        self.started = 0

    async def __call__(self, request: Request):
        if request.url.path.endswith("/started"):
            return {"started": self.started}
        self.started += 1
        await asyncio.sleep(float(request.query_params.get("s", "0.3")))
        body = await request.body()
        return f"done {body.decode()}" if body else "done"


def test_queued_requests_are_sent_as_slots_free(http, dask_client, clean):
    deploy(http, Slow.options(max_queued_requests=-1).bind(), "slow")
    answered, _ = direct_counts(dask_client)

    async def burst():
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=30) as client:
            return await asyncio.gather(*[client.get("/slow?s=0.1") for _ in range(6)])

    assert [r.status_code for r in asyncio.run(burst())] == [200] * 6
    assert direct_counts(dask_client)[0] - answered == 6


def test_full_queue_is_503_and_a_leaving_client_frees_its_place(http, clean):
    deploy(http, Slow.bind(), "slow")

    async def scenario():
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=30) as client:
            running = asyncio.ensure_future(client.get("/slow?s=2"))  # takes the one slot
            await asyncio.sleep(0.3)
            for _ in range(2):  # two clients queue, then give up
                with pytest.raises(httpx.ReadTimeout):
                    await client.get("/slow?s=0.1", timeout=0.3)
            # their places are free again: two more queue (a third would be 503)
            queued = [asyncio.ensure_future(client.get("/slow?s=0.1")) for _ in range(2)]
            await asyncio.sleep(0.3)
            over = await client.get("/slow?s=0.1")
            return over.status_code, [r.status_code for r in await asyncio.gather(running, *queued)]

    over, codes = asyncio.run(scenario())
    assert over == 503
    assert codes == [200, 200, 200]


def test_deleting_a_deployment_answers_its_queued_requests(http, clean):
    deploy(http, Slow.options(max_queued_requests=-1).bind(), "slow")

    async def scenario():
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=30) as client:
            calls = [asyncio.ensure_future(client.get("/slow?s=3")) for _ in range(3)]
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, serve.delete, "slow")
            responses = await asyncio.gather(*calls)
            return [r.status_code for r in responses], time.monotonic() - started

    codes, took = asyncio.run(scenario())
    assert sorted(codes) == [200, 503, 503]  # the running one finishes (graceful shutdown), the queued are told
    assert took < 20
    wait_for(lambda: http.get("/slow").status_code == 404, timeout=10, what="the route gone")


def test_a_long_queue_whose_slot_cannot_be_used_is_handed_on_without_recursion():
    """Queued requests given a slot whose link is not up (a replica on a worker not yet
    connected) are each handed to the ASGI path, a loop turn later: a queue of 2,000 does not
    recurse through the router's dispatch, and the slot ends free."""
    from types import SimpleNamespace

    from dserve.context import RequestContext
    from dserve.proxy.direct import DirectExchange
    from dserve.routing.router import ReplicaSlot, Router
    from dserve.routing.transport import MuxConnection

    class Connection:  # the HTTP side: records what is handed to the ASGI path
        exchange = None

        def __init__(self, handed: list) -> None:
            self.handed = handed

        def start_held(self, cycle) -> None:
            self.handed.append(cycle)

    async def scenario():
        never_connected = MuxConnection("tcp://127.0.0.1:1")  # its link is not up
        runtime = SimpleNamespace(channel=lambda slot: never_connected, report_queued=lambda router: None)
        router = Router(runtime, "app", "dep", track=False)
        slot = ReplicaSlot("r1", "tcp://127.0.0.1:1", "k1", 1)
        router.slots, slot.in_flight = [slot], 1  # busy: the requests queue
        router._ready.set()
        handler = SimpleNamespace(proxy=SimpleNamespace(forwarded_scope=lambda scope, route: {}),
                                  recorder=SimpleNamespace(begin=lambda: 0.0), answered=0, handed_over=0)
        handed: list = []
        for i in range(2000):
            cycle = SimpleNamespace(scope={"path": "/", "headers": []}, body=bytearray())
            exchange = DirectExchange(handler, Connection(handed), cycle, router, ("/", "app", "dep"),
                                      RequestContext(f"r{i}", "/", "app", ""))
            exchange.begin()
            assert router.enqueue(exchange)
        router.release(slot)  # the running call ends: the slot goes to the queue
        for _ in range(5000):
            if len(handed) == 2000:
                break
            await asyncio.sleep(0)
        return len(handed), len(router.waiters), slot.in_flight, handler.handed_over

    assert asyncio.run(scenario()) == (2000, 0, 0, 2000)


@serve.deployment(max_ongoing_requests=1)
class OneAtATime:
    async def __call__(self, request: Request):
        kind = request.query_params.get("kind", "plain")
        if kind == "fail":
            raise RuntimeError("boom")
        if kind == "stream":
            async def chunks():
                for i in range(int(request.query_params.get("n", "3"))):
                    await asyncio.sleep(0.05)
                    yield f"{i};"
            return StreamingResponse(chunks(), media_type="text/plain")
        return "plain"


def test_the_replica_frees_its_one_slot_after_every_kind_of_answer(http, clean):
    """With ``max_ongoing_requests=1`` any slot the replica kept would stall the next request:
    complete, failed, streamed and abandoned streams each give it back."""
    deploy(http, OneAtATime.bind(), "one")
    for _ in range(3):
        assert http.get("/one", params={"kind": "fail"}).status_code == 500
        assert http.get("/one", params={"kind": "stream"}).text == "0;1;2;"
        assert http.get("/one").text == "plain"
    with httpx.Client(base_url=str(http.base_url), timeout=30) as client:
        with client.stream("GET", "/one", params={"kind": "stream", "n": "200"}) as response:
            assert next(response.iter_text()).startswith("0;")  # then the client leaves mid-stream
    started = time.monotonic()
    assert http.get("/one", timeout=10).text == "plain"
    assert time.monotonic() - started < 5


def test_stopping_the_proxy_answers_its_held_requests_in_their_turn(http, dask_client, clean):
    """uvicorn's graceful shutdown waits for connections, then cancels its tasks after 2 s. A
    stopping proxy turns the requests its direct path holds into tasks, and a queued one keeps
    its place in the queue, also ahead of a request the ASGI path queued after it: here A runs,
    B (direct), C (ASGI path: an X-Forwarded-For header, 8 s) and D (direct) wait. B is answered,
    with its body, within the grace period; C is cut at its end (500), D with it; nothing
    outlives the stop."""
    deploy(http, Slow.options(max_queued_requests=-1).bind(), "slow")
    worker = [p["worker"] for p in proxy_details().values()][0]
    _, handed_over = direct_counts(dask_client)

    async def stop_proxy(dask_worker):
        await dask_worker.plugins[PROXY_PLUGIN_NAME].stop()

    def stop() -> float:
        started = time.monotonic()
        dask_client.run(stop_proxy, workers=[worker])
        return time.monotonic() - started

    async def scenario():
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=30) as client:
            calls = []
            for s, headers in (("0.5", {}), ("0.5", {}), ("8", {"x-forwarded-for": "10.0.0.1"}), ("0.5", {})):
                calls.append(asyncio.ensure_future(client.post(f"/slow?s={s}", headers=headers, content=f"body-{s}")))
                await asyncio.sleep(0.1)  # in this order
            counts = direct_counts(dask_client)
            started = time.monotonic()
            stopping = await asyncio.get_running_loop().run_in_executor(None, stop)
            responses = await asyncio.gather(*calls, return_exceptions=True)
            return counts, stopping, time.monotonic() - started, [
                (r.status_code, r.text) if isinstance(r, httpx.Response) else repr(r) for r in responses]

    (_, handed_before_stop), stopping, took, answers = asyncio.run(scenario())
    assert handed_before_stop == handed_over  # A, B and D were still the direct path's
    assert answers == [(200, "done body-0.5"), (200, "done body-0.5"),  # B's body too, sent after its task took over
                       (500, "Internal Server Error"), (500, "Internal Server Error")]
    assert stopping < 5 and took < 5  # the 8-second request did not hold the stop
    wait_for(lambda: httpx.get(f"{proxy_url()}/slow?s=0", timeout=5).status_code == 200, timeout=60,
             what="the proxy restarted by the controller")
