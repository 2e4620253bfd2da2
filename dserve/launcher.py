"""The local cluster ``dserve start`` launches: spawn it, record it, stop it.

A scheduler (with dserve preloaded) and workers run as detached processes in
their own sessions, every listening socket on 127.0.0.1 (Dask dashboards
included) unless asked otherwise; ``~/.dserve/cluster.json`` (``DSERVE_HOME``)
records their addresses, process ids and each process's start time, so later
commands find them and ``stop_launched`` signals only processes that provably
are the ones it started (a stale record's reused pid is left alone). With the
default isolated placement (``dserve.placement``) one more worker, with one thread
and the ``proxy`` resource, hosts the HTTP/gRPC proxy alone, as on the embedded
cluster: replicas never share its process.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Optional

import httpx

from .auth import bearer_header, ensure_token, home_dir
from .cluster import serving_env
from .config import EMBEDDED_PROXY_THREADS, PROXY_RESOURCE
from .controller.placement import placement_mode

__all__ = ["LaunchError", "home", "state_file", "launched", "running", "launch_local", "stop_launched", "ours",
           "identity", "alive"]


class LaunchError(Exception):
    """The launched cluster did not come up."""


def home() -> str:
    return home_dir()


def state_file() -> str:
    return os.path.join(home(), "cluster.json")


def launched() -> Optional[Dict[str, Any]]:
    try:
        with open(state_file()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def running() -> Optional[Dict[str, Any]]:
    """The record of the cluster ``dserve start`` launched when its scheduler (the first
    recorded process) is alive and provably the process it started; else None."""
    record = launched()
    if not record or not record.get("pids"):
        return None
    return record if record["pids"][0] in ours(record) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(http_host: str, http_port: int, proxy_location: str, rest_port: int, n_workers: int,
                 nthreads: int, grpc_options: Dict[str, Any], rest_host: str = "127.0.0.1") -> Dict[str, Any]:
    """Spawn a scheduler (with dserve preloaded) and workers in their own sessions; record them."""
    os.makedirs(home(), exist_ok=True)
    token = ensure_token()  # before the scheduler starts: it and every client read the same file
    port, dashboard_port = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    log_path = os.path.join(home(), "cluster.log")
    log = open(log_path, "ab")
    env = dict(os.environ)
    env.update(serving_env())  # Dask's background work at serving rates, uvloop
    if grpc_options["grpc_servicer_functions"]:
        env["DASK_DSERVE__GRPC_OPTIONS"] = json.dumps(grpc_options)
    common = dict(stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd(),
                  env=env)
    pids: list = []
    identities: Dict[str, list] = {}
    state = {"address": address, "rest_address": f"http://{_url_host(rest_host)}:{rest_port}", "pids": pids,
             "identities": identities, "log": log_path, "serve_page": f"http://127.0.0.1:{dashboard_port}/serve"}

    def spawn(argv: list) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", *argv], **common)
        pids.append(process.pid)
        identities[str(process.pid)] = identity(process.pid)
        with open(state_file(), "w") as f:
            json.dump(state, f)
        return process

    scheduler = spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                       "--dashboard-address", f"127.0.0.1:{dashboard_port}", "--preload", "dserve",
                       "--dserve-http-host", http_host, "--dserve-http-port", str(http_port),
                       "--dserve-proxy-location", proxy_location, "--dserve-rest-port", str(rest_port),
                       "--dserve-rest-host", rest_host])
    worker = ["distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    if proxy_location.lower() != "disabled" and placement_mode() == "isolated":
        spawn([*worker, "--nthreads", str(EMBEDDED_PROXY_THREADS), "--resources", f"{PROXY_RESOURCE}=1",
               "--name", "dserve-proxy"])
    for _ in range(n_workers):
        spawn([*worker, "--nthreads", str(nthreads)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(state["rest_address"] + "/api/serve/applications/", headers=bearer_header(token),
                               timeout=2)
            if answer.status_code == 200:
                break
        except httpx.HTTPError:
            pass  # not up yet
        if scheduler.poll() is not None:
            raise LaunchError(f"the scheduler exited; see {log_path}")
        time.sleep(0.2)
    else:
        raise LaunchError(f"the REST API did not come up at {state['rest_address']}; see {log_path}")
    return state


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def identity(pid: int) -> list:
    """What tells this process from a later one with the same pid: its start time (clock
    ticks since boot, fixed at fork). Empty where there is no /proc to read it from."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return [f.read().rpartition(")")[2].split()[19]]
    except (OSError, IndexError):
        return []


def ours(record: Dict[str, Any]) -> list:
    """The recorded pids that still are the processes ``dserve start`` launched."""
    identities = record.get("identities") or {}
    found = []
    for pid in record.get("pids", []):
        expected = identities.get(str(pid))
        if expected and identity(pid) == expected:
            found.append(pid)
    return found


def stop_launched(record: Dict[str, Any]) -> None:
    """Stop the processes ``dserve start`` launched (SIGTERM, then SIGKILL after 15s); a pid
    that now belongs to another process (stale record) is never signalled."""
    pids = ours(record)
    for pid in reversed(pids):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 15
    for pid in pids:
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    try:
        os.remove(state_file())
    except FileNotFoundError:
        pass  # removed meanwhile by another `dserve stop`


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True
