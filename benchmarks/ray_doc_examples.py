"""Run Ray Serve example scripts on dserve (and, if asked, on Ray Serve) and compare.

``python -m benchmarks.ray_doc_examples DIR [--ray-python PATH] [--timeout S] [--only NAME]``

Every ``*.py`` file under DIR is one example. For dserve, DIR is copied to a scratch folder
with every file's Ray imports rewritten (sibling modules named by import path, such as an
autoscaling policy, are rewritten too) and the example runs there with this interpreter.
With ``--ray-python`` the untouched file also runs under that interpreter (one at a time:
both bind port 8000). An example passes when it exits 0 within the timeout.

The rewrite changes imports only:

- ``from ray import serve`` -> ``import dserve as serve``;
- ``from ray.serve[.mod] import names`` -> ``from dserve[.mod] import names`` (``dserve`` itself
  when dserve has no such module), and ``ray.serve.`` in code -> ``dserve.``;
- ``import ray`` and ``from ray import X`` -> a stand-in module written beside the examples:
  ``init``/``is_initialized`` are no-ops (dserve starts its own cluster), ``shutdown`` is
  ``serve.shutdown()``, ``get`` resolves a dserve response, ``ObjectRef`` is a plain type for
  annotations; anything else of Ray core raises, naming it.

Prints a JSON list (one object per example) and then a table: example, Ray result, dserve
result, the first error line.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUB_NAME = "_ray_standin"

# The stand-in for `import ray`: only what Serve-only examples touch.
STUB_SOURCE = '''"""Stand-in for the parts of Ray core that Serve-only examples call."""
import dserve as _serve


def init(*args, **kwargs):
    return None


def is_initialized():
    return True


def shutdown(*args, **kwargs):
    _serve.shutdown()


def get(value, timeout=None):
    if isinstance(value, list):
        return [get(v, timeout) for v in value]
    if hasattr(value, "result"):
        return value.result(timeout_s=timeout) if timeout else value.result()
    raise NotImplementedError("ray.get of a non-dserve object: Ray core is not part of dserve")


class ObjectRef:
    """Annotation-only stand-in."""


def __getattr__(name):
    raise AttributeError(f"ray.{name}: Ray core is not part of dserve")
'''

_FROM_SERVE = re.compile(r"^(\s*)from\s+ray\.serve(\.[\w.]+)?\s+import\s+", re.M)
_FROM_RAY_SERVE = re.compile(r"^(\s*)from\s+ray\s+import\s+serve\s*$", re.M)
_FROM_RAY = re.compile(r"^(\s*)from\s+ray\s+import\s+", re.M)
_IMPORT_RAY = re.compile(r"^(\s*)import\s+ray\s*$", re.M)
_IMPORT_RAY_SERVE = re.compile(r"^(\s*)import\s+ray\.serve(\s+as\s+\w+)?\s*$", re.M)


def _dserve_module(sub: str | None) -> str:
    """``.handle`` -> ``dserve.handle`` when dserve has that module, else ``dserve``."""
    if not sub:
        return "dserve"
    name = "dserve" + sub
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    return name if found else "dserve"


def rewrite(source: str) -> str:
    """The example with its Ray imports pointed at dserve (see the module docstring)."""
    out = _FROM_RAY_SERVE.sub(lambda m: f"{m.group(1)}import dserve as serve", source)
    out = _FROM_SERVE.sub(lambda m: f"{m.group(1)}from {_dserve_module(m.group(2))} import ",
                          out)
    out = _IMPORT_RAY_SERVE.sub(
        lambda m: f"{m.group(1)}import dserve{m.group(2) or ''}", out)
    out = _FROM_RAY.sub(lambda m: f"{m.group(1)}from {STUB_NAME} import ", out)
    out = _IMPORT_RAY.sub(lambda m: f"{m.group(1)}import {STUB_NAME} as ray", out)
    if "ray.serve." in out:
        out = out.replace("ray.serve.", "dserve.")
        out = "import dserve\n" + out
    return out


def prepare(src_dir: Path, dst_dir: Path) -> None:
    """Copy ``src_dir`` to ``dst_dir`` with every ``.py`` rewritten, plus the stand-in."""
    shutil.copytree(src_dir, dst_dir, dirs_exist_ok=True)
    for path in dst_dir.rglob("*.py"):
        path.write_text(rewrite(path.read_text()))
    (dst_dir / f"{STUB_NAME}.py").write_text(STUB_SOURCE)


_ERROR_LINE = re.compile(r"^\s*([\w.]+(Error|Exception|Exit|Interrupt)|AssertionError)\b")


def first_error(stderr: str) -> str:
    """The line that names the exception (the last such line), else the last line."""
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line.strip()[:200]
    return lines[-1].strip()[:200] if lines else ""


def run_one(python: str, script: Path, cwd: Path, timeout: float, env: dict) -> dict:
    """Run one example; ``{"result": pass|fail|timeout, "seconds", "error"}``."""
    start = time.monotonic()
    proc = subprocess.Popen([python, script.name], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        result = "pass" if proc.returncode == 0 else "fail"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the example's own process group: its cluster goes with it
        _, err = proc.communicate()
        result = "timeout"
    return {"result": result, "seconds": round(time.monotonic() - start, 1),
            "error": "" if result == "pass" else first_error(err or "")}


def _ray_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # Ray's interpreter must not import this checkout
    return env


def _dserve_env(folder: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    return env


def run_all(src: Path, ray_python: str | None, timeout: float, only: list[str]) -> list[dict]:
    scripts = sorted(p for p in src.rglob("*.py") if not p.name.startswith("_"))
    if only:
        scripts = [p for p in scripts if p.stem in only or p.name in only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dserve-doc-examples-") as tmp:
        work = Path(tmp)
        prepare(src, work)
        for script in scripts:
            rel = script.relative_to(src)
            row = {"example": str(rel)}
            if ray_python:
                ray = run_one(ray_python, script, script.parent, timeout, _ray_env())
                row.update(ray=ray["result"], ray_error=ray["error"],
                           ray_seconds=ray["seconds"])
            copy = work / rel
            ds = run_one(sys.executable, copy, copy.parent, timeout, _dserve_env(copy.parent))
            row.update(dserve=ds["result"], dserve_error=ds["error"],
                       dserve_seconds=ds["seconds"])
            print(f"{rel}: ray={row.get('ray', '-')} dserve={row['dserve']}", file=sys.stderr,
                  flush=True)
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    width = max([len("example")] + [len(r["example"]) for r in rows])
    lines = [f"{'example':<{width}}  {'ray':<7}  {'dserve':<7}  first error line",
             "-" * (width + 40)]
    for r in rows:
        error = r["dserve_error"] or r.get("ray_error", "")
        lines.append(f"{r['example']:<{width}}  {r.get('ray', '-'):<7}  {r['dserve']:<7}  "
                     f"{error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="folder of example .py files")
    parser.add_argument("--ray-python", help="also run each example with this interpreter")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per run")
    parser.add_argument("--only", nargs="*", default=[], help="example names to run")
    parser.add_argument("--json-out", type=Path, help="also write the JSON list here")
    args = parser.parse_args(argv)
    rows = run_all(args.dir.resolve(), args.ray_python, args.timeout, args.only)
    text = json.dumps(rows, indent=1)
    if args.json_out:
        args.json_out.write_text(text)
    print(text)
    print(table(rows))


if __name__ == "__main__":
    main()
