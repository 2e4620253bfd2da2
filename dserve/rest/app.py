"""Starlette app of the REST admin API, given the controller it fronts.

V2 (multi-app): ``PUT/GET/DELETE /api/serve/applications/``.
V1 (single-app): ``PUT/GET/DELETE /api/serve/deployments/`` and
``GET /api/serve/deployments/status``. ``GET /api/serve/logs?app=&deployment=&tail=``
(or ``&cursor=`` from the previous answer, to follow) reads the replicas' and
proxies' log lines (see ``logs``). Bad JSON (however deeply nested) or an
invalid config is a 400 with the validation errors; a body over
``REST_MAX_BODY_BYTES`` is a 413; with a token (the default, see ``auth``),
every request without ``Authorization: Bearer <token>`` is a 401.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._version import __version__
from ..auth import HOW_TO_SUPPLY, token_matches
from ..config import LOGS_DEFAULT_TAIL, REST_MAX_BODY_BYTES
from ..schema import MULTI_APP, SINGLE_APP
from ..types import Receive, Scope, Send
from .details import instance_details, v1_status

__all__ = ["create_app"]


async def _json_body(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > REST_MAX_BODY_BYTES:
        raise _BadRequest({"error": f"request body over {REST_MAX_BODY_BYTES} bytes"}, 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > REST_MAX_BODY_BYTES:
            raise _BadRequest({"error": f"request body over {REST_MAX_BODY_BYTES} bytes"}, 413)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise _BadRequest({"error": f"request body is not valid JSON: {reason}"}) from None


class _BadRequest(Exception):
    def __init__(self, body: dict, status: int = 400) -> None:
        self.body = body
        self.status = status


def create_app(controller: Any, token: Optional[str] = None) -> Starlette:
    async def deploy(request: Request, mode: str) -> Response:
        try:
            config = await _json_body(request)
        except _BadRequest as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        if not isinstance(config, dict):
            return JSONResponse({"error": "the request body must be a JSON object"}, status_code=400)
        result = await controller.service.deploy_config(config, mode)
        if "error" in result:
            return JSONResponse(result, status_code=400)
        return Response(status_code=200)

    async def put_applications(request: Request) -> Response:
        return await deploy(request, MULTI_APP)

    async def get_applications(request: Request) -> Response:
        return JSONResponse(instance_details(controller))

    async def delete_all(request: Request) -> Response:
        await controller.service.shutdown()
        controller.store.deployed_config = None
        return Response(status_code=200)

    async def put_deployments(request: Request) -> Response:
        return await deploy(request, SINGLE_APP)

    async def get_deployments(request: Request) -> Response:
        store = controller.store
        config = store.deployed_config if store.deploy_mode == SINGLE_APP else None
        return JSONResponse(config or {})

    async def get_status(request: Request) -> Response:
        return JSONResponse(v1_status(controller))

    async def get_logs(request: Request) -> Response:
        q = request.query_params
        try:
            tail = int(q["tail"]) if q.get("tail") else LOGS_DEFAULT_TAIL
            cursor = json.loads(q["cursor"]) if q.get("cursor") else None
            if cursor is not None and not (isinstance(cursor, dict)
                                           and all(isinstance(v, int) for v in cursor.values())):
                raise ValueError("cursor must be the JSON object a previous answer returned")
        except ValueError as exc:
            return JSONResponse({"error": f"bad query: {exc}"}, status_code=400)
        result = await controller.service.logs(q.get("app") or None, q.get("deployment") or None, tail, cursor)
        return JSONResponse(result, status_code=503 if "error" in result else 200)

    async def version(request: Request) -> Response:
        return JSONResponse({"version": "1", "dserve_version": __version__})

    routes = []
    for path in ("/api/serve/applications/", "/api/serve/applications"):
        routes += [Route(path, put_applications, methods=["PUT"]), Route(path, get_applications, methods=["GET"]),
                   Route(path, delete_all, methods=["DELETE"])]
    for path in ("/api/serve/deployments/", "/api/serve/deployments"):
        routes += [Route(path, put_deployments, methods=["PUT"]), Route(path, get_deployments, methods=["GET"]),
                   Route(path, delete_all, methods=["DELETE"])]
    routes += [Route("/api/serve/deployments/status", get_status, methods=["GET"]),
               Route("/api/serve/logs", get_logs, methods=["GET"]),
               Route("/api/version", version, methods=["GET"])]
    app = Starlette(routes=routes)
    if not token:
        return app

    async def with_auth(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not token_matches(given, token):
                error = {"error": f"missing or wrong bearer token: {HOW_TO_SUPPLY}"}
                await JSONResponse(error, status_code=401)(scope, receive, send)
                return
        await app(scope, receive, send)

    return with_auth  # type: ignore[return-value]
