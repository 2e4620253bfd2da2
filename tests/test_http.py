"""HTTP ingress through real proxies (uvicorn on a worker) with a real HTTP client."""
import asyncio
import time

import httpx
import pytest
from fastapi import Depends, FastAPI, WebSocket
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

import dserve as serve
from dserve.context import get_request_context
from conftest import proxy_url, wait_for


@pytest.fixture(scope="module")
def http(serve_instance):
    proxies = serve.status().proxies
    assert list(proxies.values()) == ["HEALTHY"]
    with httpx.Client(base_url=proxy_url(), timeout=30) as client:
        yield client


class Echo(BaseModel):
    text: str


@serve.deployment
class Reflect:
    async def __call__(self, request: Request):
        body = await request.body()
        return {
            "method": request.method,
            "path": request.url.path,
            "query": dict(request.query_params),
            "header": request.headers.get("x-custom"),
            "body": body.decode(),
            "request_id": get_request_context().request_id,
            "model_id": get_request_context().multiplexed_model_id,
        }


@serve.deployment
def returns(request: Request):
    kind = request.query_params["kind"]
    return {
        "str": "plain text",
        "bytes": b"raw bytes",
        "list": [1, 2, 3],
        "model": Echo(text="hi"),
        "response": PlainTextResponse("custom", status_code=201, headers={"x-extra": "1"}),
    }[kind]


def test_plain_deployment_sees_the_request(http, clean):
    serve.run(Reflect.bind(), name="r", route_prefix="/reflect")
    r = http.post("/reflect/sub/path?a=1&b=2", content=b"payload", headers={"x-custom": "yes"})
    assert r.status_code == 200
    data = r.json()
    assert data == {
        "method": "POST", "path": "/reflect/sub/path", "query": {"a": "1", "b": "2"},
        "header": "yes", "body": "payload", "request_id": r.headers["x-request-id"], "model_id": "",
    }


def test_request_id_and_model_id_headers(http, clean):
    serve.run(Reflect.bind(), name="r", route_prefix="/reflect")
    r = http.get("/reflect", headers={"x-request-id": "my-id-1", "serve_multiplexed_model_id": "m7"})
    assert r.headers["x-request-id"] == "my-id-1"
    assert r.json()["request_id"] == "my-id-1" and r.json()["model_id"] == "m7"


def test_return_value_conversion(http, clean):
    serve.run(returns.bind(), name="ret", route_prefix="/ret")
    r = http.get("/ret", params={"kind": "str"})
    assert (r.text, r.headers["content-type"].split(";")[0]) == ("plain text", "text/plain")
    assert http.get("/ret", params={"kind": "bytes"}).content == b"raw bytes"
    r = http.get("/ret", params={"kind": "list"})
    assert r.json() == [1, 2, 3] and r.headers["content-type"] == "application/json"
    assert http.get("/ret", params={"kind": "model"}).json() == {"text": "hi"}
    r = http.get("/ret", params={"kind": "response"})
    assert (r.status_code, r.text, r.headers["x-extra"]) == (201, "custom", "1")


def test_routing_longest_prefix_404_routes_and_health(http, clean):
    @serve.deployment
    def name_a(request):
        return "a"

    @serve.deployment
    def name_b(request):
        return "b"

    serve.run(name_a.bind(), name="a", route_prefix="/x")
    serve.run(name_b.bind(), name="b", route_prefix="/x/y")
    assert http.get("/x/z").text == "a"
    assert http.get("/x/y/z").text == "b"
    assert http.get("/x").text == "a"
    r = http.get("/nope")
    assert r.status_code == 404 and "/nope" in r.text
    assert http.get("/-/routes").json() == {"/x": "a", "/x/y": "b"}
    r = http.get("/-/healthz")
    assert (r.status_code, r.text) == (200, "success")


app = FastAPI()


class Item(BaseModel):
    name: str
    price: float


def dependency(q: str = "default"):
    return q.upper()


@serve.deployment
@serve.ingress(app)
class Shop:
    def __init__(self, tax: float):
        self.tax = tax

    @app.get("/items/{item_id}")
    def get_item(self, item_id: int, q: str = Depends(dependency)):
        return {"id": item_id, "q": q}

    @app.post("/items")
    async def create(self, item: Item):
        return {"name": item.name, "total": item.price * (1 + self.tax)}


def test_fastapi_ingress(http, clean):
    serve.run(Shop.bind(0.5), name="shop", route_prefix="/shop")
    assert http.get("/shop/items/3", params={"q": "zz"}).json() == {"id": 3, "q": "ZZ"}
    assert http.post("/shop/items", json={"name": "a", "price": 2}).json() == {"name": "a", "total": 3.0}
    assert http.post("/shop/items", json={"name": "a"}).status_code == 422
    assert http.get("/shop/items/notanint").status_code == 422
    docs = http.get("/shop/docs")
    assert docs.status_code == 200 and "/shop/openapi.json" in docs.text
    assert set(http.get("/shop/openapi.json").json()["paths"]) == {"/items/{item_id}", "/items"}


def test_starlette_ingress(http, clean):
    async def hello(request):
        return JSONResponse({"hello": request.path_params["name"]})

    star = Starlette(routes=[Route("/hello/{name}", hello)])

    @serve.deployment
    @serve.ingress(star)
    class Star:
        pass

    serve.run(Star.bind(), name="star", route_prefix="/star")
    assert http.get("/star/hello/bob").json() == {"hello": "bob"}


def test_composition_over_http(http, clean):
    @serve.deployment
    class Model:
        def __call__(self, x):
            return x * 10

    @serve.deployment
    class Front:
        def __init__(self, model):
            self.model = model

        async def __call__(self, request: Request):
            return {"result": await self.model.remote(int(request.query_params["x"]))}

    serve.run(Front.bind(Model.bind()), name="comp", route_prefix="/comp")
    assert http.get("/comp", params={"x": 4}).json() == {"result": 40}


def test_streaming_response_is_not_buffered(http, clean):
    @serve.deployment
    class Stream:
        async def __call__(self, request):
            async def gen():
                yield "first\n"
                await asyncio.sleep(1.0)
                yield "second\n"
            return StreamingResponse(gen(), media_type="text/event-stream")

    serve.run(Stream.bind(), name="stream", route_prefix="/stream")
    start = time.monotonic()
    arrivals = []
    with http.stream("GET", "/stream") as r:
        for line in r.iter_lines():
            if line:
                arrivals.append((line, time.monotonic() - start))
    assert [a[0] for a in arrivals] == ["first", "second"]
    assert arrivals[0][1] < 0.8 and arrivals[1][1] >= 1.0


def test_sync_generator_endpoint_streams(http, clean):
    @serve.deployment
    def numbers(request):
        for i in range(3):
            yield f"{i},"

    serve.run(numbers.bind(), name="gen", route_prefix="/gen")
    assert http.get("/gen").text == "0,1,2,"


def test_user_exception_is_500_and_proxy_keeps_serving(http, clean):
    @serve.deployment
    def broken(request):
        raise ValueError("bad thing happened")

    serve.run(broken.bind(), name="broken", route_prefix="/broken")
    serve.run(Reflect.bind(), name="ok", route_prefix="/ok")
    r = http.get("/broken")
    assert r.status_code == 500 and "bad thing happened" in r.text
    assert http.get("/ok").status_code == 200


def test_overload_is_503(http, clean):
    @serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
    class Slow:
        async def __call__(self, request):
            await asyncio.sleep(1.0)
            return "done"

    serve.run(Slow.bind(), name="slow", route_prefix="/slow")

    async def burst():
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=30) as client:
            return await asyncio.gather(*[client.get("/slow") for _ in range(5)])

    codes = sorted(r.status_code for r in asyncio.run(burst()))
    assert codes.count(200) == 2 and codes.count(503) == 3


def test_client_disconnect_cancels_the_request(http, clean):
    @serve.deployment
    class Watcher:
        def __init__(self):
            self.cancelled = 0

        async def __call__(self, request: Request):
            if request.url.path.endswith("/count"):
                return {"cancelled": self.cancelled}
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return "finished"

    serve.run(Watcher.bind(), name="w", route_prefix="/w")
    with pytest.raises(httpx.ReadTimeout):
        http.get("/w/sleep", timeout=0.5)
    wait_for(lambda: http.get("/w/count").json()["cancelled"] == 1, timeout=10, what="cancellation in the replica")


def test_malformed_http_does_not_break_the_proxy(http, clean):
    import socket

    serve.run(Reflect.bind(), name="r", route_prefix="/reflect")
    host, port = http.base_url.host, http.base_url.port
    with socket.create_connection((host, port)) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        s.settimeout(5)
        reply = b""
        while chunk := s.recv(1024):  # the proxy closes the connection after its 400
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    assert body == b"Invalid HTTP request received."
    assert http.get("/reflect").status_code == 200


ws_app = FastAPI()


@serve.deployment(num_replicas=2)
@serve.ingress(ws_app)
class Chat:
    def __init__(self):
        self.replica = serve.get_replica_context().replica_id

    @ws_app.websocket("/ws")
    async def ws(self, websocket: WebSocket):
        await websocket.accept()
        while True:
            text = await websocket.receive_text()
            if text == "bye":
                await websocket.close()
                return
            await websocket.send_text(f"{text}@{self.replica}")


def test_websockets_through_a_fastapi_ingress(http, clean):
    import websockets.sync.client as ws_client
    from websockets.exceptions import ConnectionClosedOK

    serve.run(Chat.bind(), name="chat", route_prefix="/chat")
    url = str(http.base_url).replace("http://", "ws://").rstrip("/") + "/chat/ws"
    replicas = set()
    for session in range(30):  # until both replicas answered (each session lands on a random one)
        with ws_client.connect(url) as conn:
            for word in ("a", "b"):
                conn.send(f"{word}{session}")
                text, replica = conn.recv(timeout=10).split("@")
                assert text == f"{word}{session}"
                replicas.add(replica)
            conn.send("bye")
            with pytest.raises(ConnectionClosedOK):  # the replica closed it normally (code 1000)
                conn.recv(timeout=10)
        if len(replicas) == 2:
            break
    assert len(replicas) == 2
    assert http.get("/-/healthz").status_code == 200
