"""Applications the logging tests deploy by import path (config, REST, `dserve run`)."""
import logging
import os

import dserve as serve

logger = logging.getLogger("logging_apps")


@serve.deployment
class Printer:
    def __init__(self):
        print("Printer ready")

    def __call__(self, request):
        tag = request.query_params.get("tag", "")
        print(f"printed {tag}")
        logger.info("logged %s", tag)
        return {"pid": os.getpid(), "replica": serve.get_replica_context().replica_id}


@serve.deployment
class Helper:
    def __call__(self, tag):
        logger.info("helper %s", tag)
        return tag


@serve.deployment
class Front:
    def __init__(self, helper):
        self.helper = helper

    async def __call__(self, request):
        tag = request.query_params.get("tag", "")
        logger.info("front %s", tag)
        return await self.helper.remote(tag)


printer_app = Printer.bind()
front_app = Front.bind(Helper.bind())
