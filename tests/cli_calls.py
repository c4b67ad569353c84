"""Check that a command line names a real lma3d verb and that the verb's own parser and config loader accept it."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shlex

import pytest
from infra_files import ROOT

import jobs.entry
from jobs.cli import VERBS
from jobs.verbs.submit import split_argv


class _Parsed(Exception):
    pass


def verb_namespace(verb: str, args: list[str], monkeypatch) -> argparse.Namespace:
    """Run the verb's real main() up to its argument parsing; fail if its parser rejects `args`."""
    real, seen = argparse.ArgumentParser.parse_known_args, {}

    def parse_and_stop(self, args=None, namespace=None):
        seen["ns"], seen["extra"] = real(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_and_stop)
    monkeypatch.setattr(jobs.entry, "setup_logging", lambda *a, **k: None)
    try:
        importlib.import_module(f"jobs.verbs.{verb}").main(list(args))
    except _Parsed:
        pass
    except SystemExit as e:
        pytest.fail(f"`lma3d {verb}` rejects {args} (exit {e.code}); see the usage message above")
    assert "ns" in seen, f"jobs.verbs.{verb}.main() returned without parsing its arguments"
    assert not seen["extra"], f"`lma3d {verb}` does not know {seen['extra']}"
    return seen["ns"]


def check_cli_call(command: str, monkeypatch) -> None:
    """`python -m jobs.verbs.<verb> ...` or `lma3d [submit] <verb> ...` names a real verb, flags, configs and keys."""
    argv = shlex.split(command, comments=True)
    if argv[:2] == ["python", "-m"]:
        assert argv[2].startswith("jobs.verbs."), command
        verb, args = argv[2].removeprefix("jobs.verbs."), argv[3:]
    else:
        assert argv[0] == "lma3d", command
        verb, args = argv[1], argv[2:]
        if verb == "submit":
            _, rest = split_argv(args)
            if rest[0] in ("--status", "--logs", "--stop"):
                assert len(rest) == 2, command
                return
            verb, args = rest[0], rest[1:]
    assert verb in VERBS, f"{command}: no verb {verb!r} in jobs/cli.py"
    if "--help" in args:
        return
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    concrete = [c for c in configs if "$" not in c and "<" not in c]
    if not list(ROOT.glob("configs/agpil/*.yaml")):
        pytest.skip("configs/agpil/*.yaml are not written yet: cannot check config paths")
    for config in concrete:
        assert (ROOT / config).is_file(), f"{command}: {config} does not exist"
    if importlib.util.find_spec(f"jobs.verbs.{verb}") is None:
        pytest.skip(f"jobs/verbs/{verb}.py does not exist yet: its flags cannot be checked")
    ns = verb_namespace(verb, args, monkeypatch)
    if hasattr(ns, "override_args") and configs == concrete and not any("$" in a or "<" in a for a in args):
        from jobs.experiment_config import resolve_config

        monkeypatch.chdir(ROOT)
        resolve_config(ns)  # unknown or mistyped override keys raise ConfigError naming them
