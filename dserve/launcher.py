"""The local cluster ``dserve start`` launches: spawn it, record it, stop it.

A scheduler (with dserve preloaded) and workers run as detached processes in
their own sessions; ``~/.dserve/cluster.json`` (``DSERVE_HOME``) records their
addresses and process ids so later commands find and stop them.
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

__all__ = ["LaunchError", "home", "state_file", "launched", "launch_local", "stop_launched", "alive"]


class LaunchError(Exception):
    """The launched cluster did not come up."""


def home() -> str:
    return os.environ.get("DSERVE_HOME", os.path.join(os.path.expanduser("~"), ".dserve"))


def state_file() -> str:
    return os.path.join(home(), "cluster.json")


def launched() -> Optional[Dict[str, Any]]:
    try:
        with open(state_file()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(http_host: str, http_port: int, proxy_location: str, rest_port: int, n_workers: int,
                  nthreads: int, grpc_options: Dict[str, Any]) -> Dict[str, Any]:
    """Spawn a scheduler (with dserve preloaded) and workers in their own sessions; record them."""
    os.makedirs(home(), exist_ok=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(os.path.join(home(), "cluster.log"), "ab")
    common = dict(stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd())
    pids = []
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", ":0", "--preload", "dserve", "--dserve-http-host", http_host,
         "--dserve-http-port", str(http_port), "--dserve-proxy-location", proxy_location,
         "--dserve-rest-port", str(rest_port)], **common)
    pids.append(scheduler.pid)
    rest_address = f"http://127.0.0.1:{rest_port}"
    state = {"address": address, "rest_address": rest_address, "pids": pids}
    if grpc_options["grpc_servicer_functions"]:
        common["env"] = dict(os.environ, DASK_DSERVE__GRPC_OPTIONS=json.dumps(grpc_options))
    with open(state_file(), "w") as f:
        json.dump(state, f)
    for _ in range(n_workers):
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                   str(nthreads), "--host", "127.0.0.1"], **common)
        pids.append(worker.pid)
        with open(state_file(), "w") as f:
            json.dump(state, f)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(rest_address + "/api/serve/applications/", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if scheduler.poll() is not None:
            raise LaunchError(f"the scheduler exited; see {os.path.join(home(), 'cluster.log')}")
        time.sleep(0.2)
    else:
        raise LaunchError(f"the REST API did not come up at {rest_address}")
    return state


def stop_launched(record: Dict[str, Any]) -> None:
    """Stop the processes ``dserve start`` launched (SIGTERM, then SIGKILL after 15s)."""
    for pid in reversed(record.get("pids", [])):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 15
    for pid in record.get("pids", []):
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    os.remove(state_file())


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
