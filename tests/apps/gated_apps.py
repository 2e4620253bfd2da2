"""An application whose build waits for a gate file: config deploys caught mid-build."""
import os
import time

import dserve as serve


@serve.deployment
class Version:
    def __init__(self, version: str):
        self.version = version

    def __call__(self, request):
        return self.version


def builder(args):
    gate = args.get("gate")
    deadline = time.monotonic() + 120
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return Version.bind(args["version"])
