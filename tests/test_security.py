"""Safe by default: the REST admin API needs the auth token, and bad requests get clear answers."""
from __future__ import annotations

import os
import stat

import httpx
import pytest

import dserve as serve
from dserve.api import _sync
from dserve.auth import AuthError, default_token_path, ensure_token, load_token
from dserve.runtime import current_runtime
from conftest import auth_headers, free_port

V2 = "/api/serve/applications/"


@pytest.fixture(scope="module")
def base():
    serve.start(http_options={"port": free_port()})
    rt = current_runtime()
    yield f"http://127.0.0.1:{_sync(rt, rt.rpc('dserve_status'))['rest_port']}"
    serve.shutdown()


def test_the_token_is_generated_once_with_mode_0600(base):
    path = default_token_path()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_token() == open(path).read().strip()
    assert len(load_token()) >= 32
    assert ensure_token() == load_token()  # not regenerated


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_requests_without_the_token_get_401_saying_how_to_send_it(base, method):
    r = httpx.request(method, base + V2)
    assert r.status_code == 401
    assert r.json()["error"].startswith("missing or wrong bearer token: send 'Authorization: Bearer <token>'")
    assert "\n" not in r.text
    assert httpx.get(base + V2, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(base + V2, headers={"Authorization": load_token()}).status_code == 401  # no "Bearer "


def test_the_token_from_the_default_file_is_accepted(base):
    r = httpx.get(base + V2, headers=auth_headers())
    assert r.status_code == 200
    assert r.json()["applications"] == {}


def test_bodies_over_16_mib_get_413(base):
    big = b'{"applications": "' + b"x" * (16 * 1024 * 1024) + b'"}'
    r = httpx.put(base + V2, content=big, headers={**auth_headers(), "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413
    assert r.json() == {"error": "request body over 16777216 bytes"}


def test_absurdly_deep_json_gets_400(base):
    deep = b"[" * 200_000 + b"]" * 200_000
    r = httpx.put(base + V2, content=deep, headers={**auth_headers(), "content-type": "application/json"}, timeout=60)
    assert r.status_code == 400
    assert r.json() == {"error": "request body is not valid JSON: nested too deeply"}


def test_the_embedded_cluster_listens_on_loopback_only(base):
    from test_cli_security import children, listening

    def tree(pid):
        return [pid] + [p for c in children(pid) for p in tree(c)]
    sockets = listening(tree(os.getpid()))
    assert len(sockets) >= 6  # scheduler, its HTTP server, REST API, proxy, workers and their HTTP servers
    assert [(a, p) for a, p in sockets if a != "0100007F"] == []


def test_token_sources_in_order(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("DSERVE_AUTH_TOKEN_PATH", str(token_file))
    assert load_token() == "from-file"
    monkeypatch.setenv("DSERVE_AUTH_TOKEN", "from-env")
    assert load_token() == "from-env"
    monkeypatch.delenv("DSERVE_AUTH_TOKEN")
    token_file.write_text("")
    with pytest.raises(AuthError, match="is empty"):
        load_token()
    monkeypatch.setenv("DSERVE_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(AuthError, match="cannot read the auth token file"):
        load_token()
    monkeypatch.setenv("DSERVE_AUTH_MODE", "disabled")
    assert ensure_token() is None
    monkeypatch.setenv("DSERVE_AUTH_MODE", "sometimes")
    with pytest.raises(AuthError, match="DSERVE_AUTH_MODE must be 'token' or 'disabled', not 'sometimes'"):
        ensure_token()
