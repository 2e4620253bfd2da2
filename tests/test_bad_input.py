"""Bad input affects only its own request or replica; everything else keeps serving."""
import threading

import httpx
import pytest

import dserve as serve
from conftest import proxy_url, wait_for


@serve.deployment
class Healthy:
    def __call__(self, request=None):
        return "fine"


def test_huge_header_and_malformed_body(serve_instance, clean):
    serve.run(Healthy.bind(), name="ok", route_prefix="/ok")
    url = f"{proxy_url()}/ok"
    r = httpx.get(url, headers={"x-huge": "a" * 200_000})
    assert (r.status_code, r.text) == (431, "Request line and headers exceed 65536 bytes.")
    r = httpx.post(url, content=b"\xff\xfe{not json", headers={"content-type": "application/json"})
    assert (r.status_code, r.text) == (200, "fine")  # the deployment never parses the body
    r = httpx.get(url)
    assert (r.status_code, r.text) == (200, "fine")


def test_unpicklable_return_value_fails_only_that_call(serve_instance, clean):
    @serve.deployment(num_replicas=1)
    class Leaky:
        def lock(self):
            return threading.Lock()  # cannot be pickled

        def value(self):
            return 42

    h = serve.run(Leaky.bind(), name="leaky", route_prefix=None)
    with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object"):
        h.lock.remote().result(timeout_s=30)
    assert h.value.remote().result(timeout_s=30) == 42


def test_result_on_the_replicas_own_loop_is_a_clear_error(serve_instance, clean):
    @serve.deployment
    class Inner:
        def __call__(self):
            return 1

    @serve.deployment
    class Outer:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self):
            try:
                self.inner.remote().result()
            except RuntimeError as exc:
                return str(exc)
            return "no error"

    h = serve.run(Outer.bind(Inner.bind()), name="loop", route_prefix=None)
    assert "await" in h.remote().result(timeout_s=30)


def test_failing_reconfigure_and_del_do_not_hurt_other_apps(serve_instance, clean):
    serve.run(Healthy.bind(), name="ok", route_prefix="/ok")

    @serve.deployment(user_config={"mode": "good"})
    class Moody:
        def __init__(self):
            self.mode = None

        def reconfigure(self, config):
            if config["mode"] == "bad" and self.mode is not None:
                raise ValueError("cannot apply this config in place")
            self.mode = config["mode"]

        def __call__(self):
            return self.mode

        def __del__(self):
            raise RuntimeError("messy destructor")

    h = serve.run(Moody.bind(), name="moody", route_prefix=None)
    assert h.remote().result(timeout_s=30) == "good"
    serve.run(Moody.options(user_config={"mode": "bad"}).bind(), name="moody", route_prefix=None)
    # the replica that refused the config is replaced by one built with it
    wait_for(lambda: h.remote().result(timeout_s=30) == "bad", timeout=30, what="a replica with the new config")
    serve.delete("moody")  # __del__ raises: nothing else notices
    assert set(serve.status().applications) == {"ok"}
    r = httpx.get(f"{proxy_url()}/ok")
    assert (r.status_code, r.text) == (200, "fine")
    assert serve.status().applications["ok"].status == "RUNNING"
