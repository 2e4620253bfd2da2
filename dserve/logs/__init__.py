"""dserve's logs: context on every record, Ray Serve's encodings, and where lines go.

``format`` holds ``ServeContextFilter`` and the TEXT/JSON formatters; ``sinks`` the
per-replica (and per-proxy) capture of log records and printed lines into a bounded
in-memory ring, a rotated file (``logs_dir``) and the terminal, and the reads
behind ``dserve logs``.
"""
from __future__ import annotations

from .format import CONTEXT_ATTRS, JSONFormatter, ServeContextFilter, TextFormatter, formatter_for
from .sinks import LogRing, Sink, close_sink, merge, open_replica_sink, open_sink, read, reconfigure_sink

__all__ = [
    "CONTEXT_ATTRS", "JSONFormatter", "LogRing", "ServeContextFilter", "Sink", "TextFormatter", "close_sink",
    "formatter_for", "merge", "open_replica_sink", "open_sink", "read", "reconfigure_sink",
]
