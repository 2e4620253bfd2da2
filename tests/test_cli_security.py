"""`dserve start` is safe by default: a 0600 token, no token on any command line, nothing
listening beyond loopback, and every CLI command working with no token flags."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import httpx
import pytest
import yaml

from conftest import free_port, wait_for

APPS_DIR = os.path.join(os.path.dirname(__file__), "apps")


def dserve(*args, env):
    result = subprocess.run([sys.executable, "-m", "dserve.cli", *args], cwd=APPS_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"dserve {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def listening(pids) -> list:
    """(address, port) of every TCP socket in LISTEN state owned by one of ``pids``."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:  # exited meanwhile
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A: LISTEN
                    address, port = local.split(":")
                    found.append((address, int(port, 16)))
    return found


def children(pid: int) -> list:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_start_is_safe_by_default(tmp_path):
    env = dict(os.environ, DSERVE_HOME=str(tmp_path / "home"), DASK_LOGGING__DISTRIBUTED="warning")
    http_port, rest_port = free_port(), free_port()
    dserve("start", "--http-port", str(http_port), "--rest-port", str(rest_port), env=env)
    try:
        token_path = tmp_path / "home" / "auth_token"
        assert stat.S_IMODE(os.stat(token_path).st_mode) == 0o600
        token = token_path.read_text().strip()
        record = json.loads((tmp_path / "home" / "cluster.json").read_text())
        pids = record["pids"] + [c for p in record["pids"] for c in children(p)]  # nannies' workers too

        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert token.encode() not in f.read()
        wait_for(lambda: any(port == http_port for _, port in listening(pids)), timeout=60, what="the proxy")
        exposed = [(a, p) for a, p in listening(pids) if a not in ("0100007F", "00000000000000000000000001000000")]
        assert exposed == []  # only 127.0.0.1 (and ::1): no 0.0.0.0 or ::

        base = f"http://127.0.0.1:{rest_port}/api/serve/applications/"
        assert httpx.get(base).status_code == 401
        assert httpx.get(base, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        config = tmp_path / "serve.yaml"
        config.write_text(yaml.safe_dump({"applications": [
            {"name": "a", "route_prefix": "/a", "import_path": "config_apps:greeter_app"}]}))
        dserve("deploy", str(config), env=env)
        wait_for(lambda: yaml.safe_load(dserve("status", env=env).stdout)["applications"]
                 .get("a", {}).get("status") == "RUNNING", timeout=90, interval=0.5, what="the app RUNNING")
    finally:
        dserve("stop", env=env)
    assert not (tmp_path / "home" / "cluster.json").exists()
