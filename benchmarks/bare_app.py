"""The baseline: a bare uvicorn + Starlette no-op app (same HTTP stack as dserve's proxy)."""
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def noop(request):
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/", noop)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="asyncio",
                lifespan="off", access_log=False, log_level="warning")
