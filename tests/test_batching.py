"""@serve.batch: in-process behaviour (asyncio) and inside real replicas."""
import asyncio

import pytest

import dserve as serve
from dserve.exceptions import RayServeException


def run(coro):
    return asyncio.run(coro)


def test_batches_form_and_each_caller_gets_its_element():
    sizes = []

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def double(items):
        sizes.append(len(items))
        return [2 * i for i in items]

    async def main():
        return await asyncio.gather(*[double(i) for i in range(10)])

    assert run(main()) == [2 * i for i in range(10)]
    assert sizes == [4, 4, 2]


def test_method_batching_and_runtime_setters():
    class Model:
        def __init__(self):
            self.sizes = []

        @serve.batch(max_batch_size=2, batch_wait_timeout_s=0.05)
        async def predict(self, xs):
            self.sizes.append(len(xs))
            return xs

    async def main():
        m = Model()
        await asyncio.gather(*[m.predict(i) for i in range(4)])
        m.predict.set_max_batch_size(4)
        m.predict.set_batch_wait_timeout_s(0.1)
        await asyncio.gather(*[m.predict(i) for i in range(4)])
        return m.sizes, m.predict._get_max_batch_size()

    sizes, current = run(main())
    assert sizes == [2, 2, 4] and current == 4


def test_timeout_closes_a_partial_batch():
    @serve.batch(max_batch_size=100, batch_wait_timeout_s=0.05)
    async def echo(items):
        return items

    async def main():
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await echo(1)
        return result, loop.time() - start

    result, elapsed = run(main())
    assert result == 1 and 0.04 <= elapsed < 1.0


def test_wrong_length_and_exceptions_fail_only_that_batch():
    calls = []

    @serve.batch(max_batch_size=3, batch_wait_timeout_s=0.05)
    async def flaky(items):
        calls.append(list(items))
        if len(calls) == 1:
            return items[:-1]  # wrong length
        if len(calls) == 2:
            raise RuntimeError("model crashed")
        return items

    async def main():
        first = await asyncio.gather(*[flaky(i) for i in range(3)], return_exceptions=True)
        second = await asyncio.gather(*[flaky(i) for i in range(3)], return_exceptions=True)
        third = await asyncio.gather(*[flaky(i) for i in range(3)])
        return first, second, third

    first, second, third = run(main())
    assert [type(e) for e in first] == [RayServeException] * 3
    assert str(first[0]) == ("Batched function doesn't preserve batch size. The input list has length 3 "
                             "but the returned list has length 2.")
    assert all(isinstance(e, RuntimeError) and "model crashed" in str(e) for e in second)
    assert third == [0, 1, 2]


def test_cancelled_caller_is_dropped_from_its_batch():
    seen = []

    @serve.batch(max_batch_size=10, batch_wait_timeout_s=0.1)
    async def record(items):
        seen.extend(items)
        return items

    async def main():
        doomed = asyncio.ensure_future(record("cancelled"))
        kept = asyncio.ensure_future(record("kept"))
        await asyncio.sleep(0.01)
        doomed.cancel()
        return await kept

    assert run(main()) == "kept"
    assert seen == ["kept"]


def test_batch_size_fn_sizes_by_custom_measure():
    sizes = []

    @serve.batch(max_batch_size=10, batch_wait_timeout_s=0.05, batch_size_fn=lambda items: sum(len(s) for s in items))
    async def tokens(items):
        sizes.append([len(s) for s in items])
        return items

    async def main():
        return await asyncio.gather(*[tokens("x" * 4) for _ in range(5)])

    run(main())
    assert all(sum(b) <= 10 for b in sizes) and sum(len(b) for b in sizes) == 5


def test_max_concurrent_batches():
    active = {"now": 0, "peak": 0}

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0, max_concurrent_batches=3)
    async def slow(items):
        active["now"] += 1
        active["peak"] = max(active["peak"], active["now"])
        await asyncio.sleep(0.05)
        active["now"] -= 1
        return items

    async def main():
        await asyncio.gather(*[slow(i) for i in range(9)])

    run(main())
    assert active["peak"] == 3


def test_generator_batches_stream_one_element_per_caller():
    @serve.batch(max_batch_size=3, batch_wait_timeout_s=0.05)
    async def words(prefixes):
        for step in range(3):
            yield [f"{p}{step}" for p in prefixes]

    async def main():
        async def collect(p):
            return [x async for x in words(p)]

        return await asyncio.gather(*[collect(p) for p in "abc"])

    assert run(main()) == [["a0", "a1", "a2"], ["b0", "b1", "b2"], ["c0", "c1", "c2"]]


def test_sync_function_rejected_at_decoration():
    with pytest.raises(TypeError, match="async"):
        @serve.batch
        def not_async(items):
            return items

    with pytest.raises(ValueError, match="max_batch_size"):
        serve.batch(max_batch_size=0)


def test_batching_inside_a_replica(clean):
    @serve.deployment(max_ongoing_requests=64)
    class Batched:
        def __init__(self):
            self.sizes = []

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
        async def __call__(self, xs):
            self.sizes.append(len(xs))
            return [x * 10 for x in xs]

        def batch_sizes(self):
            return self.sizes

    h = serve.run(Batched.bind(), name="batched")
    responses = [h.remote(i) for i in range(32)]
    assert [r.result() for r in responses] == [i * 10 for i in range(32)]
    sizes = h.batch_sizes.remote().result()
    assert sum(sizes) == 32 and max(sizes) > 1


def test_any_sequence_of_the_right_length_is_accepted():
    np = pytest.importorskip("numpy")

    @serve.batch(max_batch_size=3, batch_wait_timeout_s=0.05)
    async def as_array(items):
        return np.array(items) * 2

    @serve.batch(max_batch_size=3, batch_wait_timeout_s=0.05)
    async def as_tuple(items):
        return tuple(i + 1 for i in items)

    async def main():
        return (await asyncio.gather(*[as_array(i) for i in range(3)]),
                await asyncio.gather(*[as_tuple(i) for i in range(3)]))

    doubled, plus_one = run(main())
    assert [int(x) for x in doubled] == [0, 2, 4]
    assert plus_one == [1, 2, 3]


def test_a_batched_generator_ends_one_callers_stream_with_stop_iteration():
    @serve.batch(max_batch_size=2, batch_wait_timeout_s=0.05)
    async def counts(limits):
        for step in range(3):
            yield [step if step < limit else StopIteration for limit in limits]

    async def collect(limit):
        return [x async for x in counts(limit)]

    async def main():
        return await asyncio.gather(collect(1), collect(3))

    assert run(main()) == [[0], [0, 1, 2]]


def test_a_batched_generator_streams_over_http_from_a_class_pickled_by_value(clean):
    # The class is local to this test, so it ships by value, batching wrapper included: the
    # end-of-stream marker must still be recognised in the replica (it used to reach the
    # response body, and the stream broke after the first caller's last element).
    import concurrent.futures

    import httpx
    from starlette.requests import Request
    from starlette.responses import StreamingResponse

    from conftest import proxy_url

    @serve.deployment
    class Counter:
        @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.2)
        async def numbers(self, limits):
            for step in range(max(limits)):
                yield [str(step) if step < limit else StopIteration for limit in limits]

        async def __call__(self, request: Request):
            limit = int(request.query_params["n"])
            return StreamingResponse(self.numbers(limit), media_type="text/plain")

    serve.run(Counter.bind(), name="batched_stream", route_prefix="/batched_stream")
    url = f"{proxy_url()}/batched_stream"

    def fetch(n):
        r = httpx.get(url, params={"n": n}, timeout=30)
        return r.status_code, r.text

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(fetch, [1, 3, 4]))
    assert results == [(200, "0"), (200, "012"), (200, "0123")]
