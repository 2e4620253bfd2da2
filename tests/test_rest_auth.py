"""The REST admin API with a bearer token configured through Dask's config."""
import dask
import httpx

import dserve as serve
from conftest import free_port


def test_requests_without_the_token_get_401():
    with dask.config.set({"dserve.rest-token": "s3cret", "dserve.rest-port": 0}):
        serve.start(http_options={"port": free_port()})
    try:
        from dserve.api import _sync
        from dserve.runtime import current_runtime

        rt = current_runtime()
        base = f"http://127.0.0.1:{_sync(rt, rt.rpc('dserve_status'))['rest_port']}"
        for method in ("GET", "PUT", "DELETE"):
            assert httpx.request(method, f"{base}/api/serve/applications/").status_code == 401
        assert httpx.get(f"{base}/api/serve/applications/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(f"{base}/api/serve/applications/", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["applications"] == {}
    finally:
        serve.shutdown()
