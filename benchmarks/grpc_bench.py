"""gRPC no-op: dserve's gRPC proxy against a bare grpcio asyncio server, same proto, same run.

The proto is compiled at run time with grpcio-tools (``pip install -e ".[test]"``).
"""
from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

PROTO = """
syntax = "proto3";
package dservebench;
message Ping { string text = 1; }
service Bench { rpc Echo(Ping) returns (Ping); }
"""

BARE_SERVER = """
import asyncio, sys
import grpc
import dservebench_pb2 as pb2, dservebench_pb2_grpc as pb2_grpc

class Bench(pb2_grpc.BenchServicer):
    async def Echo(self, request, context):
        return pb2.Ping(text=request.text)

async def main():
    server = grpc.aio.server()
    pb2_grpc.add_BenchServicer_to_server(Bench(), server)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""


def compile_proto() -> str:
    out = tempfile.mkdtemp(prefix="dserve-bench-proto-")
    with open(os.path.join(out, "dservebench.proto"), "w") as f:
        f.write(PROTO)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
                    f"--grpc_python_out={out}", os.path.join(out, "dservebench.proto")], check=True)
    with open(os.path.join(out, "bare_server.py"), "w") as f:
        f.write(BARE_SERVER)
    sys.path.insert(0, out)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [out, os.environ.get("PYTHONPATH")]))
    return out


async def _load(port: int, concurrency: int, seconds: float, metadata: tuple) -> Dict[str, float]:
    import grpc

    import dservebench_pb2 as pb2
    import dservebench_pb2_grpc as pb2_grpc

    latencies: List[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb2_grpc.BenchStub(channel)
        await stub.Echo(pb2.Ping(text="warm"), metadata=metadata)
        stop = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal errors
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    await stub.Echo(pb2.Ping(text="x"), metadata=metadata)
                    latencies.append(time.perf_counter() - t)
                except grpc.RpcError:
                    errors += 1

        t0 = time.monotonic()
        await asyncio.gather(*[caller() for _ in range(concurrency)])
        elapsed = time.monotonic() - t0
    return {"calls_per_s": len(latencies) / elapsed, "p50_ms": statistics.median(latencies) * 1000, "errors": errors}


def run(seconds: float, emit: Callable[..., None], free_port: Callable[[], int], rounds: int = 1) -> None:
    out = compile_proto()
    for _ in range(rounds):
        port = free_port()
        bare = subprocess.Popen([sys.executable, os.path.join(out, "bare_server.py"), str(port)], cwd=out)
        try:
            time.sleep(1.0)
            for c in (1, 64):
                emit("bare", f"grpc_noop c{c}", **asyncio.run(_load(port, c, seconds, ())))
        finally:
            bare.terminate()
            bare.wait(10)
        import dserve as serve

        gport = free_port()
        serve.start(http_options={"port": free_port()},
                    grpc_options={"port": gport, "grpc_servicer_functions": ["dservebench_pb2_grpc.add_BenchServicer_to_server"]})
        try:
            import dservebench_pb2 as pb2

            @serve.deployment
            class Bench:
                async def Echo(self, request: Any) -> Any:
                    return pb2.Ping(text=request.text)

            serve.run(Bench.bind(), name="grpcbench", route_prefix=None)
            time.sleep(0.5)
            for c in (1, 64):
                emit("dserve", f"grpc_noop c{c}", **asyncio.run(_load(gport, c, seconds, (("application", "grpcbench"),))))
        finally:
            serve.shutdown()
