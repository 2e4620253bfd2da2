"""A soak with churn: deploys, deletes, client churn; RSS of the scheduler and workers over time.

    python -m benchmarks.soak --minutes 30

Runs a ``dask scheduler --preload dserve`` and two ``dask worker`` processes (so the
scheduler's memory is its own, not this driver's), then until time is up, in a loop:
a steady application under HTTP load from short-lived clients (a new connection
every few requests) and handle calls from fresh handles; every ``--churn-s`` a
churn application is redeployed with a new version and another one deleted.
Every 30 s it prints one JSON line with each process's RSS; at the end a summary
with the growth after warm-up (the first ``--warmup-minutes``), which should be
flat. Traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List

import httpx
import psutil

from .systems import free_port


def _spawn(args: List[str], env: Dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _http_clients(url: str, stop: threading.Event, counts: Dict[str, int], lock: threading.Lock) -> None:
    """Short-lived clients: a new connection every 20 requests."""
    while not stop.is_set():
        with httpx.Client(timeout=30) as client:
            for _ in range(20):
                try:
                    ok = client.get(url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    counts["ok" if ok else "failed"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=3.0)
    parser.add_argument("--churn-s", type=float, default=10.0)
    args = parser.parse_args()

    import dserve as serve

    port, http_port = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="error")
    procs = [_spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                     "--dashboard-address", "127.0.0.1:0", "--preload", "dserve",
                     "--dserve-http-port", str(http_port), "--dserve-rest-port", "-1"], env)]
    try:
        time.sleep(2)
        for _ in range(2):
            procs.append(_spawn(["distributed.cli.dask_worker", address, "--nthreads", "2", "--no-nanny",
                                 "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"], env))
        serve.start(address=address)

        @serve.deployment(num_replicas=2)
        class Steady:
            async def __call__(self, request=None) -> str:
                return "ok"

        @serve.deployment
        class Churn:
            def __init__(self, version: int) -> None:
                self.version = version

            async def __call__(self, request=None) -> int:
                return self.version

        serve.run(Steady.bind(), name="steady", route_prefix="/steady")
        url = f"http://127.0.0.1:{http_port}/steady"
        stop, lock = threading.Event(), threading.Lock()
        counts = {"ok": 0, "failed": 0, "handle_ok": 0, "handle_failed": 0, "deploys": 0, "deletes": 0}
        clients = [threading.Thread(target=_http_clients, args=(url, stop, counts, lock), daemon=True)
                   for _ in range(4)]
        for t in clients:
            t.start()
        watched = {"scheduler": psutil.Process(procs[0].pid),
                   **{f"worker{i}": psutil.Process(p.pid) for i, p in enumerate(procs[1:])}}
        samples: List[Dict[str, float]] = []
        start = time.monotonic()
        end = start + args.minutes * 60
        next_sample = next_churn = start
        version = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_churn:
                version += 1
                stale = f"churn{(version + 1) % 3}"  # two churn apps live at once: room for the next
                if stale in serve.status().applications:
                    serve.delete(stale)
                    counts["deletes"] += 1
                name = f"churn{version % 3}"
                serve.run(Churn.bind(version), name=name, route_prefix=f"/{name}")
                counts["deploys"] += 1
                next_churn = now + args.churn_s
            try:  # a fresh handle each time: handle churn
                assert serve.get_app_handle("steady").remote().result(timeout_s=30) == "ok"
                counts["handle_ok"] += 1
            except Exception:  # noqa: BLE001 - counted
                counts["handle_failed"] += 1
            if now >= next_sample:
                rss = {name: p.memory_info().rss / 2**20 for name, p in watched.items()}
                sample = {"minute": round((now - start) / 60, 2), **{k: round(v, 1) for k, v in rss.items()},
                          **counts}
                samples.append(sample)
                print(json.dumps(sample), flush=True)
                next_sample = now + 30
            time.sleep(0.05)
        stop.set()
        for t in clients:
            t.join(60)
        warm = [s for s in samples if s["minute"] >= args.warmup_minutes] or samples
        summary = {"minutes": args.minutes, **counts,
                   **{f"{name}_growth_after_warmup_mib": round(warm[-1][name] - warm[0][name], 1)
                      for name in watched},
                   **{f"{name}_rss_end_mib": warm[-1][name] for name in watched}}
        print(json.dumps({"summary": summary}), flush=True)
        serve.shutdown()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait(30)


if __name__ == "__main__":
    main()
