"""HTTP proxy limits: 431 before the body, 413 as the body arrives, 408 for slow
headers and bodies, 503 beyond max_connections, and slow-loris sockets that do
not stop the proxy answering everyone else. Raw sockets where the exact bytes
and their timing matter; httpx where an ordinary client is the point."""
import selectors
import socket
import threading
import time

import httpx
import pytest

import dserve as serve
from conftest import free_port, proxy_details, scrape_all, value, wait_for

LIMITS = {"max_request_header_bytes": 4096, "max_request_body_bytes": 1000,
          "request_header_timeout_s": 1.0, "request_body_timeout_s": 1.0}


@serve.deployment
class Echo:
    async def __call__(self, request):
        return str(len(await request.body()))


def start_proxy(**http_options) -> int:
    """(Re)start the proxy with these options on a fresh port; wait until it serves."""
    port = free_port()
    serve.start(http_options={"port": port, **http_options})
    wait_for(lambda: [p for p in proxy_details().values() if p["status"] == "HEALTHY" and p["port"] == port],
             what=f"a healthy proxy on port {port}")
    return port


@pytest.fixture(scope="module")
def port(serve_instance):
    port = start_proxy(**LIMITS)
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    return port


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the proxy sends until it closes the connection (or the socket times out)."""
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# ---- 431: request line and headers ----
@pytest.mark.parametrize("path", ["/echo", "/-/routes", "/-/healthz", "/nowhere"])
def test_oversized_headers_are_431_on_every_path(port, path):
    r = httpx.get(f"http://127.0.0.1:{port}{path}", headers={"x-big": "a" * 5000}, timeout=10)
    assert r.status_code == 431
    assert r.headers["connection"] == "close"


def test_431_comes_before_the_body_is_read(port):
    with connect(port) as sock:  # the body it announces never comes
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\nx-big: " + b"a" * 5000 + b"\r\n\r\n")
        assert status_of(read_answer(sock)) == 431


def test_431_for_headers_that_never_end(port):
    with connect(port) as sock:  # 10 KiB of one header, no end of headers: counted as it arrives
        sock.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 10_000)
        answer = read_answer(sock)
    assert status_of(answer) == 431
    assert answer.endswith(b"Request line and headers exceed 4096 bytes.")


def test_headers_at_the_limit_pass(port):
    r = httpx.get(f"http://127.0.0.1:{port}/echo", headers={"x-big": "a" * 3000}, timeout=10)
    assert (r.status_code, r.text) == (200, "0")


# ---- 413: body ----
def test_declared_body_over_the_limit_is_413_before_it_is_sent(port):
    with connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1001\r\n\r\n")
        answer = read_answer(sock)
    assert status_of(answer) == 413
    assert answer.endswith(b"Request body is 1001 bytes; the limit is 1000.")


def test_chunked_body_is_counted_as_it_arrives(port):
    with connect(port) as sock:  # 3 x 500 bytes, and never the last chunk: the proxy stops at the limit
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(3):
            sock.sendall(b"1f4\r\n" + b"b" * 500 + b"\r\n")
        answer = read_answer(sock)
    assert status_of(answer) == 413
    assert answer.endswith(b"Request body exceeds 1000 bytes.")


def test_bodies_at_the_limit_pass_streamed_or_not(port):
    url = f"http://127.0.0.1:{port}/echo"
    assert httpx.post(url, content=b"c" * 1000, timeout=10).text == "1000"
    streamed = httpx.post(url, content=iter([b"c" * 400, b"c" * 600]), timeout=10)  # chunked
    assert (streamed.status_code, streamed.text) == (200, "1000")
    assert httpx.post(url, content=b"c" * 1001, timeout=10).status_code == 413


# ---- 408: receiving headers and body ----
def test_headers_not_complete_in_time_are_408(port):
    with connect(port) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\n")
        started = time.monotonic()
        answer = read_answer(sock)
    assert status_of(answer) == 408
    assert answer.endswith(b"Request headers not received within 1.0s.")
    assert 0.9 <= time.monotonic() - started < 5


def test_a_trickled_header_does_not_keep_the_socket(port):
    with connect(port, timeout=0.25) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\nx-slow: ")
        started, answer = time.monotonic(), b""
        while time.monotonic() - started < 10:  # a byte every 0.25 s, until the proxy closes
            try:
                sock.sendall(b"a")
            except OSError:
                pass
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            answer += data
    assert status_of(answer) == 408
    assert time.monotonic() - started < 5


def test_body_not_complete_in_time_is_408(port):
    with connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n" + b"d" * 10)
        answer = read_answer(sock)
    assert status_of(answer) == 408
    assert answer.endswith(b"Request body not received within 1.0s.")


def test_a_request_ended_mid_body_is_counted_with_its_status(port):
    """A request held until its body is complete never reached an ASGI app: the proxy counts it,
    whether it rejected it (408, 413), could not parse it (400) or its client left (499)."""
    def counted(status: str) -> float:
        return value(scrape_all(), "ray_serve_num_http_requests_total", application="echo", route="/echo",
                     method="POST", status_code=status)
    statuses = ("408", "413", "400", "499")
    before = {status: counted(status) for status in statuses}
    with connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n" + b"d" * 10)
        assert status_of(read_answer(sock)) == 408
    with connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(3):
            sock.sendall(b"1f4\r\n" + b"b" * 500 + b"\r\n")
        assert status_of(read_answer(sock)) == 413
    with connect(port) as sock:  # a malformed chunk
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n")
        assert status_of(read_answer(sock)) == 400
    with connect(port) as sock:  # a client that leaves mid-body
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n" + b"d" * 10)
    wait_for(lambda: {status: counted(status) for status in statuses} == {
        status: before[status] + 1 for status in statuses}, timeout=20, what="each status counted once")


def test_a_connection_that_sends_nothing_is_closed(port):
    with connect(port) as sock:
        started = time.monotonic()
        assert read_answer(sock) == b""
    assert 0.9 <= time.monotonic() - started < 5


# ---- 503: connections ----
def test_connections_beyond_max_connections_get_503(serve_instance):
    port = start_proxy(max_connections=5, request_header_timeout_s=60.0)
    held = []
    try:
        def sixth_is_503():
            held.extend(connect(port) for _ in range(5 - len(held)))
            return httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=10).status_code == 503

        wait_for(sixth_is_503, timeout=15, what="a 503 beyond 5 connections")
        r = httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=10)
        assert (r.status_code, r.text) == (503, "This proxy is at its limit of 5 open connections; try again later.")
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=10).status_code == 200,
             timeout=15, what="connections accepted again")


# ---- slow loris ----
@pytest.mark.slow
def test_slow_loris_sockets_do_not_stop_the_proxy(serve_instance):
    port = start_proxy(request_header_timeout_s=3.0)
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    n = 1000
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        sock = connect(port)
        sock.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\nx-slow: ")
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, bytearray())
        socks.append(sock)
    statuses, latencies, stop = [], [], threading.Event()

    def normal_client():
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                t0 = time.monotonic()
                statuses.append(client.get(f"http://127.0.0.1:{port}/echo").status_code)
                latencies.append(time.monotonic() - t0)

    client = threading.Thread(target=normal_client)
    client.start()
    answers = {}
    deadline = time.monotonic() + 30
    try:
        while len(answers) < n and time.monotonic() < deadline:
            for sock in socks:  # one more header byte on every open socket, every 0.5 s
                if sock not in answers:
                    try:
                        sock.send(b"a")
                    except OSError:
                        pass
            until = time.monotonic() + 0.5
            while time.monotonic() < until:
                for key, _ in sel.select(timeout=max(until - time.monotonic(), 0)):
                    try:
                        data = key.fileobj.recv(4096)
                    except OSError:
                        data = b""
                    key.data.extend(data)
                    if not data:
                        answers[key.fileobj] = bytes(key.data)
                        sel.unregister(key.fileobj)
    finally:
        stop.set()
        client.join()
        for sock in socks:
            sock.close()
    assert len(answers) == n
    assert {status_of(a) for a in answers.values()} == {408}
    assert len(statuses) > 20 and set(statuses) == {200}
    assert max(latencies) < 2.0, max(latencies)
