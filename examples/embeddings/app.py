"""Sentence embeddings over HTTP: an ``Embedder`` deployment behind a FastAPI ingress.

    dserve run examples.embeddings.app:app             # from the repository root
    dserve deploy examples/embeddings/serve.yaml       # on a cluster started with `dserve start`

Routes (under the application's route prefix; OpenAPI docs at ``/docs``):

* ``POST /embed`` ``{"texts": [str, ...]}`` → ``{"embeddings": [[float] * 384, ...]}``
* ``POST /similarity`` ``{"query": str, "candidates": [str, ...]}`` →
  ``{"ranked": [{"text": str, "score": float}, ...]}``, best first (cosine similarity)
* ``GET /healthz``

A body that does not validate is a 422; more than ``MAX_TEXTS_PER_REQUEST`` texts is a 413.

``Embedder.embed`` takes a list of texts per call and is a ``@serve.batch`` method whose batch
size counts texts, not calls: concurrent HTTP requests and offline ``dserve.map_partitions``
chunks share the model's batches. ``user_config`` (``max_batch_size``, ``batch_wait_timeout_s``)
retunes batching in place through ``reconfigure``. onnxruntime gets as many intra-op threads as
the replica has CPUs (``ray_actor_options["num_cpus"]``, passed as an init argument by
``build_app``, so ``args.num_cpus`` sets both).
"""
# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations,
# and the class ships to the replicas by value (cloudpickle keeps only the globals its code uses,
# so string annotations naming the request models could not be resolved there).
import asyncio
from typing import Any, Dict, List, Sequence

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, StringConstraints
from typing_extensions import Annotated

import dserve as serve
from examples.embeddings.model import DIMENSIONS, MODEL_ID, EmbeddingModel, embed_per_caller

MAX_TEXTS_PER_REQUEST = 256
MAX_TEXT_CHARS = 10_000
DEFAULT_NUM_CPUS = 1
DEFAULT_BATCH = {"max_batch_size": 32, "batch_wait_timeout_s": 0.005}
AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16,
               "upscale_delay_s": 5.0, "downscale_delay_s": 60.0}

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]


def texts_in(chunks: List[Sequence[str]]) -> int:
    """A batch's size in texts (each call brings a list of them)."""
    return sum(len(chunk) for chunk in chunks)


@serve.deployment(
    ray_actor_options={"num_cpus": DEFAULT_NUM_CPUS},
    autoscaling_config=AUTOSCALING,
    max_ongoing_requests=64,
    user_config=DEFAULT_BATCH,
)
class Embedder:
    """all-MiniLM-L6-v2 (int8 ONNX): a list of texts → unit vectors [n, 384] (float32)."""

    def __init__(self, num_threads: int = DEFAULT_NUM_CPUS) -> None:
        self.model = EmbeddingModel(num_threads=num_threads, batch_size=DEFAULT_BATCH["max_batch_size"])

    def reconfigure(self, config: Dict[str, Any]) -> None:
        size = int(config.get("max_batch_size", DEFAULT_BATCH["max_batch_size"]))
        wait = float(config.get("batch_wait_timeout_s", DEFAULT_BATCH["batch_wait_timeout_s"]))
        self.embed.set_max_batch_size(size)
        self.embed.set_batch_wait_timeout_s(wait)
        self.model.batch_size = size  # texts per session call

    def settings(self) -> Dict[str, Any]:
        """What this replica runs with (its id, batching, onnxruntime threads)."""
        return {"replica": serve.get_replica_context().replica_id,
                "max_batch_size": self.embed._get_max_batch_size(),
                "batch_wait_timeout_s": self.embed._get_batch_wait_timeout_s(),
                "num_threads": self.model.num_threads}

    @serve.batch(max_batch_size=DEFAULT_BATCH["max_batch_size"],
                 batch_wait_timeout_s=DEFAULT_BATCH["batch_wait_timeout_s"], batch_size_fn=texts_in)
    async def embed(self, chunks: List[Sequence[str]]) -> List[np.ndarray]:
        # inference off the event loop: the worker's loop keeps serving other calls meanwhile
        return await asyncio.to_thread(embed_per_caller, self.model, chunks)


class EmbedRequest(BaseModel):
    texts: List[Text] = Field(min_length=1, description=f"at most {MAX_TEXTS_PER_REQUEST} texts")


class EmbedResponse(BaseModel):
    embeddings: List[List[float]]


class SimilarityRequest(BaseModel):
    query: Text
    candidates: List[Text] = Field(min_length=1, description=f"at most {MAX_TEXTS_PER_REQUEST - 1} texts")


class Scored(BaseModel):
    text: str
    score: float


class SimilarityResponse(BaseModel):
    ranked: List[Scored]


api = FastAPI(title="Sentence embeddings", version="1.0",
              description=f"{MODEL_ID}: {DIMENSIONS}-dimensional unit vectors, served by dserve.")


def _bound(count: int) -> None:
    if count > MAX_TEXTS_PER_REQUEST:
        raise HTTPException(status_code=413,
                            detail=f"at most {MAX_TEXTS_PER_REQUEST} texts per request, got {count}")


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(api)
class EmbeddingAPI:
    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder  # a DeploymentHandle to Embedder

    @api.post("/embed", response_model=EmbedResponse)
    async def embed(self, body: EmbedRequest) -> Dict[str, Any]:
        _bound(len(body.texts))
        vectors = await self.embedder.embed.remote(body.texts)
        return {"embeddings": vectors.tolist()}

    @api.post("/similarity", response_model=SimilarityResponse)
    async def similarity(self, body: SimilarityRequest) -> Dict[str, Any]:
        _bound(len(body.candidates) + 1)
        vectors = await self.embedder.embed.remote([body.query] + body.candidates)
        scores = vectors[1:] @ vectors[0]  # unit vectors: the dot product is the cosine
        order = np.argsort(-scores, kind="stable")
        return {"ranked": [{"text": body.candidates[i], "score": float(scores[i])} for i in order]}

    @api.get("/healthz")
    async def healthz(self) -> Dict[str, Any]:
        return {"status": "ok", "model": MODEL_ID, "dimensions": DIMENSIONS}


def build_app(args: Dict[str, Any]) -> serve.Application:
    """The application; ``args``: ``num_cpus`` per Embedder replica (also its onnxruntime
    threads), ``min_replicas`` / ``max_replicas`` of the Embedder."""
    num_cpus = int(args.get("num_cpus", DEFAULT_NUM_CPUS))
    scaling = dict(AUTOSCALING, min_replicas=int(args.get("min_replicas", AUTOSCALING["min_replicas"])),
                   max_replicas=int(args.get("max_replicas", AUTOSCALING["max_replicas"])))
    embedder = Embedder.options(ray_actor_options={"num_cpus": num_cpus}, autoscaling_config=scaling)
    return EmbeddingAPI.bind(embedder.bind(num_threads=num_cpus))


app = build_app({})
