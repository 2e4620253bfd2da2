"""``@serve.multiplexed``: many models per replica, loaded on demand, LRU-evicted.

Decorate an async loader ``get_model(self, model_id)``; calls return the
cached model, loading it at most once even under concurrent requests for the
same id. Past ``max_num_models_per_replica`` the least recently used model is
evicted: an async ``__del__`` is awaited, otherwise dropping the last
reference lets its ``__del__`` run. The replica reports the ids it holds to
the controller, so routers send a model's requests to a replica that has it.
``get_multiplexed_model_id()`` reads the id of the request being served (set
by ``handle.options(multiplexed_model_id=...)`` or the HTTP header
``serve_multiplexed_model_id``).
"""
from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
from typing import Any, Callable, Dict, List, Optional

from .context import _current_replica, get_request_context

__all__ = ["multiplexed", "get_multiplexed_model_id"]

logger = logging.getLogger("dserve.replica")


def get_multiplexed_model_id() -> str:
    """The multiplexed model id of the current request ("" when none was given)."""
    return get_request_context().multiplexed_model_id


class _ModelCache:
    def __init__(self, loader: Callable, capacity: int) -> None:
        self.loader = loader
        self.capacity = capacity
        self.models: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
        self.loading: Dict[str, asyncio.Future] = {}

    async def get(self, model_id: str) -> Any:
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        pending = self.loading.get(model_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self.loading[model_id] = future
        try:
            while len(self.models) >= self.capacity:
                await self._evict()
            model = await self.loader(model_id)
        except BaseException as exc:
            self.loading.pop(model_id, None)
            if not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved
            raise
        self.models[model_id] = model
        self.loading.pop(model_id, None)
        future.set_result(model)
        _report(list(self.models))
        return model

    async def _evict(self) -> None:
        model_id, model = self.models.popitem(last=False)
        unload = getattr(model, "__del__", None)
        if unload is not None and inspect.iscoroutinefunction(unload):
            try:
                await unload()
            except Exception:  # noqa: BLE001
                logger.exception("unloading model %s failed", model_id)
        del model
        _report(list(self.models))


def _report(model_ids: List[str]) -> None:
    """Tell the controller which models this replica holds (for routing)."""
    replica = _current_replica.get()
    if replica is None:
        return
    from .event_loop import worker_or_none

    worker = worker_or_none()
    if worker is None:
        return

    async def send() -> None:
        try:
            await worker.scheduler.dserve_report_models(replica_id=replica.replica_id, model_ids=model_ids)
        except Exception as exc:  # noqa: BLE001 - routing affinity is best effort
            logger.debug("could not report model ids: %r", exc)

    asyncio.ensure_future(send())


def multiplexed(_func: Optional[Callable] = None, *, max_num_models_per_replica: int = 3) -> Any:
    """Wrap an async model loader with a per-replica LRU cache of models."""
    if not isinstance(max_num_models_per_replica, int) or (
        max_num_models_per_replica < 1 and max_num_models_per_replica != -1
    ):
        raise ValueError("max_num_models_per_replica must be a positive integer (or -1 for no limit)")
    capacity = float("inf") if max_num_models_per_replica == -1 else max_num_models_per_replica

    def decorate(func: Callable) -> Callable:
        if not inspect.iscoroutinefunction(func):
            raise TypeError("@serve.multiplexed must decorate an async function `async def get_model(model_id)`")
        params = list(inspect.signature(func).parameters)
        is_method = bool(params) and params[0] == "self"
        attr = f"_dserve_model_cache_{func.__name__}"
        holder: List[_ModelCache] = []

        @functools.wraps(func)
        async def wrapper(*args: Any) -> Any:
            if is_method:
                owner, model_id = args[0], (args[1] if len(args) > 1 else get_multiplexed_model_id())
                cache = owner.__dict__.get(attr)
                if cache is None:
                    cache = owner.__dict__[attr] = _ModelCache(functools.partial(func, owner), capacity)
            else:
                model_id = args[0] if args else get_multiplexed_model_id()
                if not holder:
                    holder.append(_ModelCache(func, capacity))
                cache = holder[0]
            if not isinstance(model_id, str) or not model_id:
                raise ValueError(f"a multiplexed model id must be a non-empty string, got {model_id!r}")
            return await cache.get(model_id)

        return wrapper

    if _func is not None:
        return decorate(_func)
    return decorate
