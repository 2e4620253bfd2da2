"""dserve.map_partitions: a deployment over every partition of a dask DataFrame, Bag or Array,
in Dask tasks on the cluster, through the replicas' routers, batching and backpressure."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
import pytest

import dask.array as da
import dask.bag as db
import dask.dataframe as dd

import dserve as serve
from dserve.dask_map import RETRIES_METRIC
from dserve.exceptions import BackPressureError

from conftest import HTTPLoad, proxy_url, wait_for


@serve.deployment(num_replicas=1, max_ongoing_requests=16)
class Rows:
    """A tiny model: pure functions of its inputs; records the size of every call it gets."""

    def __init__(self):
        self.sizes = []

    def frame(self, df):
        self.sizes.append(len(df))  # a fresh RangeIndex: map_partitions restores the partition's
        return pd.DataFrame({"x2": (df["x"] * 2).to_numpy(), "word": df["word"].str.upper().to_numpy()})

    def lengths(self, words):
        self.sizes.append(len(words))
        return [len(w) for w in words]

    def squares(self, items):
        self.sizes.append(len(items))
        return [i * i for i in items]

    def row_sums(self, block):
        self.sizes.append(len(block))
        return block.sum(axis=1)

    def pairs(self, block):
        self.sizes.append(len(block))
        return np.stack([block, -block], axis=1)

    def seen(self):
        out = sorted(self.sizes)
        self.sizes.clear()
        return out


@serve.deployment
class Hello:
    async def __call__(self, request):
        return "hi"


@serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Slow:
    async def __call__(self, items, delay=0.05):
        await asyncio.sleep(delay)
        return [i + 1 for i in items]


@pytest.fixture(scope="module")
def client(serve_instance):
    from distributed import Client

    from dserve.runtime import current_runtime

    with Client(current_runtime().scheduler_address, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def rows(serve_instance):
    handle = serve.run(Rows.bind(), name="rows", route_prefix=None)
    yield handle
    serve.delete("rows")


def test_dataframe_partitions_in_batches_keep_index_and_divisions(client, rows):
    pdf = pd.DataFrame({"x": range(40), "word": [f"w{i}" for i in range(40)]}, index=range(100, 140))
    ddf = dd.from_pandas(pdf, npartitions=4)
    meta = pd.DataFrame({"x2": pd.Series(dtype="int64"), "word": pd.Series(dtype=pdf["word"].dtype)})
    out = serve.map_partitions(rows.frame, ddf, meta=meta, batch_size=4)
    assert out.npartitions == 4 and out.divisions == ddf.divisions
    assert list(out.columns) == ["x2", "word"]
    result = client.compute(out).result(timeout=120)
    expected = pd.DataFrame({"x2": pdf["x"] * 2, "word": pdf["word"].str.upper()}, index=pdf.index)
    pd.testing.assert_frame_equal(result, expected)
    assert rows.seen.remote().result(timeout_s=30) == sorted([4, 4, 2] * 4)  # 3 calls per partition of 10


def test_series_meta_is_inferred_like_dask(client, rows):
    words = pd.Series([f"{'a' * (i % 7)}w{i}" for i in range(30)], name="word")
    ds = dd.from_pandas(words, npartitions=3)
    out = serve.map_partitions(rows.lengths, ds)  # one probe call on Dask's fake partition
    assert out._meta.dtype == np.int64 and out._meta.name == "word"
    rows.seen.remote().result(timeout_s=30)  # forget the probe
    result = client.compute(out).result(timeout=120)
    pd.testing.assert_series_equal(result, words.str.len().astype("int64"))
    assert rows.seen.remote().result(timeout_s=30) == [10, 10, 10]  # the whole partition in one call


def test_bag_partitions(client, rows):
    bag = db.from_sequence(range(30), npartitions=3)
    out = serve.map_partitions(rows.squares, bag, batch_size=4)
    assert isinstance(out, db.Bag) and out.npartitions == 3
    assert client.compute(out).result(timeout=120) == [i * i for i in range(30)]
    assert rows.seen.remote().result(timeout_s=30) == sorted([4, 4, 2] * 3)


def test_array_blocks_drop_and_add_axes(client, rows):
    values = np.arange(24, dtype=np.int64).reshape(8, 3)
    arr = da.from_array(values, chunks=((3, 3, 2), (2, 1)))
    sums = serve.map_partitions(rows.row_sums, arr)  # meta from one call on zero rows
    assert sums.shape == (8,) and sums.dtype == np.int64 and sums.chunks == ((3, 3, 2),)
    np.testing.assert_array_equal(client.compute(sums).result(timeout=120), values.sum(axis=1))

    flat = da.from_array(np.arange(10, dtype=np.int64), chunks=4)
    pairs = serve.map_partitions(rows.pairs, flat, meta=np.empty((0, 2), dtype=np.int64), batch_size=3)
    assert pairs.shape == (10, 2) and pairs.chunks == ((4, 4, 2), (2,))
    expected = np.stack([np.arange(10), -np.arange(10)], axis=1)
    result = client.compute(pairs).result(timeout=120)
    assert result.dtype == np.int64
    np.testing.assert_array_equal(result, expected)
    # the probe (0 rows), a call per block of rows, then blocks of 4, 4, 2 in calls of at most 3
    assert rows.seen.remote().result(timeout_s=30) == sorted([0, 3, 3, 2] + [3, 1, 3, 1, 2])


def test_runs_while_http_traffic_is_served(client, rows):
    serve.run(Hello.bind(), name="hello", route_prefix="/hello")
    load = HTTPLoad(f"{proxy_url()}/hello", threads=2)
    try:
        wait_for(lambda: load.ok > 0, timeout=60, what="HTTP traffic flowing")
        before = load.ok
        bag = db.from_sequence(range(400), npartitions=8)
        result = client.compute(serve.map_partitions(rows.squares, bag, batch_size=5)).result(timeout=180)
        during = load.ok - before
    finally:
        load.stop()
        serve.delete("hello")
    assert result == [i * i for i in range(400)]
    assert during > 0
    assert load.failures == [] and set(load.results) == {"hi"}
    assert rows.seen.remote().result(timeout_s=30) == [5] * 80


def _retries(client) -> float:
    def read():
        from dserve.metrics import table

        return sum(table("counter", RETRIES_METRIC, "", ("application", "deployment")).values.values())

    return sum(client.run(read).values())


def test_backpressure_waits_and_retries_until_done(client, serve_instance):
    serve.run(Slow.bind(), name="slow", route_prefix=None)
    try:
        before = _retries(client)
        bag = db.from_sequence(range(48), npartitions=4)
        # 6 calls per task, 4 in flight, against 1 running + 1 queued per caller: refused calls wait
        out = serve.map_partitions(serve.get_app_handle("slow"), bag, batch_size=2, max_in_flight=4)
        assert client.compute(out).result(timeout=180) == [i + 1 for i in range(48)]
        assert _retries(client) > before
    finally:
        serve.delete("slow")


def test_backpressure_timeout_fails_typed(client, serve_instance):
    serve.run(Slow.options(name="Slower").bind(), name="slower", route_prefix=None)
    try:
        handle = serve.get_app_handle("slower")
        bag = db.from_sequence(range(8), npartitions=1)
        out = serve.map_partitions(handle, bag, batch_size=2, max_in_flight=4, backpressure_timeout_s=0)
        started = time.monotonic()
        with pytest.raises(BackPressureError):
            client.compute(out).result(timeout=120)
        assert time.monotonic() - started < 60
    finally:
        serve.delete("slower")


def test_bad_arguments_are_refused_at_once():
    bag = db.from_sequence(range(3))
    handle = serve.DeploymentHandle("X", "app")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        serve.map_partitions(handle, bag, batch_size=0)
    with pytest.raises(ValueError, match="max_in_flight must be an integer >= 1"):
        serve.map_partitions(handle, bag, max_in_flight=0)
    with pytest.raises(TypeError, match="not list"):
        serve.map_partitions(handle, [1, 2, 3])
