"""gRPC ingress: a proto compiled at test time, called with a plain grpcio client."""
import asyncio
import os
import subprocess
import sys
import time

import grpc
import pytest

import dserve as serve
from conftest import free_port, proxy_details, wait_for

PROTO = """
syntax = "proto3";
package dservetest;
message HelloRequest { string name = 1; int64 count = 2; double seconds = 3; }
message HelloReply { string message = 1; }
service Greeter {
  rpc SayHello(HelloRequest) returns (HelloReply);
  rpc SayMany(HelloRequest) returns (stream HelloReply);
  rpc Fail(HelloRequest) returns (HelloReply);
  rpc Slow(HelloRequest) returns (HelloReply);
  rpc WithContext(HelloRequest) returns (HelloReply);
}
"""


@pytest.fixture(scope="module")
def grpc_port(tmp_path_factory):
    out = tmp_path_factory.mktemp("protos")
    (out / "dservetest.proto").write_text(PROTO)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
                    f"--grpc_python_out={out}", str(out / "dservetest.proto")], check=True)
    sys.path.insert(0, str(out))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(out), os.environ.get("PYTHONPATH")]))
    port = free_port()
    serve.start(http_options={"port": free_port()},
                grpc_options={"port": port, "request_timeout_s": 2.0,
                              "grpc_servicer_functions": ["dservetest_pb2_grpc.add_GreeterServicer_to_server"]})
    wait_for(lambda: all(p["status"] == "HEALTHY" and p["grpc_port"] == port for p in proxy_details().values()),
             what="a healthy gRPC proxy")
    yield port
    serve.shutdown()


def stubs(port):
    import dservetest_pb2 as pb2
    import dservetest_pb2_grpc as pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return pb2, pb2_grpc.GreeterStub(channel), channel


def make_greeter():
    import dservetest_pb2 as pb2

    @serve.deployment(max_ongoing_requests=2, max_queued_requests=1)
    class Greeter:
        def __init__(self):
            self.cancelled = 0

        def SayHello(self, request):
            return pb2.HelloReply(message=f"hello {request.name} from {serve.get_replica_context().app_name}")

        async def SayMany(self, request):
            for i in range(request.count):
                yield pb2.HelloReply(message=f"{request.name}-{i}")

        def Fail(self, request):
            raise ValueError("the model refused")

        async def Slow(self, request):
            try:
                await asyncio.sleep(request.seconds)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return pb2.HelloReply(message="slept")

        def WithContext(self, request, grpc_context):
            assert ("client-key", "v1") in grpc_context.invocation_metadata()
            grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            grpc_context.set_details(f"bad name {request.name!r}")
            return pb2.HelloReply()

        def cancelled_count(self):
            return self.cancelled

    return Greeter


def test_unary_streaming_and_routing_by_application(grpc_port):
    Greeter = make_greeter()
    serve.run(Greeter.bind(), name="g1", route_prefix=None)
    pb2, stub, _ = stubs(grpc_port)
    wait_for(lambda: stub.SayHello(pb2.HelloRequest(name="x")), timeout=20, what="route to the app")
    assert stub.SayHello(pb2.HelloRequest(name="ann")).message == "hello ann from g1"  # one app: no metadata needed
    replies = list(stub.SayMany(pb2.HelloRequest(name="s", count=3), metadata=(("application", "g1"),)))
    assert [r.message for r in replies] == ["s-0", "s-1", "s-2"]
    serve.run(Greeter.bind(), name="g2", route_prefix=None)
    wait_for(lambda: stub.SayHello(pb2.HelloRequest(name="b"), metadata=(("application", "g2"),)), what="g2")
    assert stub.SayHello(pb2.HelloRequest(name="b"), metadata=(("application", "g2"),)).message == "hello b from g2"
    with pytest.raises(grpc.RpcError) as err:
        stub.SayHello(pb2.HelloRequest(name="b"), metadata=(("application", "nope"),))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "g1" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # two apps and no metadata
        stub.SayHello(pb2.HelloRequest(name="b"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    serve.delete("g2")


def test_errors_timeouts_overload_and_context(grpc_port):
    pb2, stub, _ = stubs(grpc_port)
    md = (("application", "g1"),)
    with pytest.raises(grpc.RpcError) as err:
        stub.Fail(pb2.HelloRequest(), metadata=md)
    assert err.value.code() == grpc.StatusCode.INTERNAL and "the model refused" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Slow(pb2.HelloRequest(seconds=5), metadata=md)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    futures = [stub.Slow.future(pb2.HelloRequest(seconds=1.0), metadata=md) for _ in range(5)]
    codes = []
    for f in futures:
        try:
            f.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert codes.count(grpc.StatusCode.UNAVAILABLE) >= 1 and codes.count(grpc.StatusCode.OK) >= 2
    with pytest.raises(grpc.RpcError) as err:
        stub.WithContext(pb2.HelloRequest(name="zz"), metadata=md + (("client-key", "v1"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == "bad name 'zz'"


def test_cancelled_call_cancels_the_replica_request(grpc_port):
    pb2, stub, _ = stubs(grpc_port)
    handle = serve.get_app_handle("g1")
    before = handle.cancelled_count.remote().result()
    future = stub.Slow.future(pb2.HelloRequest(seconds=1.5), metadata=(("application", "g1"),))
    time.sleep(0.3)
    future.cancel()
    wait_for(lambda: handle.cancelled_count.remote().result() == before + 1, timeout=10,
             what="the replica to see the cancellation")


def _strings(data):
    out, i = [], 0
    while i < len(data):
        assert data[i] == 0x0A
        i += 1
        length, shift = 0, 0
        while True:
            b = data[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out.append(data[i:i + length].decode())
        i += length
    return out


def test_builtin_list_applications_and_healthz(grpc_port):
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    list_apps = channel.unary_unary("/ray.serve.RayServeAPIService/ListApplications")
    healthz = channel.unary_unary("/ray.serve.RayServeAPIService/Healthz")
    assert "g1" in _strings(list_apps(b""))
    assert _strings(healthz(b"")) == ["success"]
