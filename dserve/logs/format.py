"""Log records with dserve's context, and the two encodings they are written in.

``ServeContextFilter`` puts on every record it sees the application, deployment,
replica id, request id and route of the code that emitted it (read from the
``context`` contextvars, so concurrent requests never mix); values given with
``extra=`` win. ``TextFormatter`` writes Ray Serve's TEXT encoding,
``JSONFormatter`` its JSON encoding: one JSON object per line, parseable.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Dict, Iterable, Optional

from ..config import LOGRECORD_STANDARD_ATTRS, EncodingType, LoggingConfig
from ..context import _current_replica, _request_context

__all__ = ["CONTEXT_ATTRS", "ServeContextFilter", "TextFormatter", "JSONFormatter", "formatter_for"]

# the attributes ServeContextFilter adds (Ray Serve's names)
CONTEXT_ATTRS = ("application", "deployment", "replica", "request_id", "route", "component_name")
_NOT_EXTRA = LOGRECORD_STANDARD_ATTRS | set(CONTEXT_ATTRS) | {"log_to_stderr"}


class ServeContextFilter(logging.Filter):
    """Adds the replica and request context to a record (never drops one)."""

    def __init__(self, component: str = "replica") -> None:
        super().__init__()
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        d = record.__dict__
        replica = _current_replica.get()
        request = _request_context.get()
        d.setdefault("application", replica.app_name if replica is not None else request.app_name)
        d.setdefault("deployment", replica.deployment if replica is not None else "")
        d.setdefault("replica", replica.replica_id if replica is not None else "")
        d.setdefault("request_id", request.request_id)
        d.setdefault("route", request.route)
        d.setdefault("component_name", "replica" if replica is not None else self.component)
        return True


class _ServeFormatter(logging.Formatter):
    def __init__(self, additional_attrs: Iterable[str] = ()) -> None:
        super().__init__()
        self.additional = tuple(additional_attrs)

    _second, _stamp = -1, ""

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:  # noqa: N802
        """``2024-01-01 12:00:00,123``, the seconds part computed once per second."""
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"

    def _message(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        return record.message

    def _exception(self, record: logging.LogRecord) -> Optional[str]:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return record.exc_text or (self.formatStack(record.stack_info) if record.stack_info else None)


class TextFormatter(_ServeFormatter):
    """``INFO 2024-01-01 12:00:00,000 app_Deployment abcd1234 <request id> file.py:12 -- message``."""

    def format(self, record: logging.LogRecord) -> str:
        message = self._message(record)
        d = record.__dict__
        parts = [record.levelname, record.asctime]
        deployment = d.get("deployment")
        parts.append(f"{d.get('application', '')}_{deployment}" if deployment else d.get("component_name") or "dserve")
        if d.get("replica"):
            parts.append(d["replica"].rpartition("#")[2])
        if d.get("request_id"):
            parts.append(d["request_id"])
        if record.lineno:
            parts.append(f"{record.filename}:{record.lineno}")
        line = " ".join(parts) + " -- " + message
        if self.additional:
            line += " " + " ".join(f"{name}={d.get(name)}" for name in self.additional)
        problem = self._exception(record)
        return f"{line}\n{problem}" if problem else line


class JSONFormatter(_ServeFormatter):
    """One JSON object per record, on one line: context, level, time, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        message = self._message(record)
        d = record.__dict__
        out: Dict[str, Any] = {
            "levelname": record.levelname,
            "asctime": record.asctime,
            "logger": record.name,
            **{name: d.get(name, "") for name in CONTEXT_ATTRS},
            "filename": record.filename,
            "lineno": record.lineno,
            "message": message,
            "timestamp_ns": int(record.created * 1e9),
        }
        for name in self.additional:
            out[name] = d.get(name)
        for key, value in d.items():  # what the caller gave with extra=
            if key not in _NOT_EXTRA and not key.startswith("_"):
                out[key] = value
        problem = self._exception(record)
        if problem:
            out["exc_text"] = problem
        return json.dumps(out, default=str)


def formatter_for(config: LoggingConfig) -> logging.Formatter:
    cls = JSONFormatter if config.encoding == EncodingType.JSON.value else TextFormatter
    return cls(config.additional_log_standard_attrs)
