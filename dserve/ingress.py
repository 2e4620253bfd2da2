"""``@serve.ingress(app)``: serve a FastAPI (or any ASGI) app from a deployment.

The decorator records the app — or a factory, a function of no arguments that
builds and returns the app, called in each replica — on the class. In each
replica, after the class is constructed, FastAPI routes whose endpoints are
methods of the class are rebuilt around the replica's bound methods (on the
replica's own copy of the app and router: the app object itself is never
changed, so replicas sharing a process never share ``self``), so ``self`` works
in route handlers and does not show up as a request parameter.
"""
from __future__ import annotations

import copy
import copyreg
import inspect
from typing import Any, Callable

from starlette.datastructures import State

__all__ = ["ingress", "prepare_asgi_app", "ASGI_APP_ATTR"]

ASGI_APP_ATTR = "_dserve_asgi_app"

_ROUTE_FIELDS = (
    "response_model", "status_code", "tags", "dependencies", "summary", "description",
    "response_description", "responses", "deprecated", "methods", "operation_id",
    "response_model_include", "response_model_exclude", "response_model_by_alias",
    "response_model_exclude_unset", "response_model_exclude_defaults", "response_model_exclude_none",
    "include_in_schema", "response_class", "name", "callbacks", "openapi_extra",
)


def _reduce_state(state: State) -> tuple:
    return State, (dict(state._state),)


# Starlette's State recurses forever when unpickled attribute by attribute; an
# app (with its .state) ships inside the deployment class, so teach pickle a
# plain constructor call for it.
copyreg.pickle(State, _reduce_state)


def ingress(app: Any) -> Callable[[type], type]:
    """Wrap a deployment class with an ASGI app (FastAPI or Starlette) for HTTP, or with a
    function of no arguments that builds and returns one (called in each replica)."""
    if not callable(app):
        raise TypeError("@serve.ingress takes an ASGI application (FastAPI, Starlette, ...) or a function "
                        "that returns one")

    def decorate(cls: type) -> type:
        if not inspect.isclass(cls):
            raise TypeError("@serve.ingress must decorate a class (put it under @serve.deployment)")
        setattr(cls, ASGI_APP_ATTR, app)
        return cls

    return decorate


def _class_functions(cls: type) -> dict:
    out = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if inspect.isfunction(value):
                out[id(value)] = name
    return out


def _is_factory(app: Any) -> bool:
    """A plain function taking no arguments builds the app; anything else is the app."""
    if not (inspect.isfunction(app) or inspect.ismethod(app)):
        return False
    try:
        params = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):
        return False
    return not [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def prepare_asgi_app(servable: Any) -> Any:
    """The ASGI app a replica serves, with class-method routes bound to ``servable``."""
    app = getattr(type(servable), ASGI_APP_ATTR, None)
    if app is None:
        return None
    if _is_factory(app):
        app = app()
    try:
        from fastapi.routing import APIRoute, APIWebSocketRoute
    except ImportError:  # a plain ASGI app
        return app
    methods = _class_functions(type(servable))
    routes = getattr(getattr(app, "router", None), "routes", None)
    if routes is None or not any(id(getattr(r, "endpoint", None)) in methods for r in routes):
        return app
    app = copy.copy(app)  # this replica's app and router: the shared ones stay as they are
    shared_router, app.router = app.router, copy.copy(app.router)
    app.router.routes = routes = list(routes)
    if getattr(getattr(app.router, "middleware_stack", None), "__self__", None) is shared_router:
        app.router.middleware_stack = app.router.app  # Starlette's router dispatches through this
    if hasattr(app, "middleware_stack"):
        app.middleware_stack = None  # built on the first request, around this router
    for index, route in enumerate(list(routes)):
        name = methods.get(id(getattr(route, "endpoint", None)))
        if name is None:
            continue
        bound = getattr(servable, name)
        if isinstance(route, APIRoute):
            kwargs = {f: getattr(route, f) for f in _ROUTE_FIELDS if hasattr(route, f)}
            routes[index] = APIRoute(route.path, bound, **kwargs)
        elif isinstance(route, APIWebSocketRoute):
            routes[index] = APIWebSocketRoute(route.path, bound, name=route.name)
    return app
