"""Run the benchmark scenarios on each available system, interleaved, and report.

    python -m benchmarks                       # dserve and the bare-uvicorn baseline
    python -m benchmarks --systems dserve,ray,bare --rounds 3 --seconds 5
    python -m benchmarks --systems dserve --scenarios embeddings --rounds 1   # a real model (opt-in)
    python -m benchmarks --systems dserve-isolated,dserve-colocated,bare --scenarios cpu

Each measurement prints one JSON line; a table of medians and ratios follows.
Loads are bounded in time and sent only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, List

import httpx

from .loadgen import generator_name, http_load
from .systems import SYSTEMS, wait_http

RESULTS: List[Dict[str, Any]] = []


def emit(system: str, scenario: str, **fields: Any) -> None:
    row = {"system": system, "scenario": scenario, **fields}
    RESULTS.append(row)
    print(json.dumps(row), flush=True)


def scenario_http_noop(sys_: Any, seconds: float, replicas: int, connections: int, **opts: Any) -> None:
    url = sys_.deploy("noop", replicas, **opts)
    if url is None:
        return
    wait_http(url)
    http_load(url, connections, 1)  # warm-up
    result = http_load(url, connections, seconds)
    emit(sys_.name, f"http_noop r{replicas} c{connections}{_tag(opts)}", **result)


def scenario_cpu(sys_: Any, seconds: float, connections: int = 16) -> None:
    """1 ms of pure-Python CPU per request on 2 replicas. The baseline: two bare uvicorn
    processes running the same handler, each on its own port with its own load generator.
    dserve gets the same two load generators, both at its proxy. Half the connections each."""
    if sys_.name == "bare":
        urls = [url + "cpu" for url in sys_.processes(2)]
    else:
        url = sys_.deploy("cpu", 2)
        if url is None:
            return
        urls = [url, url]
    for url in set(urls):
        wait_http(url)
    split_load(urls, connections, 1)  # warm-up
    emit(sys_.name, f"cpu_1ms r2 c{connections}", **split_load(urls, connections, seconds))
    if sys_.name == "bare":
        sys_.keep(1)


def split_load(urls: List[str], connections: int, seconds: float) -> Dict[str, float]:
    """One load generator per URL, all at once, ``connections`` split between them: requests,
    rates and errors summed; p50 the mean of the generators' medians, p99 the worst."""
    import threading

    results: List[Dict[str, float]] = [{} for _ in urls]

    def run(i: int, url: str) -> None:
        results[i] = http_load(url, max(1, connections // len(urls)), seconds)

    threads = [threading.Thread(target=run, args=(i, url)) for i, url in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"rps": sum(r["rps"] for r in results), "p50_ms": statistics.mean(r["p50_ms"] for r in results),
            "p99_ms": max(r["p99_ms"] for r in results), "errors": sum(r["errors"] for r in results),
            "requests": sum(r["requests"] for r in results)}


def scenario_http_compose(sys_: Any, seconds: float, connections: int = 16, **opts: Any) -> None:
    if sys_.name == "bare":
        return
    url = sys_.deploy("compose", 1, **opts)
    wait_http(url)
    http_load(url, connections, 1)
    emit(sys_.name, f"http_compose c{connections}{_tag(opts)}", **http_load(url, connections, seconds))


def scenario_handle(sys_: Any, seconds: float, **opts: Any) -> None:
    if sys_.name == "bare":
        return
    sys_.deploy("noop", 1, **opts)
    handle = sys_.handle("noop")
    handle.remote().result()
    lat = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        handle.remote().result()
        lat.append(time.perf_counter() - t)
    emit(sys_.name, f"handle c1{_tag(opts)}", calls_per_s=len(lat) / seconds, p50_ms=statistics.median(lat) * 1000)

    async def many(inflight: int) -> Dict[str, float]:
        lat2: list = []
        stop = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                await handle.remote()
                lat2.append(time.perf_counter() - t0)

        t0 = time.monotonic()
        await asyncio.gather(*[worker() for _ in range(inflight)])
        return {"calls_per_s": len(lat2) / (time.monotonic() - t0), "p50_ms": statistics.median(lat2) * 1000}

    emit(sys_.name, f"handle c100{_tag(opts)}", **asyncio.run(many(100)))


def scenario_stream(sys_: Any, seconds: float, **opts: Any) -> None:
    if sys_.name == "bare":
        return
    url = sys_.deploy("stream", 1, **opts)
    wait_http(url)
    ttfb = []
    with httpx.Client(timeout=10) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            with client.stream("GET", url) as r:
                for i, _ in enumerate(r.iter_raw()):
                    if i == 0:
                        ttfb.append(time.perf_counter() - t)
    emit(sys_.name, "stream_http", ttfb_p50_ms=statistics.median(ttfb) * 1000)
    handle = sys_.handle("stream").options(stream=True, method_name="chunks")
    first, chunks, t0 = [], 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        t = time.perf_counter()
        for i, _ in enumerate(handle.remote(100)):
            if i == 0:
                first.append(time.perf_counter() - t)
            chunks += 1
    emit(sys_.name, "stream_handle", chunks_per_s=chunks / (time.monotonic() - t0),
         first_chunk_p50_ms=statistics.median(first) * 1000)


def scenario_batching(sys_: Any, seconds: float) -> None:
    if sys_.name == "bare":
        return
    for kind in ("unbatched", "batched"):
        sys_.deploy(kind, 1)
        handle = sys_.handle(kind)
        handle.remote(0).result()

        async def drive() -> float:
            done = 0
            stop = time.monotonic() + seconds

            async def caller() -> None:
                nonlocal done
                while time.monotonic() < stop:
                    await handle.remote(1)
                    done += 1

            t0 = time.monotonic()
            await asyncio.gather(*[caller() for _ in range(64)])
            return done / (time.monotonic() - t0)

        emit(sys_.name, f"{kind} c64", calls_per_s=asyncio.run(drive()))


def scenario_startup(sys_: Any) -> None:
    """From serve.run to the first 200 (the cluster start is reported separately)."""
    if sys_.name == "bare":
        return
    t0 = time.monotonic()
    url = sys_.deploy("noop", 1)
    wait_http(url)
    deploy_s = time.monotonic() - t0
    emit(sys_.name, "startup", cluster_s=sys_.cluster_start_s, run_to_first_200_s=deploy_s,
         total_s=sys_.cluster_start_s + deploy_s)


def _replicas(sys_: Any) -> int:
    dep = next(iter(sys_.serve.status().applications["bench"].deployments.values()))
    states = dep.replica_states
    return int(states.get("RUNNING", 0))


def scenario_autoscale(sys_: Any, seconds: float) -> None:
    """Idle -> burst -> idle: seconds to reach the new target, to scale back, errors."""
    import threading

    if sys_.name == "bare":
        return
    url = sys_.deploy("autoscale", 1)
    wait_http(url)
    result: Dict[str, Any] = {}
    load = threading.Thread(target=lambda: result.update(http_load(url, 32, max(seconds, 8))))
    t0 = time.monotonic()
    load.start()
    up = None
    while load.is_alive():
        if up is None and _replicas(sys_) >= 4:
            up = time.monotonic() - t0
        time.sleep(0.1)
    t1 = time.monotonic()
    down = None
    while time.monotonic() - t1 < 60:
        if _replicas(sys_) == 1:
            down = time.monotonic() - t1
            break
        time.sleep(0.1)
    emit(sys_.name, "autoscale step", burst_to_4_replicas_s=up if up is not None else -1,
         idle_to_1_replica_s=down if down is not None else -1, errors=result.get("errors", -1))
    url = sys_.deploy("zero", 1)
    time.sleep(1.0)
    t = time.monotonic()
    with httpx.Client(timeout=60) as client:
        ok = client.get(url).status_code == 200
    emit(sys_.name, "autoscale from zero", first_response_s=time.monotonic() - t, errors=0 if ok else 1)


def scenario_soak(sys_: Any, seconds: float) -> None:
    """A long run at moderate concurrency: requests, errors and RSS growth."""
    url = sys_.deploy("noop", 1)
    wait_http(url)
    http_load(url, 16, 2)
    before = _rss(sys_)
    result = http_load(url, 16, max(seconds * 2, 8))
    after = _rss(sys_)
    emit(sys_.name, "soak c16", requests=result["requests"], errors=result["errors"],
         rss_start_mib=before / 2**20, rss_end_mib=after / 2**20, rss_growth_pct=(after - before) / before * 100)


def _rss(sys_: Any) -> int:
    import psutil

    total = 0
    for pid in sys_.pids():
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def scenario_memory(sys_: Any, seconds: float) -> None:
    import psutil

    sys_.deploy("noop", 1)
    time.sleep(1)
    rss = 0
    pids = sys_.pids()
    for pid in pids:
        try:
            rss += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    emit(sys_.name, "idle_memory", rss_mib=rss / 2**20, processes=len(pids))


def _tag(opts: Dict[str, Any]) -> str:
    return "".join(f" {k}={v}" for k, v in sorted(opts.items()))


def table() -> None:
    by: Dict[tuple, List[Dict[str, Any]]] = {}
    for row in RESULTS:
        by.setdefault((row["scenario"], row["system"]), []).append(row)
    scenarios = sorted({s for s, _ in by}, key=lambda s: [r["scenario"] for r in RESULTS].index(s))
    print(f"\n{'scenario':34} {'system':8} {'metric':18} {'median':>10} {'vs bare':>8} {'vs ray':>8}")
    for scenario in scenarios:
        for (s, system), rows in by.items():
            if s != scenario:
                continue
            for metric in [k for k in rows[0] if k not in ("system", "scenario")]:
                value = statistics.median(r[metric] for r in rows)
                ratios = []
                for other in ("bare", "ray"):
                    peer = by.get((scenario, other)) or by.get((scenario.split(" max_ongoing")[0], other))
                    if peer and other != system and metric in peer[0]:
                        base = statistics.median(r[metric] for r in peer)
                        ratios.append(f"{value / base:.2f}x" if base else "-")
                    else:
                        ratios.append("")
                print(f"{scenario:34} {system:8} {metric:18} {value:10.2f} {ratios[0]:>8} {ratios[1]:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="dserve,bare,ray", help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--scenarios", default="startup,http,cpu,compose,handle,stream,batch,autoscale,soak,memory,grpc",
                        help="comma-separated; `embeddings` (a real model, examples/embeddings) is opt-in")
    parser.add_argument("--embed-texts", type=int, default=20_000, help="texts in the offline embeddings run (0: online only)")
    args = parser.parse_args()
    wanted = args.scenarios.split(",")
    systems = []
    for name in args.systems.split(","):
        sys_ = SYSTEMS[name]()
        if not sys_.available:
            print(json.dumps({"system": name, "skipped": sys_.note}), flush=True)
            continue
        systems.append(sys_)
    print(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                   "python": platform.python_version(), "load_generator": generator_name()}}))
    plan: List[Callable[[Any], None]] = []
    s = args.seconds
    if "http" in wanted:
        for replicas in (1, 2):
            for conns in (16, 64):
                plan.append(lambda x, r=replicas, c=conns: scenario_http_noop(x, s, r, c))
    simple = {"cpu": scenario_cpu, "compose": scenario_http_compose, "handle": scenario_handle, "stream": scenario_stream,
              "batch": scenario_batching, "autoscale": scenario_autoscale, "soak": scenario_soak}
    for key, scenario in simple.items():
        if key in wanted:
            plan.append(lambda x, f=scenario: f(x, s))
    if "embeddings" in wanted:
        from . import embeddings

        plan.append(lambda x: embeddings.scenario(x, s, emit, texts=args.embed_texts))
    # systems run one at a time (they share 2 cores); scenarios interleave A B A B across rounds
    for _ in range(args.rounds):
        for sys_ in systems:
            sys_.start()
            if getattr(sys_, "cluster_start_s", None) is not None:
                emit(sys_.name, "cluster_start", seconds=sys_.cluster_start_s)
            if "startup" in wanted:
                scenario_startup(sys_)
            for step in plan:
                step(sys_)
            if sys_.name == "ray" and "http" in wanted:  # Ray Serve at its best setting too
                for conns in (16, 64):
                    scenario_http_noop(sys_, s, 1, conns, max_ongoing_requests=256)
            if "handle" in wanted:  # every system at its best setting too (the default caps a replica at 5)
                scenario_handle(sys_, s, max_ongoing_requests=256)
            if "memory" in wanted:
                scenario_memory(sys_, s)
            sys_.stop()
    if "grpc" in wanted:
        from . import grpc_bench
        from .systems import free_port

        grpc_bench.run(s, emit, free_port, rounds=args.rounds)
    table()


if __name__ == "__main__":
    main()
