"""HTTP load generators: wrk when installed (Debian package ``wrk``), else a
small asyncio keep-alive client. Both drive a fixed duration on 127.0.0.1.
``post_load`` sends a fixed JSON body (asyncio client only)."""
from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import time
from typing import Dict, Optional
from urllib.parse import urlsplit

__all__ = ["http_load", "post_load", "generator_name"]


def generator_name() -> str:
    return "wrk" if shutil.which("wrk") else "asyncio-client"


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def _wrk(url: str, connections: int, seconds: float) -> Dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(seconds)))}s", "--latency", "--timeout", "10s", url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors, "requests": total}


async def _client(url: str, connections: int, seconds: float, body: Optional[bytes] = None) -> Dict[str, float]:
    parts = urlsplit(url)
    if body is None:
        request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}\r\n\r\n".encode()
    else:
        request = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        while time.monotonic() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 2"):
                errors += 1
        writer.close()

    begin = time.monotonic()
    await asyncio.gather(*[one() for _ in range(connections)])
    elapsed = time.monotonic() - begin
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "errors": errors,
        "requests": len(latencies),
    }


def http_load(url: str, connections: int, seconds: float) -> Dict[str, float]:
    if shutil.which("wrk"):
        return _wrk(url, connections, seconds)
    return asyncio.run(_client(url, connections, seconds))


def post_load(url: str, body: bytes, connections: int, seconds: float) -> Dict[str, float]:
    """``connections`` keep-alive clients POSTing ``body`` (JSON) back to back for ``seconds``."""
    return asyncio.run(_client(url, connections, seconds, body))
