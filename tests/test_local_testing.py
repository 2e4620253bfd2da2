"""serve.run(app, _local_testing_mode=True): the application in-process, no cluster."""
import asyncio

import pytest

import dserve as serve


@serve.deployment
class Doubler:
    def __call__(self, x):
        return 2 * x

    async def tokens(self, n):
        for i in range(n):
            yield i


@serve.deployment(user_config={"bonus": 1})
class Front:
    def __init__(self, doubler):
        self.doubler = doubler
        self.bonus = 0

    def reconfigure(self, config):
        self.bonus = config["bonus"]

    async def __call__(self, x):
        return await self.doubler.remote(x) + self.bonus

    def fail(self):
        raise KeyError("missing thing")


def test_local_testing_mode_runs_in_process():
    from dserve.runtime import current_runtime

    h = serve.run(Front.bind(Doubler.bind()), name="local", _local_testing_mode=True)
    try:
        assert current_runtime().scheduler_address == ""  # no cluster was started
        assert h.remote(5).result() == 11
        with pytest.raises(KeyError, match="missing thing"):
            h.fail.remote().result()
        doubler = serve.get_deployment_handle("Doubler", "local")
        assert list(doubler.options(stream=True).tokens.remote(3)) == [0, 1, 2]
        assert asyncio.run(_gather(h)) == [1, 3, 5]
        assert serve.get_app_handle("local").remote(1).result() == 3
    finally:
        serve.shutdown()


async def _gather(h):
    return list(await asyncio.gather(*[h.remote(i) for i in range(3)]))
