"""The CLI's pure parts: deploy progress lines and outcomes, YAML block scalars, status
from the REST details, runtime_env flags. No cluster needed."""
import os

import click
import pytest
import yaml

from dserve.cli.configs import load_target, runtime_env_from_flags
from dserve.cli.progress import Progress, outcome
from dserve.cli.render import dump_yaml, status_from_details

TRACEBACK = ("Deploying application 'a' failed:\nTraceback (most recent call last):\n"
             "  File \"/srv/app.py\", line 2, in <module>\n    import missing\n"
             "ModuleNotFoundError: No module named 'missing'\n")


def app(status, message="", **deployments):
    return {"status": status, "message": message, "deployments": deployments}


def dep(status, message="", **replicas):
    return {"status": status, "message": message, "replicas": replicas}


def test_progress_prints_each_change_once():
    progress = Progress(["a"])
    waiting = "Deployment 'D' has replicas that cannot be placed yet: needs CPU=64."
    assert progress.lines({"a": app("DEPLOYING", "Building the application from its import path.")}) == [
        "a: DEPLOYING -- Building the application from its import path."]
    snapshot = {"a": app("DEPLOYING", waiting, D=dep("UPDATING", waiting)), "b": app("DEPLOY_FAILED", "ignored")}
    assert progress.lines(snapshot) == ["a: DEPLOYING", f"a/D: UPDATING -- {waiting}"]
    assert progress.lines(snapshot) == []
    assert progress.lines({"a": app("DEPLOYING", "", D=dep("UPDATING", STARTING=1, RUNNING=2))}) == [
        "a/D: UPDATING (2 RUNNING, 1 STARTING)"]
    assert progress.lines({"a": app("RUNNING", "", D=dep("HEALTHY", RUNNING=3))}) == [
        "a: RUNNING", "a/D: HEALTHY (3 RUNNING)"]
    assert progress.lines({"a": app("DEPLOY_FAILED", TRACEBACK)}) == ["a: DEPLOY_FAILED"]  # the reason comes apart


def test_outcome():
    assert outcome({"a": app("RUNNING"), "b": app("RUNNING")}, ["a", "b"]) == ("done", "")
    assert outcome({"a": app("RUNNING"), "b": app("DEPLOYING")}, ["a", "b"]) == ("pending", "")
    assert outcome({"a": app("DEPLOY_FAILED", TRACEBACK)}, ["a"]) == (
        "failed", f"Application 'a' is DEPLOY_FAILED:\n{TRACEBACK}")
    assert outcome({"a": app("UNHEALTHY", "", D=dep("UNHEALTHY", "replica died"), E=dep("HEALTHY"))}, ["a"]) == (
        "failed", "Application 'a' is UNHEALTHY:\nDeployment 'D': replica died")
    assert outcome({"a": app("DELETING")}, ["a"]) == ("failed", "Application 'a' is DELETING.")
    assert outcome({}, ["a"]) == ("failed", "Application 'a' does not exist (deleted while deploying?).")


def test_multi_line_strings_are_block_scalars_that_load_back():
    data = {"message": TRACEBACK.rstrip("\n"), "one_line": "plain: text", "empty": ""}
    text = dump_yaml(data)
    assert text == (
        "message: |-\n  Deploying application 'a' failed:\n  Traceback (most recent call last):\n"
        "    File \"/srv/app.py\", line 2, in <module>\n      import missing\n"
        "  ModuleNotFoundError: No module named 'missing'\none_line: 'plain: text'\nempty: ''\n")
    assert yaml.safe_load(text) == data
    assert yaml.safe_load(dump_yaml({"m": TRACEBACK})) == {"m": TRACEBACK}  # the final newline kept (|)
    coloured = "\x1b[31mValueError\x1b[0m: bad   \n\tat line 1"  # colours, trailing spaces, a tab
    shown = dump_yaml({"m": coloured})
    assert shown == "m: |-\n  ValueError: bad\n          at line 1\n"
    assert yaml.safe_load(shown) == {"m": "ValueError: bad\n        at line 1"}


def test_status_from_details_adds_the_checkpoint_message_only_when_there_is_one():
    details = {
        "proxies": {"127.0.0.1": {"status": "HEALTHY"}}, "target_capacity": None,
        "applications": {"a": {"status": "RUNNING", "message": "", "last_deployed_time_s": 1.5, "deployments": {
            "D": {"status": "HEALTHY", "status_trigger": "CONFIG_UPDATE_COMPLETED", "message": "",
                  "replicas": [{"state": "RUNNING"}, {"state": "RUNNING"}, {"state": "STOPPING"}]}}}},
        "checkpoint_message": "",
    }
    expected = {"proxies": {"127.0.0.1": "HEALTHY"}, "applications": {"a": {
        "status": "RUNNING", "message": "", "last_deployed_time_s": 1.5, "deployments": {"D": {
            "status": "HEALTHY", "status_trigger": "CONFIG_UPDATE_COMPLETED",
            "replica_states": {"RUNNING": 2, "STOPPING": 1}, "message": ""}}}}, "target_capacity": None}
    assert status_from_details(details) == expected
    details["checkpoint_message"] = "the state file could not be read"
    assert status_from_details(details) == {**expected, "checkpoint_message": "the state file could not be read"}


def test_runtime_env_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "env.yaml").write_text(yaml.safe_dump({"env_vars": {"A": "1"}, "working_dir": "old",
                                                       "py_modules": ["mods", "https://example.invalid/m.zip"]}))
    assert runtime_env_from_flags("env.yaml", None, "code") == {
        "env_vars": {"A": "1"}, "working_dir": str(tmp_path / "code"),
        "py_modules": [str(tmp_path / "mods"), "https://example.invalid/m.zip"]}
    assert runtime_env_from_flags(None, '{"working_dir": "."}', None) == {"working_dir": str(tmp_path)}
    assert runtime_env_from_flags(None, None, None) == {}
    with pytest.raises(click.ClickException, match=r"^--runtime-env-json must be a JSON object$"):
        runtime_env_from_flags(None, "[1]", None)
    with pytest.raises(click.ClickException, match=r"^the runtime_env file env2.yaml must hold a mapping$"):
        (tmp_path / "env2.yaml").write_text("- a\n")
        runtime_env_from_flags("env2.yaml", None, None)


def test_load_target(tmp_path, capsys):
    assert load_target("m:app", ["k=v", "x=a=b"], "n", "/p", {"working_dir": "/w"}) == {"applications": [
        {"import_path": "m:app", "args": {"k": "v", "x": "a=b"}, "name": "n", "route_prefix": "/p",
         "runtime_env": {"working_dir": "/w"}}]}
    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump({"import_path": "m:app", "name": "solo"}))  # a single-app file
    assert load_target(str(config), [], "ignored", None, {"env_vars": {"A": "1"}}) == {
        "applications": [{"import_path": "m:app", "name": "solo"}]}
    assert capsys.readouterr().err == (
        "Warning: --name, the runtime_env options ignored: the config file says what to deploy.\n")
    with pytest.raises(click.ClickException, match="key=value arguments go with an import path"):
        load_target(str(config), ["k=v"])
    assert os.path.isfile(config)
