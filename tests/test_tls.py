"""dserve on TLS Dask clusters, end to end, and HTTPS proxies.

The same composed application (handles, HTTP, a streaming response, a killed worker)
runs on ``LocalCluster(security=Security.temporary())``; the proxies answer HTTPS with a
certificate the client verifies; and (slow set) a TLS scheduler and workers started
from the command line serve it too.
"""
from __future__ import annotations

import datetime
import ipaddress
import asyncio
import os
import signal
import ssl
import subprocess
import sys

import dask
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from distributed import Client, LocalCluster, Security
from starlette.responses import StreamingResponse

import dserve as serve
from dserve.runtime import current_runtime
from dserve.serialization import loads
from dserve.wire import HELLO, RESULT
from conftest import free_port, proxy_url, wait_for
from test_data_plane import Pid, call, data_address, exchange, replica_on_worker


@serve.deployment(num_replicas=2)
class Doubler:
    def __call__(self, x: int) -> int:
        return 2 * x

    async def count(self, n: int):
        for i in range(n):
            yield i


@serve.deployment
class Front:
    def __init__(self, doubler):
        self.doubler = doubler

    async def __call__(self, request):
        if request.url.path.endswith("/stream"):
            async def chunks():
                async for i in self.doubler.options(method_name="count", stream=True).remote(3):
                    yield f"{i};"
            return StreamingResponse(chunks(), media_type="text/plain")
        return {"doubled": await self.doubler.remote(int(request.query_params["x"]))}


def exercise(url: str, **client_kwargs) -> None:
    """Handles, HTTP and a streaming response through the composed application."""
    with httpx.Client(timeout=30, **client_kwargs) as http:
        assert http.get(f"{url}/tls", params={"x": 21}).json() == {"doubled": 42}
        assert http.get(f"{url}/tls/stream").text == "0;1;2;"
    doubler = serve.get_deployment_handle("Doubler", "tls")
    assert [doubler.remote(i).result(timeout_s=30) for i in range(4)] == [0, 2, 4, 6]
    assert list(doubler.options(method_name="count", stream=True).remote(3)) == [0, 1, 2]


def self_signed(tmp_path) -> tuple:
    """A key and a certificate for 127.0.0.1 (its own CA)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


def test_a_composed_app_on_a_tls_local_cluster_with_https_proxies(tmp_path):
    security = Security.temporary()
    key, cert = self_signed(tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=2, security=security, dashboard_address=":0") as cluster, \
            Client(cluster, security=security) as client:
        assert cluster.scheduler_address.startswith("tls://")
        serve.start(http_options={"port": free_port(), "ssl_keyfile": key, "ssl_certfile": cert})
        try:
            serve.run(Front.bind(Doubler.bind()), name="tls", route_prefix="/tls")
            url = proxy_url().replace("http://", "https://")
            exercise(url, verify=cert)
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(f"{url}/tls", params={"x": 1}, timeout=10)  # verification is on by default
            # a killed worker: its replicas are replaced and traffic recovers
            pids = client.run(os.getpid)
            victim = sorted(pids)[-1]
            os.kill(pids[victim], signal.SIGKILL)
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 2
                     and victim not in client.scheduler_info()["workers"], timeout=60, what="a replacement worker")
            wait_for(lambda: serve.status().applications["tls"].status == "RUNNING"
                     and serve.status().applications["tls"].deployments["Doubler"].replica_states == {"RUNNING": 2},
                     timeout=60, what="replicas replaced")
            wait_for(lambda: _answers(proxy_url().replace("http://", "https://"), cert), timeout=60,
                     what="HTTPS traffic after the kill")
            exercise(proxy_url().replace("http://", "https://"), verify=cert)
        finally:
            serve.shutdown()


def test_the_embedded_cluster_is_made_secure_with_one_setting():
    with dask.config.set({"dserve.embedded.security": "temporary"}):
        serve.start(http_options={"port": free_port()})
    try:
        assert current_runtime().scheduler_address.startswith("tls://")
        serve.run(Front.bind(Doubler.bind()), name="tls", route_prefix="/tls")
        exercise(proxy_url())
    finally:
        serve.shutdown()


def _answers(url: str, cert: str) -> bool:
    try:
        return httpx.get(f"{url}/tls", params={"x": 2}, verify=cert, timeout=5).json() == {"doubled": 4}
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_a_tls_cluster_started_from_the_command_line(tmp_path):
    temporary = Security.temporary()
    ca, key = tmp_path / "ca.pem", tmp_path / "key.pem"
    ca.write_text(temporary.tls_ca_file)
    key.write_text(temporary.tls_scheduler_key)
    tls = ["--tls-ca-file", str(ca), "--tls-cert", str(ca), "--tls-key", str(key)]
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="warning", DASK_DSERVE__REST_PORT="-1")
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", str(port), "--protocol", "tls", "--dashboard-address", ":0",
                                   "--preload", "dserve", *tls], env=env)]
    try:
        for _ in range(2):
            processes.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                               "--nthreads", "2", "--host", "127.0.0.1", "--dashboard-address",
                                               ":0", *tls], env=env))
        security = Security(tls_ca_file=str(ca), tls_client_cert=str(ca), tls_client_key=str(key),
                            require_encryption=True)
        with Client(address, security=security, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        serve.start(address=address, security=security, http_options={"port": free_port()})
        try:
            serve.run(Front.bind(Doubler.bind()), name="tls", route_prefix="/tls")
            exercise(proxy_url())
        finally:
            serve.shutdown()
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_on_a_tls_cluster_the_data_plane_speaks_only_tls():
    security = Security.temporary()
    with LocalCluster(n_workers=1, threads_per_worker=2, security=security, dashboard_address=":0") as cluster, \
            Client(cluster, security=security):
        serve.start(http_options={"port": 0})
        try:
            handle = serve.run(Pid.bind(), name="plane", route_prefix=None)
            assert handle.remote(4).result(timeout_s=30)["x"] == 4
            worker, key = replica_on_worker("plane")
            info = asyncio.run(data_address(worker, security))
            assert info["tls"] is True
            # plaintext on the TLS port: the handshake fails, nothing is answered
            got = asyncio.run(exchange(info["host"], info["port"], [[{HELLO: info["secret"]}], [call(key, 1)]]))
            assert got == ["closed"]
            # TLS without a client certificate the cluster's CA signed: refused too
            anonymous = ssl.create_default_context()
            anonymous.check_hostname, anonymous.verify_mode = False, ssl.CERT_NONE
            with pytest.raises((ssl.SSLError, ConnectionError)):
                asyncio.run(_tls_roundtrip(info, key, anonymous))
            # with the cluster's client certificate: answered
            ctx = security.get_connection_args("client")["ssl_context"]
            got = asyncio.run(exchange(info["host"], info["port"], [[{HELLO: info["secret"]}], [call(key, 9)]],
                                       ssl_context=ctx))
            assert loads(got[0][0][RESULT])["x"] == 9
        finally:
            serve.shutdown()


async def _tls_roundtrip(info: dict, key: str, ctx: ssl.SSLContext) -> None:
    got = await exchange(info["host"], info["port"], [[{HELLO: info["secret"]}], [call(key, 1)]], ssl_context=ctx)
    if got == ["closed"]:
        raise ConnectionError("closed")
