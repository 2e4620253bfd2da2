"""Deploy progress for ``dserve deploy --wait`` and ``dserve run``: what each application
and deployment is doing, printed as it changes, until every application is RUNNING or
one failed.

A snapshot is ``{app: {"status", "message", "deployments": {name: {"status", "message",
"replicas": {state: count}}}}}``, made from the REST details (``from_details``) or from
the status RPC (``from_status``). The deployments' messages say what a deployment waits
for (e.g. "has replicas that cannot be placed yet: ..."); a failure's message (a
traceback) is the reason ``DeployFailed`` carries.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

from ..config import CLI_PROGRESS_PERIOD_S

__all__ = ["DeployFailed", "Progress", "from_details", "from_status", "outcome", "watch"]

Snapshot = Dict[str, Dict[str, Any]]
FAILED = ("DEPLOY_FAILED", "UNHEALTHY", "DELETING", "NOT_STARTED")


class DeployFailed(Exception):
    """An application failed to deploy; the message says which and why."""


def _counts(replicas: List[Dict[str, Any]]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for replica in replicas:
        out[replica["state"]] = out.get(replica["state"], 0) + 1
    return out


def from_details(details: Dict[str, Any]) -> Snapshot:
    """From ``GET /api/serve/applications/`` (``ServeInstanceDetails``)."""
    return {name: {"status": app["status"], "message": app["message"],
                   "deployments": {d: {"status": dep["status"], "message": dep["message"],
                                       "replicas": _counts(dep["replicas"])} for d, dep in app["deployments"].items()}}
            for name, app in details["applications"].items()}


def from_status(status: Dict[str, Any]) -> Snapshot:
    """From the ``dserve_status`` RPC (what ``serve.status()`` reads)."""
    return {name: {"status": app["status"], "message": app["message"],
                   "deployments": {d: {"status": dep["status"], "message": dep["message"],
                                       "replicas": dict(dep["replica_states"])} for d, dep in app["deployments"].items()}}
            for name, app in status["applications"].items()}


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""


class Progress:
    """One line per application and per deployment, printed when it changes."""

    def __init__(self, names: List[str]) -> None:
        self.names = names
        self.shown: Dict[str, str] = {}

    def _describe(self, name: str, app: Dict[str, Any]) -> List[Tuple[str, str]]:
        deployments = app["deployments"]
        line = f"{name}: {app['status']}"
        if app["message"] and app["status"] not in FAILED and not any(d["message"] for d in deployments.values()):
            line += f" -- {_first_line(app['message'])}"  # e.g. building from the import path
        out = [(name, line)]
        for dep_name, dep in deployments.items():
            line = f"{name}/{dep_name}: {dep['status']}"
            if dep["replicas"]:
                line += " (" + ", ".join(f"{n} {state}" for state, n in sorted(dep["replicas"].items())) + ")"
            if dep["message"]:
                line += f" -- {_first_line(dep['message'])}"
            out.append((f"{name}/{dep_name}", line))
        return out

    def lines(self, snapshot: Snapshot) -> List[str]:
        """The lines that changed since the last call."""
        out = []
        for name in self.names:
            if name not in snapshot:
                continue
            for key, line in self._describe(name, snapshot[name]):
                if self.shown.get(key) != line:
                    self.shown[key] = line
                    out.append(line)
        return out


def outcome(snapshot: Snapshot, names: List[str]) -> Tuple[str, str]:
    """``("done", "")`` when every application is RUNNING, ``("failed", reason)`` when one
    failed (or is gone), else ``("pending", "")``."""
    for name in names:
        app = snapshot.get(name)
        if app is None:
            return "failed", f"Application '{name}' does not exist (deleted while deploying?)."
        if app["status"] in FAILED:
            message = app["message"] or "\n".join(
                f"Deployment '{d}': {dep['message']}" for d, dep in app["deployments"].items() if dep["message"])
            return "failed", f"Application '{name}' is {app['status']}" + (f":\n{message}" if message else ".")
    if all(snapshot[name]["status"] == "RUNNING" for name in names):
        return "done", ""
    return "pending", ""


def watch(fetch: Callable[[], Snapshot], names: List[str], echo: Callable[[str], None],
          period: float = CLI_PROGRESS_PERIOD_S) -> None:
    """Print progress until every application in ``names`` is RUNNING; raise
    ``DeployFailed`` when one fails."""
    progress = Progress(names)
    while True:
        snapshot = fetch()
        for line in progress.lines(snapshot):
            echo(line)
        state, reason = outcome(snapshot, names)
        if state == "done":
            return
        if state == "failed":
            raise DeployFailed(reason)
        time.sleep(period)
