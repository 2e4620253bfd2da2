"""How user code, arguments, results and errors cross process boundaries.

* Arguments and results use the standard pickle when it can stand for the
  object on the other side, and cloudpickle otherwise (lambdas, local classes,
  modules shipped by value).
* User code ships by value when its module is not an installed package
  (scripts, notebooks, test files), so an application defined anywhere deploys
  without a runtime_env; installed modules ship by reference.
* Code shipped by value keeps its file names, and the source of those files
  travels with it (registered with ``linecache`` where it is loaded), so remote
  tracebacks show the user's real file, line and code.
* Exceptions raised by user code come back with their own type and the remote
  traceback in their message, dserve's own frames left out.
"""
from __future__ import annotations

import io
import linecache
import logging
import os
import pickle
import sys
import sysconfig
import traceback
import types
from types import ModuleType
from typing import Any, Dict

import cloudpickle

__all__ = ["dumps", "loads", "dumps_code", "ship_module_by_value", "pack_exception", "unpack_exception",
           "user_traceback"]

logger = logging.getLogger("dserve")

_by_value_markers: tuple[bytes, ...] = (b"__main__",)


def _installed_roots() -> tuple[str, ...]:
    paths = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(os.path.realpath(p) for p in paths if p)


_INSTALLED = _installed_roots()
_DSERVE_ROOT = os.path.dirname(os.path.realpath(__file__))


def _is_installed(module: ModuleType) -> bool:
    path = getattr(module, "__file__", None)
    if not path:  # builtins, namespace packages
        return True
    path = os.path.realpath(path)
    if path.startswith(_DSERVE_ROOT):
        return True
    return any(path.startswith(root) for root in _INSTALLED)


def ship_module_by_value(obj: Any) -> None:
    """Register the module defining ``obj`` for pickling by value when it is
    not an installed package (so workers need not be able to import it)."""
    name = getattr(obj, "__module__", None)
    module = sys.modules.get(name) if name else None
    if module is None or name == "__main__" or _is_installed(module):
        return
    if name not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(module)
        global _by_value_markers
        _by_value_markers = _by_value_markers + (name.encode(),)


class _CodePickler(cloudpickle.Pickler):
    """cloudpickle, keeping each code object's real file name (cloudpickle writes
    ``<dynamic-code>``) so tracebacks point at the user's file."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.CodeType):
            constructor, args = _cloudpickle_code_reduce(obj)
            return constructor, tuple(obj.co_filename if a == "<dynamic-code>" else a for a in args)
        return super().reducer_override(obj)


def _cloudpickle_code_reduce(obj: types.CodeType) -> Any:
    from cloudpickle import cloudpickle as implementation

    return implementation._code_reduce(obj)


def _sources(obj: Any) -> Dict[str, str]:
    """The source of the module defining ``obj`` when it ships by value (for linecache)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    if not path or _is_installed(module):
        return {}
    try:
        with open(path) as f:
            return {path: f.read()}
    except OSError:
        return {}


def _restore_code(sources: Dict[str, str], payload: bytes) -> Any:
    for path, text in sources.items():
        if path not in linecache.cache or linecache.cache[path][1] is None:
            linecache.cache[path] = (len(text), None, text.splitlines(True), path)
    return pickle.loads(payload)


class _ShippedCode:
    def __init__(self, sources: Dict[str, str], payload: bytes) -> None:
        self.sources, self.payload = sources, payload

    def __reduce__(self) -> tuple:
        return _restore_code, (self.sources, self.payload)


def dumps_code(obj: Any) -> bytes:
    """Serialize user code (a class or function) for shipping to workers: ``loads`` gives
    it back, with its file names and source available to tracebacks there."""
    ship_module_by_value(obj)
    buffer = io.BytesIO()
    _CodePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return cloudpickle.dumps(_ShippedCode(_sources(obj), buffer.getvalue()), protocol=pickle.HIGHEST_PROTOCOL)


def dumps(obj: Any) -> bytes:
    """Serialize a value: the standard pickle when it suffices, else cloudpickle."""
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    for marker in _by_value_markers:
        if marker in data:
            return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return data


loads = pickle.loads


class RemoteTraceback(Exception):
    """Carries the traceback of an exception raised in another process."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def user_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc`` without dserve's own frames (when any remain)."""
    formatted = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    user_frames = [f for f in formatted.stack if not f.filename.startswith(_DSERVE_ROOT)]
    if user_frames and len(user_frames) < len(formatted.stack):
        formatted.stack = traceback.StackSummary.from_list(user_frames)
    return "".join(formatted.format())


def pack_exception(exc: BaseException) -> bytes:
    """Pickle an exception with its formatted traceback; never fails."""
    tb = user_traceback(exc)
    try:
        return dumps((exc, tb))
    except Exception:
        from .exceptions import RayServeException

        return dumps((RayServeException(f"{type(exc).__name__}: {exc}"), tb))


_with_tb_classes: dict[type, type] = {}


def _with_remote_traceback(exc: BaseException, tb: str) -> BaseException:
    """Return ``exc`` as an instance of a subclass of its own type whose message
    ends with the remote traceback (``except OriginalType`` still matches)."""
    cls = type(exc)
    sub = _with_tb_classes.get(cls)
    if sub is None:
        try:
            sub = type(cls.__name__, (cls,), {
                "__str__": _str_with_tb,
                "__reduce__": _reduce_as_base,
                "__module__": cls.__module__,
                "__qualname__": getattr(cls, "__qualname__", cls.__name__),
                "_dserve_base": cls,
            })
        except TypeError:  # final classes cannot be subclassed
            sub = cls
        _with_tb_classes[cls] = sub
    if sub is not cls:
        try:
            copy = sub.__new__(sub, *exc.args)
            copy.args = exc.args
            copy.__dict__.update(exc.__dict__)
            exc = copy
        except Exception:  # noqa: BLE001 - an exception type that cannot be copied keeps its own class
            logger.debug("cannot attach the remote traceback to a %s subclass; keeping its class", cls.__name__)
    exc._dserve_remote_tb = tb  # type: ignore[attr-defined]
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def _str_with_tb(self: BaseException) -> str:
    base = type(self)._dserve_base  # type: ignore[attr-defined]
    msg = base.__str__(self)
    tb = getattr(self, "_dserve_remote_tb", "")
    return f"{msg}\n\n{tb}" if tb else msg


def _reduce_as_base(self: BaseException):
    base = type(self)._dserve_base  # type: ignore[attr-defined]
    return _rebuild_plain, (base, self.args, self.__dict__)


def _rebuild_plain(cls: type, args: tuple, state: dict) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    state = {k: v for k, v in state.items() if k != "_dserve_remote_tb"}
    exc.__dict__.update(state)
    return exc


def unpack_exception(data: bytes) -> BaseException:
    """Rebuild an exception sent by :func:`pack_exception`."""
    try:
        exc, tb = loads(data)
    except Exception as err:  # the type does not unpickle here
        from .exceptions import RayServeException

        return RayServeException(f"a remote error could not be deserialized: {err!r}")
    if not isinstance(exc, BaseException):
        from .exceptions import RayServeException

        return RayServeException(str(exc))
    return _with_remote_traceback(exc, tb)
