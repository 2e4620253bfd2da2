"""@serve.multiplexed and streaming handles on a real cluster."""
import asyncio
import time

import httpx
import pytest
from starlette.responses import StreamingResponse

import dserve as serve
from conftest import proxy_url, wait_for


@serve.deployment(num_replicas=2, max_ongoing_requests=20)
class Models:
    def __init__(self):
        self.loads = []
        self.unloaded = []

    @serve.multiplexed(max_num_models_per_replica=3)
    async def get_model(self, model_id: str):
        self.loads.append(model_id)
        await asyncio.sleep(0.05)
        unloaded = self.unloaded

        class Model:
            def __init__(self, name):
                self.name = name

            async def __del__(self):
                unloaded.append(self.name)

        return Model(model_id)

    async def __call__(self, request=None):
        model = await self.get_model(serve.get_multiplexed_model_id())
        return {"model": model.name, "replica": serve.get_replica_context().replica_id}

    def stats(self):
        return {"loads": self.loads, "unloaded": self.unloaded,
                "replica": serve.get_replica_context().replica_id}


def test_lru_eviction_and_single_load(clean):
    h = serve.run(Models.options(num_replicas=1).bind(), name="mm")
    # concurrent requests for one id load it once
    results = [h.options(multiplexed_model_id="a").remote() for _ in range(10)]
    assert {r.result()["model"] for r in results} == {"a"}
    for model_id in ("b", "c", "d"):  # "a" is least recently used when "d" arrives
        assert h.options(multiplexed_model_id=model_id).remote().result()["model"] == model_id
    stats = h.stats.remote().result()
    assert stats["loads"] == ["a", "b", "c", "d"]
    assert stats["unloaded"] == ["a"]


def test_model_id_from_http_header_and_affinity(clean):
    serve.run(Models.bind(), name="mm", route_prefix="/mm")
    h = serve.get_app_handle("mm")
    first = {m: h.options(multiplexed_model_id=m).remote().result()["replica"] for m in ("x", "y", "z")}

    def sticky():  # once reported, each model's requests go to the replica holding it
        return all(
            h.options(multiplexed_model_id=m).remote().result()["replica"] == first[m]
            for m in ("x", "y", "z") for _ in range(5)
        )

    wait_for(sticky, timeout=20, what="requests to land on the replica holding their model")
    r = httpx.get(f"{proxy_url()}/mm", headers={"serve_multiplexed_model_id": "x"}, timeout=10)
    assert r.json() == {"model": "x", "replica": first["x"]}


def test_multiplexed_validation():
    with pytest.raises(TypeError, match="async"):
        @serve.multiplexed
        def load(model_id):
            return model_id
    with pytest.raises(ValueError, match="max_num_models_per_replica must be a positive integer"):
        serve.multiplexed(max_num_models_per_replica=0)


@serve.deployment
class Streamer:
    def __init__(self):
        self.stopped = 0

    async def numbers(self, n, delay=0.0):
        try:
            for i in range(n):
                yield i
                await asyncio.sleep(delay)
        finally:
            self.stopped += 1

    def sync_numbers(self, n):
        for i in range(n):
            yield i * i

    def stopped_count(self):
        return self.stopped

    def plain(self):
        return 1


def test_streaming_handle_sync_and_async(clean):
    h = serve.run(Streamer.bind(), name="st")
    gen = h.options(stream=True).numbers.remote(5)
    assert isinstance(gen, serve.DeploymentResponseGenerator)
    assert list(gen) == [0, 1, 2, 3, 4]
    assert list(h.options(stream=True).sync_numbers.remote(4)) == [0, 1, 4, 9]

    async def consume():
        return [x async for x in h.options(stream=True).numbers.remote(3)]

    assert asyncio.run(consume()) == [0, 1, 2]


def test_stream_items_arrive_as_produced_and_cancel_stops_the_generator(clean):
    h = serve.run(Streamer.bind(), name="st")
    start = time.monotonic()
    gen = h.options(stream=True).numbers.remote(100, 0.2)
    assert next(gen) == 0
    assert time.monotonic() - start < 1.0  # not buffered until the end (20 s)
    gen.cancel()
    wait_for(lambda: h.stopped_count.remote().result() == 1, timeout=10, what="the replica generator to stop")


def test_stream_flag_mismatch_is_a_clear_error(clean):
    h = serve.run(Streamer.bind(), name="st")
    with pytest.raises(TypeError, match="not a generator"):
        list(h.options(stream=True).plain.remote())
    with pytest.raises(TypeError, match="stream=True"):
        h.numbers.remote(3).result()


def test_streams_compose_through_an_http_ingress(clean):
    @serve.deployment
    class Front:
        def __init__(self, streamer):
            self.streamer = streamer

        async def __call__(self, request):
            async def relay():
                async for i in self.streamer.options(stream=True).numbers.remote(4, 0.05):
                    yield f"{i}\n"
            return StreamingResponse(relay(), media_type="text/plain")

    serve.run(Front.bind(Streamer.bind()), name="front", route_prefix="/front")
    assert httpx.get(f"{proxy_url()}/front", timeout=10).text == "0\n1\n2\n3\n"
