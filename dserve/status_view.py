"""dserve's status tree for people: an aligned text table (``dserve status --table``) and
HTML (``_repr_html_`` of ``serve.status()``, handles and ``serve.run``'s result in notebooks).

Both take the tree ``serve.status()`` has (``ServeStatus.model_dump()``, or the status
RPC's dict): ``{"applications": {name: {"status", "message", "deployments": {name:
{"status", "replica_states", "message"}}}}, "proxies": {host: status}, "proxy_messages":
{host: message}}``; an
application's ``route_prefix`` and a ``serve_page`` URL are shown when present. Only
the first line of a message goes into the table.
"""
from __future__ import annotations

import html
from typing import Any, Dict, List, Optional

__all__ = ["status_table", "status_html", "handle_html", "replica_summary"]

_GOOD = {"RUNNING", "HEALTHY"}
_BAD = {"DEPLOY_FAILED", "UNHEALTHY", "DEAD"}


def _first_line(message: Any) -> str:
    lines = str(message or "").strip().splitlines()
    return lines[0] + (" …" if len(lines) > 1 else "") if lines else ""


def _value(state: Any) -> str:
    return str(getattr(state, "value", state))


def replica_summary(replica_states: Dict[Any, int]) -> str:
    """``{"RUNNING": 2, "STARTING": 1}`` -> ``"RUNNING 2, STARTING 1"``."""
    return ", ".join(f"{_value(state)} {count}" for state, count in replica_states.items() if count)


def status_table(tree: Dict[str, Any]) -> str:
    """Applications, their deployments (replica states, messages), then the proxies."""
    rows: List[List[str]] = [["APPLICATION / DEPLOYMENT", "STATUS", "REPLICAS", "ROUTE", "MESSAGE"]]
    for name, app in tree.get("applications", {}).items():
        rows.append([name, _value(app["status"]), "", app.get("route_prefix") or "", _first_line(app.get("message"))])
        for dep_name, dep in app.get("deployments", {}).items():
            rows.append(["  " + dep_name, _value(dep["status"]), replica_summary(dep.get("replica_states", {})),
                         "", _first_line(dep.get("message"))])
    if len(rows) == 1:
        rows.append(["(no applications)", "", "", "", ""])
    lines = _aligned(rows)
    messages = tree.get("proxy_messages") or {}
    proxies = [["PROXY", "STATUS"] + (["MESSAGE"] if messages else [])] + [
        [host, _value(s)] + ([_first_line(messages.get(host))] if messages else [])
        for host, s in tree.get("proxies", {}).items()]
    if len(proxies) > 1:
        lines += [""] + _aligned(proxies)
    return "\n".join(lines)


def _aligned(rows: List[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


_STYLE = ("<style>.dserve-status td,.dserve-status th{text-align:left;padding:2px 8px}"
          ".dserve-status .ok{color:#1b7a2f}.dserve-status .bad{color:#b3261e}"
          ".dserve-status .warn{color:#a86500}</style>")


def _state(state: Any) -> str:
    value = _value(state)
    kind = "ok" if value in _GOOD else "bad" if value in _BAD else "warn"
    return f'<td class="{kind}"><b>{html.escape(value)}</b></td>'


def _td(text: Any) -> str:
    return f"<td>{html.escape(str(text))}</td>"


def _app_rows(name: str, app: Dict[str, Any]) -> List[str]:
    rows = [f"<tr>{_td(name)}{_state(app['status'])}<td></td>{_td(app.get('route_prefix') or '')}"
            f"{_td(_first_line(app.get('message')))}</tr>"]
    for dep_name, dep in app.get("deployments", {}).items():
        rows.append(f"<tr><td>&nbsp;&nbsp;{html.escape(dep_name)}</td>{_state(dep['status'])}"
                    f"{_td(replica_summary(dep.get('replica_states', {})))}<td></td>"
                    f"{_td(_first_line(dep.get('message')))}</tr>")
    return rows


def _tree_html(tree: Dict[str, Any], only_app: Optional[str] = None) -> str:
    apps = tree.get("applications", {})
    rows: List[str] = []
    for name, app in apps.items():
        if only_app is None or name == only_app:
            rows += _app_rows(name, app)
    if not rows:
        missing = "no applications" if only_app is None else f"no application named {only_app}"
        rows = [f"<tr><td colspan='5'><i>{html.escape(missing)}</i></td></tr>"]
    out = ("<table><tr><th>Application / deployment</th><th>Status</th><th>Replicas</th><th>Route</th>"
           "<th>Message</th></tr>" + "".join(rows) + "</table>")
    proxies = tree.get("proxies", {})
    if proxies and only_app is None:
        messages = tree.get("proxy_messages") or {}
        out += "<p>Proxies: " + ", ".join(
            f"{html.escape(h)} <b>{html.escape(_value(s))}</b>"
            + (f" ({html.escape(_first_line(messages[h]))})" if messages.get(h) else "")
            for h, s in proxies.items()) + "</p>"
    page = tree.get("serve_page")
    if page:
        out += f'<p>Serve page: <a href="{html.escape(page)}" target="_blank">{html.escape(page)}</a></p>'
    return out


def status_html(tree: Dict[str, Any]) -> str:
    """``serve.status()`` in a notebook."""
    return f'{_STYLE}<div class="dserve-status"><h4>dserve status</h4>{_tree_html(tree)}</div>'


def handle_html(kind: str, deployment: str, app: str, method: str, tree: Optional[Dict[str, Any]],
                error: str = "") -> str:
    """A handle in a notebook: what it calls, and its application's status (``tree``; ``error``
    says why there is none)."""
    head = (f"<table><tr><th>Deployment</th>{_td(deployment)}</tr><tr><th>Application</th>{_td(app)}</tr>"
            f"<tr><th>Method</th>{_td(method)}</tr></table>")
    body = _tree_html(tree, only_app=app) if tree is not None else f"<p><i>{html.escape(error)}</i></p>"
    return f'{_STYLE}<div class="dserve-status"><h4>{html.escape(kind)}</h4>{head}{body}</div>'
