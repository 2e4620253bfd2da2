"""Quick start: two composed deployments on the embedded Dask cluster.

    python examples/quickstart.py
"""
import dserve as serve


@serve.deployment
class Doubler:
    def __call__(self, x: int) -> int:
        return 2 * x


@serve.deployment(num_replicas=2)
class Greeter:
    def __init__(self, doubler):
        self.doubler = doubler  # a DeploymentHandle to Doubler

    async def __call__(self, name) -> str:
        if not isinstance(name, str):  # an HTTP request
            name = name.query_params.get("name", "world")
        twice = await self.doubler.remote(len(name))
        return f"Hello, {name}! (twice your name's length is {twice})"


app = Greeter.bind(Doubler.bind())

if __name__ == "__main__":
    import httpx

    serve.start(http_options={"port": 8000})
    handle = serve.run(app)  # starts an embedded Dask cluster: nothing else to set up
    print("handle:", handle.remote("dask").result())
    print("http:  ", httpx.get("http://127.0.0.1:8000/", params={"name": "ray"}).text)
    print("status:", serve.status().applications["default"].status.value)
    serve.shutdown()
