"""How ``dserve status`` and ``dserve config`` print: Ray's status layout built from the
REST details, as YAML whose multi-line strings (tracebacks in status messages) are
block scalars (``|``), or JSON, or the ``status_view`` table.
"""
from __future__ import annotations

import re
from typing import Any, Dict

import yaml

__all__ = ["status_from_details", "dump_yaml"]

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")  # colour codes in tracebacks


def status_from_details(details: Dict[str, Any]) -> Dict[str, Any]:
    """``serve status``'s content: proxies, applications (status, message, deployments with
    replica state counts), target_capacity; and, when the controller could not restore its
    checkpoint, dserve's ``checkpoint_message``."""
    apps = {
        app_name: {
            "status": app["status"],
            "message": app["message"],
            "last_deployed_time_s": app["last_deployed_time_s"],
            "deployments": {
                dep_name: {"status": dep["status"], "status_trigger": dep["status_trigger"],
                           "replica_states": _replica_states(dep), "message": dep["message"]}
                for dep_name, dep in app["deployments"].items()
            },
        }
        for app_name, app in details["applications"].items()
    }
    out = {"proxies": {node: p["status"] for node, p in details["proxies"].items()}, "applications": apps,
           "target_capacity": details.get("target_capacity")}
    if details.get("checkpoint_message"):
        out["checkpoint_message"] = details["checkpoint_message"]
    return out


def _replica_states(dep: Dict[str, Any]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for replica in dep["replicas"]:
        counts[replica["state"]] = counts.get(replica["state"], 0) + 1
    return counts


def _readable(text: str) -> str:
    """A multi-line string YAML can write as a block scalar: no colour codes, no tabs, no
    spaces at line ends (PyYAML quotes a string that has any of them)."""
    text = _ANSI.sub("", text).expandtabs()
    return "\n".join(line.rstrip() for line in text.split("\n"))


class _Dumper(yaml.SafeDumper):
    """Safe YAML; multi-line strings as literal block scalars."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    if "\n" in data.strip("\n"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", _readable(data), style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    """YAML for people, keys in their order; it ends with a newline, which a final block
    scalar needs (print it with ``nl=False``)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
