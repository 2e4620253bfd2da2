"""Offline embeddings: a dask DataFrame of generated texts, embedded by the Embedder's replicas
(the ones serving HTTP), written to Parquet.

    python -m examples.embeddings.offline --texts 20000 --out embeddings.parquet
    python -m examples.embeddings.offline --address tcp://127.0.0.1:8786   # a running cluster

Without ``--address`` a local Dask cluster is started, dserve on it, and the application;
with one, the ``embeddings`` application already deployed there (``dserve deploy
examples/embeddings/serve.yaml``) is used, or deployed when missing. Each partition goes to
the replicas as calls of ``--batch-size`` texts through ``dserve.map_partitions``, so it shares
their batches, queues and backpressure with online traffic. ``embed_locally`` is the other
way to do it, for comparison: each Dask task loads its own copy of the model.
"""
from __future__ import annotations

import argparse
import itertools
import time
from typing import Any, List, Optional

import pandas as pd

import dserve as serve
from examples.embeddings.model import DIMENSIONS, EmbeddingModel

APP_NAME = "embeddings"
SUBJECTS = ["The committee", "A small startup", "My neighbour", "The research team", "Our kitchen robot",
            "The city council", "A retired teacher", "The football club", "An old fisherman", "The museum"]
VERBS = ["announced", "postponed", "celebrated", "questioned", "funded", "rebuilt", "photographed",
         "debated", "cancelled", "painted"]
OBJECTS = ["a new bridge", "the summer festival", "an unusual recipe", "the annual budget", "a solar farm",
           "the harbour lights", "a children's library", "the mountain railway", "a jazz concert",
           "the river clean-up"]
WHEN = ["on Monday", "after a long delay", "despite the rain", "last winter", "in front of a crowd",
        "without any warning", "for the third time", "at dawn", "with great enthusiasm", "in secret"]


def generate_texts(n: int) -> List[str]:
    """``n`` distinct, deterministic sentences (10,000 combinations, then numbered)."""
    combos = itertools.product(SUBJECTS, VERBS, OBJECTS, WHEN)
    base = [f"{s} {v} {o} {w}." for s, v, o, w in combos]
    return [base[i % len(base)] if i < len(base) else f"{base[i % len(base)][:-1]}, story {i}." for i in range(n)]


def text_frame(n: int, npartitions: int) -> Any:
    """A dask DataFrame with columns ``id`` (int64) and ``text``."""
    import dask.dataframe as dd

    frame = pd.DataFrame({"id": range(n), "text": generate_texts(n)})
    return dd.from_pandas(frame, npartitions=npartitions)


def embed_frame(embedder: Any, texts: Any, batch_size: int = 256) -> Any:
    """``texts`` with an ``embedding`` column (float32 unit vectors), computed by the replicas."""
    vectors = serve.map_partitions(embedder.embed, texts["text"], batch_size=batch_size,
                                   meta=pd.Series([], dtype=object, name="embedding"))
    return texts.assign(embedding=vectors)


def embed_locally(partition: pd.DataFrame) -> pd.DataFrame:
    """The baseline without dserve: the task loads the model itself and embeds its partition."""
    vectors = EmbeddingModel(num_threads=1).embed(partition["text"].tolist())
    return partition.assign(embedding=pd.Series(list(vectors), index=partition.index, dtype=object))


def write_parquet(frame: Any, path: str, client: Any) -> None:
    """Write with an explicit schema for the vectors (Dask would otherwise compute a partition
    twice to infer it)."""
    import pyarrow as pa

    others = pa.Schema.from_pandas(frame._meta.drop(columns="embedding"), preserve_index=False)
    schema = others.append(pa.field("embedding", pa.list_(pa.float32())))
    task = frame.to_parquet(path, schema=schema, write_index=False, compute=False)
    client.compute(task).result()


def embedder_handle(num_cpus: int = 1, max_replicas: int = 2) -> Any:
    """The Embedder of the ``embeddings`` application, deployed first if it is not running."""
    from examples.embeddings.app import build_app

    if APP_NAME not in serve.status().applications:
        serve.run(build_app({"num_cpus": num_cpus, "max_replicas": max_replicas}), name=APP_NAME, route_prefix="/")
    return serve.get_deployment_handle("Embedder", APP_NAME)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256, help="texts per call to the replicas")
    parser.add_argument("--out", default="embeddings.parquet")
    parser.add_argument("--address", default=None, help="scheduler of a running Dask cluster")
    args = parser.parse_args(argv)
    import dask
    from distributed import Client, LocalCluster

    cluster = None
    if not args.address:
        with dask.config.set({"distributed.scheduler.worker-ttl": "30s"}):  # as dserve recommends for serving
            cluster = LocalCluster(n_workers=2, threads_per_worker=4, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0")
    client = Client(args.address or cluster)
    try:
        serve.start(address=client.scheduler.address)
        embedder = embedder_handle()
        started = time.monotonic()
        write_parquet(embed_frame(embedder, text_frame(args.texts, args.partitions), args.batch_size),
                      args.out, client)
        elapsed = time.monotonic() - started
        print(f"{args.texts} texts → {args.out} ({DIMENSIONS}-d) in {elapsed:.1f}s: "
              f"{args.texts / elapsed:.0f} texts/s")
    finally:
        if cluster is not None:
            serve.shutdown()
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
