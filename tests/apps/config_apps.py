"""Applications deployed by import path in the config/REST/CLI tests."""
import os

import dserve as serve


@serve.deployment
class Greeter:
    def __init__(self, greeting: str = "hello"):
        self.greeting = greeting
        self.suffix = ""
        self.identity = os.urandom(4).hex()

    def reconfigure(self, config):
        self.suffix = config.get("suffix", "")

    def __call__(self, request):
        return {"text": f"{self.greeting}{self.suffix}", "identity": self.identity}


greeter_app = Greeter.bind()


def builder(args):
    return Greeter.bind(args.get("greeting", "hi"))


@serve.deployment
def env_reader(request):
    return {"value": os.environ.get("DSERVE_TEST_RUNTIME_ENV", "")}


env_app = env_reader.bind()
