"""gRPC ingress: a proto compiled at test time, called with a plain grpcio client."""
import asyncio
import os
import subprocess
import sys

import grpc
import pytest

import dserve as serve
from conftest import free_port, proxy_details, scrape_all, value, wait_for

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
    with pytest.MonkeyPatch.context() as mp:  # later modules get sys.path and PYTHONPATH back as they were
        mp.syspath_prepend(str(out))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(out), os.environ.get("PYTHONPATH")])))
        port = free_port()
        serve.start(http_options={"port": free_port()},
                    grpc_options={"port": port, "request_timeout_s": 2.0,
                                  "grpc_servicer_functions": ["dservetest_pb2_grpc.add_GreeterServicer_to_server"]})
        try:
            wait_for(lambda: all(p["status"] == "HEALTHY" and p["grpc_port"] == port for p in proxy_details().values()),
                     what="a healthy gRPC proxy")
            yield port
        finally:
            serve.shutdown()
            for name in ("dservetest_pb2", "dservetest_pb2_grpc"):
                sys.modules.pop(name, None)


@pytest.fixture
def stub(grpc_port):
    """A Greeter stub; every application is deleted after the test."""
    import dservetest_pb2_grpc as pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        yield pb2_grpc.GreeterStub(channel)
    for name in list(serve.status().applications):
        serve.delete(name)


def make_greeter():
    import dservetest_pb2 as pb2

    @serve.deployment(max_ongoing_requests=2, max_queued_requests=1)
    class Greeter:
        def __init__(self):
            self.started = 0
            self.cancelled = 0

        def SayHello(self, request):
            return pb2.HelloReply(message=f"hello {request.name} from {serve.get_replica_context().app_name}")

        async def SayMany(self, request):
            for i in range(request.count):
                await asyncio.sleep(request.seconds)
                yield pb2.HelloReply(message=f"{request.name}-{i}")

        def Fail(self, request):
            raise ValueError("the model refused")

        async def Slow(self, request):
            """Sleeps ``seconds``; with a ``name``, first waits until that file exists."""
            self.started += 1
            try:
                while request.name and not os.path.exists(request.name):
                    await asyncio.sleep(0.01)
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

        def counts(self):
            return {"started": self.started, "cancelled": self.cancelled}

    return Greeter


def deploy_greeter(stub, name):
    """Deploy a Greeter as application ``name``; returns its handle once the gRPC proxy routes to it."""
    import dservetest_pb2 as pb2

    handle = serve.run(make_greeter().bind(), name=name, route_prefix=None)
    wait_for(lambda: stub.SayHello(pb2.HelloRequest(name="x"), metadata=(("application", name),)),
             timeout=20, what=f"the gRPC proxy to route to {name}")
    return handle


def test_unary_streaming_and_routing_by_application(stub):
    import dservetest_pb2 as pb2

    deploy_greeter(stub, "g1")
    assert stub.SayHello(pb2.HelloRequest(name="ann")).message == "hello ann from g1"  # one app: no metadata needed
    replies = list(stub.SayMany(pb2.HelloRequest(name="s", count=3), metadata=(("application", "g1"),)))
    assert [r.message for r in replies] == ["s-0", "s-1", "s-2"]
    deploy_greeter(stub, "g2")
    assert stub.SayHello(pb2.HelloRequest(name="b"), metadata=(("application", "g2"),)).message == "hello b from g2"
    with pytest.raises(grpc.RpcError) as err:
        stub.SayHello(pb2.HelloRequest(name="b"), metadata=(("application", "nope"),))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "g1" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # two apps and no metadata
        stub.SayHello(pb2.HelloRequest(name="b"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_errors_timeouts_overload_and_context(stub, tmp_path):
    import dservetest_pb2 as pb2

    handle = deploy_greeter(stub, "g1")
    md = (("application", "g1"),)
    with pytest.raises(grpc.RpcError) as err:
        stub.Fail(pb2.HelloRequest(), metadata=md)
    assert err.value.code() == grpc.StatusCode.INTERNAL and "the model refused" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Slow(pb2.HelloRequest(seconds=5), metadata=md)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.DEADLINE_EXCEEDED, "timed out after 2.0s")
    with pytest.raises(grpc.RpcError) as err:  # request_timeout_s covers streaming calls too
        list(stub.SayMany(pb2.HelloRequest(name="s", count=100, seconds=0.5), metadata=md))
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.DEADLINE_EXCEEDED, "timed out after 2.0s")
    # the timed-out request is cancelled in the replica too
    wait_for(lambda: handle.counts.remote().result() == {"started": 1, "cancelled": 1}, timeout=10,
             what="the replica to see the timed-out request cancelled")
    # five calls held at a gate: two run (max_ongoing_requests=2), one waits (max_queued_requests=1), two are refused
    gate = tmp_path / "gate"
    futures = [stub.Slow.future(pb2.HelloRequest(name=str(gate), seconds=0.0), metadata=md) for _ in range(5)]
    refused = wait_for(lambda: [f for f in futures if f.done()] if sum(f.done() for f in futures) == 2 else None,
                       timeout=10, what="two calls to be refused")
    assert [f.code() for f in refused] == [grpc.StatusCode.UNAVAILABLE] * 2
    gate.touch()
    assert [f.result(timeout=10).message for f in futures if f not in refused] == ["slept"] * 3
    with pytest.raises(grpc.RpcError) as err:
        stub.WithContext(pb2.HelloRequest(name="zz"), metadata=md + (("client-key", "v1"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == "bad name 'zz'"


def test_cancelled_call_cancels_the_replica_request(stub):
    import dservetest_pb2 as pb2

    handle = deploy_greeter(stub, "g1")
    future = stub.Slow.future(pb2.HelloRequest(seconds=30), metadata=(("application", "g1"),))
    wait_for(lambda: handle.counts.remote().result() == {"started": 1, "cancelled": 0}, timeout=10,
             what="the call to reach the replica")
    assert future.cancel()
    wait_for(lambda: handle.counts.remote().result() == {"started": 1, "cancelled": 1}, timeout=10,
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


def test_builtin_list_applications_and_healthz(grpc_port, stub):
    deploy_greeter(stub, "g1")
    deploy_greeter(stub, "g2")
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        list_apps = channel.unary_unary("/ray.serve.RayServeAPIService/ListApplications")
        healthz = channel.unary_unary("/ray.serve.RayServeAPIService/Healthz")
        assert sorted(_strings(list_apps(b""))) == ["g1", "g2"]
        assert _strings(healthz(b"")) == ["success"]


def test_grpc_requests_are_counted_in_rays_metrics(stub):
    import dservetest_pb2 as pb2
    deploy_greeter(stub, "gm")
    md = (("application", "gm"),)
    before = scrape_all()
    for _ in range(4):
        stub.SayHello(pb2.HelloRequest(name="m"), metadata=md)
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            stub.Fail(pb2.HelloRequest(), metadata=md)

    def counted(name, **labels):
        return value(scrape_all(), name, application="gm", **labels) - value(before, name, application="gm", **labels)
    wait_for(lambda: counted("ray_serve_num_grpc_requests_total") == 6, timeout=20, what="6 gRPC requests counted")
    assert counted("ray_serve_num_grpc_requests_total", route="/dservetest.Greeter/SayHello", status_code="OK") == 4
    assert counted("ray_serve_num_grpc_error_requests_total", route="/dservetest.Greeter/Fail",
                   error_code="INTERNAL") == 2
    assert counted("ray_serve_grpc_request_latency_ms_count") == 6
