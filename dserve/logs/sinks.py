"""Where the log lines of a replica (or a proxy) go: a bounded ring in memory, a
rotated file when ``logs_dir`` is set, and the terminal.

Logging and ``sys.stdout`` are per process while a worker may host several
replicas, so the first sink of a process installs one handler on the root logger
and a wrapper around ``sys.stdout``/``sys.stderr``; both hand each record or
printed line to the sink of the replica whose code emitted it (the replica
contextvar). Records of the ``dserve.access``/``dserve.proxy`` loggers outside a
replica go to the proxy's sink; anything else passes through as before. Lines
reach the terminal prefixed like Ray's ``(ServeReplica:app:Deployment pid=N)``.
``read`` answers ``dserve logs`` from the rings (a stopped replica's ring is kept
a while); ``merge`` joins the answers of several workers.
"""
from __future__ import annotations

import collections
import itertools
import logging
import logging.handlers
import os
import re
import sys
import threading
import time
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

from ..config import (LOG_FILE_BACKUP_COUNT, LOG_FILE_MAX_BYTES, LOG_RING_LINES, LOG_RINGS_KEPT_STOPPED,
                      LOG_TO_STDERR, LoggingConfig, logging_config)
from ..context import ReplicaContext, _current_replica
from .format import ServeContextFilter, formatter_for

__all__ = ["LogRing", "Sink", "open_sink", "open_replica_sink", "close_sink", "read", "merge"]

PROXY_LOGGERS = ("dserve.access", "dserve.proxy")
_STREAMS = (("stdout", logging.INFO), ("stderr", logging.ERROR))  # a printed line's logger name and level

Entry = Tuple[int, float, str, str, str]  # seq, time, application, deployment, line


class LogRing:
    """The last ``size`` lines, numbered, so a reader can come back for the ones after."""

    def __init__(self, size: int = LOG_RING_LINES) -> None:
        self.entries: Deque[Entry] = collections.deque(maxlen=size)
        self.last = 0
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def append(self, created: float, app: str, deployment: str, line: str) -> None:
        with self._lock:
            self.last = next(self._seq)
            self.entries.append((self.last, created, app, deployment, line))

    def after(self, seq: int) -> Tuple[List[Entry], int]:
        """The entries numbered above ``seq``, and the last number (lazy lines formatted now)."""
        with self._lock:
            entries = [e for e in self.entries if e[0] > seq] if seq < self.last else []
            return [e if type(e[4]) is str else e[:4] + (str(e[4]),) for e in entries], self.last


class Sink:
    """One replica's (or proxy's) log: its level and encoding, its ring, file and terminal prefix."""

    def __init__(self, key: str, label: str, app: str, deployment: str, config: LoggingConfig,
                 file_name: str, component: str) -> None:
        self.key, self.app, self.deployment = key, app, deployment
        self.prefix = f"({label} pid={os.getpid()}) "
        self.file_name = file_name
        self.ring = LogRing()
        self.filter = ServeContextFilter(component)
        # the terminal gets a replica's every line; a proxy's operational warnings only
        self.terminal_level = logging.WARNING if component == "proxy" else logging.NOTSET
        self.file: Optional[logging.handlers.RotatingFileHandler] = None
        self.path: Optional[str] = None
        self.partial: Dict[Tuple[int, int], str] = {}  # (stream, thread) -> a printed line not ended yet
        self.configure(config)

    def configure(self, config: LoggingConfig) -> None:
        """Apply a (new) logging config: level, encoding, file."""
        self.config = config
        self.level = config.level_number
        self.formatter = formatter_for(config)
        path = os.path.join(config.logs_dir, self.file_name) if config.logs_dir else None
        if path != self.path:
            self._close_file()
            if path is not None:
                os.makedirs(config.logs_dir, exist_ok=True)
                self.file = logging.handlers.RotatingFileHandler(
                    path, maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILE_BACKUP_COUNT, encoding="utf-8")
            self.path = path

    def handle(self, record: logging.LogRecord) -> None:
        """A logging record emitted by this sink's code."""
        if record.levelno >= self.level:
            self._write(record, _original[1], None)

    def feed(self, stream: int, text: str) -> None:
        """Text this sink's code wrote to stdout (0) or stderr (1): each complete line is logged."""
        key = (stream, threading.get_ident())
        buffered = self.partial.pop(key, "") + text
        *lines, rest = buffered.split("\n")
        if rest:
            self.partial[key] = rest
        for line in lines:
            self._printed(stream, line)

    def _printed(self, stream: int, line: str) -> None:
        name, level = _STREAMS[stream]
        self._write(logging.LogRecord(name, level, "", 0, line, None, None), _original[stream], line)

    def _write(self, record: logging.LogRecord, terminal: Any, raw: Optional[str]) -> None:
        self.filter.filter(record)
        line = self.formatter.format(record)
        d = record.__dict__
        self.ring.append(record.created, d.get("application") or self.app, self.deployment, line)
        if self.file is not None:
            self.file.handle(logging.makeLogRecord({"msg": line, "levelno": record.levelno}))
        if (LOG_TO_STDERR and terminal is not None and record.levelno >= self.terminal_level
                and d.get("log_to_stderr", True) is not False):
            text = raw if raw is not None else line
            try:
                terminal.write("".join(self.prefix + part + "\n" for part in text.split("\n")))
                terminal.flush()  # a pipe (dserve run | tee, a test) gets each line as it happens
            except (OSError, ValueError):  # the terminal is gone (closed, or replaced and closed): ring and file stand
                pass

    def close(self) -> None:
        for (stream, _), rest in list(self.partial.items()):
            self._printed(stream, rest)
        self.partial.clear()
        self._close_file()

    def _close_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


# ---- the process: its sinks, the root handler and the captured streams ----
_lock = threading.Lock()
_sinks: Dict[str, Sink] = {}
_stopped: "collections.OrderedDict[str, Sink]" = collections.OrderedDict()
_proxy_key: Optional[str] = None
_original: Tuple[Any, Any] = (None, None)  # sys.stdout, sys.stderr as they were before capture
_root_level: Optional[int] = None  # the root logger's level before the first sink


class AccessLine:
    """An access-log line kept as its parts and formatted only when read (the request path
    pays a tuple, not a log record), in TEXT encoding's layout."""

    __slots__ = ("created", "parts")

    def __init__(self, created: float, method: str, route: str, status: int, latency_ms: float,
                 request_id: str) -> None:
        self.created, self.parts = created, (method, route, status, latency_ms, request_id)

    def __str__(self) -> str:
        method, route, status, latency_ms, request_id = self.parts
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created))
        millis = int((self.created % 1) * 1000)
        return f"INFO {stamp},{millis:03d} proxy {request_id} -- {method} {route} {status} {latency_ms:.1f}ms"


def fast_access_sink() -> Optional[Sink]:
    """The proxy's sink when an access line can go straight to its ring: TEXT encoding, no
    extra attributes, no file, INFO logged. ``None``: log a record the usual way."""
    sink = _sinks.get(_proxy_key) if _proxy_key is not None else None
    if sink is None or sink.file is not None or sink.level > logging.INFO:
        return None
    formatter = sink.formatter
    if type(formatter).__name__ != "TextFormatter" or formatter.additional:
        return None
    return sink


def _sink_for(logger_name: Optional[str] = None) -> Optional[Sink]:
    """The sink of the code running now (None: not a replica's, nor a proxy record)."""
    replica = _current_replica.get()
    if replica is not None:
        sink = _sinks.get(replica.replica_id)
        if sink is not None:
            return sink
    if logger_name is not None and _proxy_key is not None and logger_name.startswith(PROXY_LOGGERS):
        return _sinks.get(_proxy_key)
    return None


class _RootHandler(logging.Handler):
    """On the root logger: a record goes to its sink; one outside every sink is left
    as Python would have (to ``logging.lastResort`` when no other handler takes it)."""

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: sinks are thread-safe
        try:
            sink = _sink_for(record.name)
            if sink is not None:
                sink.handle(record)
            elif record.levelno >= logging.WARNING and logging.lastResort is not None and not self._elsewhere(record):
                logging.lastResort.handle(record)
        except Exception:  # noqa: BLE001 - logging never raises into the caller
            self.handleError(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def _elsewhere(self, record: logging.LogRecord) -> bool:
        """Whether another handler on the record's way up takes it."""
        logger: Any = logging.Logger.manager.loggerDict.get(record.name)
        logger = logger if isinstance(logger, logging.Logger) else logging.getLogger()
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


class _CapturedStream:
    """``sys.stdout``/``sys.stderr``: a replica's writes go to its sink, others pass through."""

    def __init__(self, original: Any, index: int) -> None:
        self._original = original
        self._index = index

    def write(self, text: str) -> int:
        sink = _sink_for()
        if sink is None:
            return self._original.write(text)
        sink.feed(self._index, text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _install() -> None:
    global _original, _root_level
    if _root_level is not None:
        return
    root = logging.getLogger()
    _root_level = root.level
    _original = (sys.stdout, sys.stderr)
    if sys.stdout is not None:
        sys.stdout = _CapturedStream(sys.stdout, 0)  # type: ignore[assignment]
    if sys.stderr is not None:
        sys.stderr = _CapturedStream(sys.stderr, 1)  # type: ignore[assignment]
    root.addHandler(_RootHandler())


def _apply_root_level() -> None:
    """Let records down to the most verbose sink's level through the loggers, unless the
    process configured logging itself (another handler on the root logger)."""
    root = logging.getLogger()
    if any(not isinstance(h, _RootHandler) for h in root.handlers):
        return
    levels = [s.level for s in _sinks.values()]
    root.setLevel(min(levels + [_root_level]) if levels else _root_level)


def open_sink(key: str, label: str, config: Optional[LoggingConfig] = None, app: str = "", deployment: str = "",
              file_name: str = "", component: str = "replica") -> Sink:
    """Start capturing the logs of one replica or proxy in this process."""
    global _proxy_key
    with _lock:
        _install()
        sink = Sink(key, label, app, deployment, config or LoggingConfig(), file_name or f"{component}.log", component)
        _sinks[key] = sink
        _stopped.pop(key, None)
        if component == "proxy":
            _proxy_key = key
        _apply_root_level()
        return sink


def open_replica_sink(context: ReplicaContext, config: Any) -> Sink:
    """The sink of a replica starting in this process (``config``: its LoggingConfig, or a dict)."""
    app, deployment, replica_id = context.app_name, context.deployment, context.replica_id
    name = re.sub(r"[^\w.-]", "_", f"replica_{app}_{deployment}_{replica_id.rpartition('#')[2]}") + ".log"
    return open_sink(replica_id, f"ServeReplica:{app}:{deployment}", logging_config(config), app, deployment, name)


def reconfigure_sink(key: str, config: LoggingConfig) -> None:
    with _lock:
        sink = _sinks.get(key)
        if sink is not None:
            sink.configure(config)
            _apply_root_level()


def close_sink(key: str) -> None:
    """Stop capturing (the ring stays readable among the last stopped ones)."""
    global _proxy_key
    with _lock:
        sink = _sinks.pop(key, None)
        if sink is None:
            return
        sink.close()
        if key == _proxy_key:
            _proxy_key = None
        _stopped[key] = sink
        while len(_stopped) > LOG_RINGS_KEPT_STOPPED:
            _stopped.popitem(last=False)
        _apply_root_level()


def read(app: Optional[str] = None, deployment: Optional[str] = None, tail: Optional[int] = None,
         cursor: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """This process's lines of ``app``/``deployment`` (all when None): the last ``tail`` of each
    source, or those after ``cursor`` (``{source: number}`` from an earlier read)."""
    lines: List[list] = []
    positions: Dict[str, int] = {}
    with _lock:
        sinks = list(_stopped.values()) + list(_sinks.values())
    for sink in sinks:
        if (app and sink.app and sink.app != app) or (deployment and sink.deployment != deployment):
            continue
        entries, positions[sink.key] = sink.ring.after((cursor or {}).get(sink.key, 0))
        if app:
            entries = [e for e in entries if e[2] == app]
        if cursor is None and tail is not None:
            entries = entries[len(entries) - tail:] if tail > 0 else []
        lines.extend([e[1], sink.key, e[0], e[4]] for e in entries)
    return {"lines": lines, "cursor": positions}


def merge(replies: Iterable[Dict[str, Any]], tail: Optional[int] = None,
          cursor: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """Several processes' ``read`` answers as one, in time order (the last ``tail`` lines
    unless following a ``cursor``)."""
    replies = [r for r in replies if isinstance(r, dict) and "lines" in r]
    lines = sorted((tuple(line) for r in replies for line in r["lines"]), key=lambda l: (l[0], l[1], l[2]))
    if cursor is None and tail is not None:
        lines = lines[len(lines) - tail:] if tail > 0 else []
    positions = dict(cursor or {})
    for r in replies:
        positions.update(r["cursor"])
    return {"lines": [{"time": t, "source": s, "line": text} for t, s, _, text in lines], "cursor": positions}
