"""The baseline: a bare uvicorn + Starlette app (same HTTP stack as dserve's proxy): a no-op
at ``/`` and, at ``/cpu``, the CPU scenario's handler (1 ms of pure-Python CPU per request)."""
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

CPU_MS = 1.0  # the same as benchmarks/apps.py's "cpu" deployment


async def noop(request):
    return PlainTextResponse("ok")


async def cpu(request):
    end = time.perf_counter() + CPU_MS / 1000  # spin, holding the GIL, as the dserve replica does
    while time.perf_counter() < end:
        pass
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/", noop), Route("/cpu", cpu)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="asyncio",
                lifespan="off", access_log=False, log_level="warning")
