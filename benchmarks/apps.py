"""The applications benchmarks deploy, written once for both Ray Serve and dserve."""
from __future__ import annotations

import asyncio
import time
from typing import Any


def build(serve: Any, kind: str, replicas: int = 1, **options: Any) -> Any:
    if kind == "noop":
        @serve.deployment(num_replicas=replicas, **options)
        class Noop:
            async def __call__(self, request: Any = None) -> str:
                return "ok"

        return Noop.bind()
    if kind == "compose":
        @serve.deployment(num_replicas=replicas, **options)
        class Inner:
            async def __call__(self) -> str:
                return "ok"

        @serve.deployment(**options)
        class Outer:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            async def __call__(self, request: Any = None) -> str:
                return await self.inner.remote()

        return Outer.bind(Inner.bind())
    if kind == "stream":
        from starlette.responses import StreamingResponse

        @serve.deployment(**options)
        class Stream:
            async def __call__(self, request: Any = None) -> Any:
                async def gen():
                    for i in range(10):
                        yield f"{i}\n"
                return StreamingResponse(gen(), media_type="text/plain")

            async def chunks(self, n: int):
                for i in range(n):
                    yield i

        return Stream.bind()
    if kind in ("autoscale", "zero"):
        config = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2,
                  "upscale_delay_s": 0.5, "downscale_delay_s": 2.0, "look_back_period_s": 2.0}
        if kind == "zero":
            config.update(min_replicas=0, initial_replicas=0, downscale_to_zero_delay_s=2.0)

        @serve.deployment(max_ongoing_requests=8, autoscaling_config=config, **options)
        class Scaled:
            async def __call__(self, request: Any = None) -> str:
                await asyncio.sleep(0.05)
                return "ok"

        return Scaled.bind()
    if kind in ("batched", "unbatched"):
        # a model whose call costs 2 ms plus 0.1 ms per item, and blocks (like real inference)
        if kind == "batched":
            @serve.deployment(max_ongoing_requests=64, **options)
            class Model:
                @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
                async def __call__(self, items: list) -> list:
                    time.sleep(0.002 + 0.0001 * len(items))
                    return items
        else:
            @serve.deployment(max_ongoing_requests=64, **options)
            class Model:
                async def __call__(self, item: Any) -> Any:
                    time.sleep(0.0021)
                    return item

        return Model.bind()
    if kind == "cpu":  # 1 ms of pure-Python CPU per request, the GIL held (bare_app.py's /cpu)
        @serve.deployment(num_replicas=replicas, **options)
        class Cpu:
            async def __call__(self, request: Any = None) -> str:
                end = time.perf_counter() + 0.001
                while time.perf_counter() < end:
                    pass
                return "ok"

        return Cpu.bind()
    if kind == "embeddings":  # a real model: examples/embeddings (see benchmarks/embeddings.py)
        from .embeddings import build as build_embeddings

        return build_embeddings(serve)
    raise ValueError(kind)
