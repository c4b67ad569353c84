"""The `lma3d` front door: --version, verb help through a closed pipe, submit's own flags in its help."""

from __future__ import annotations

import subprocess
import sys

from jobs.cli import main
from jobs.verbs.submit import SUBMIT_BOOL_FLAGS, SUBMIT_VALUE_FLAGS


def test_version_prints_the_installed_version(capsys):
    import importlib.metadata

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lma3d {importlib.metadata.version('lmaffordance3d')}"


def test_help_into_a_closed_pipe_ends_without_traceback():
    # `true` exits before the interpreter has started, so the help text is written into a pipe nobody reads.
    cmd = f"{sys.executable} -m jobs.cli eval --help | true; {sys.executable} -m jobs.cli --help | true"
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_submit_help_documents_its_own_flags(capsys):
    assert main(["submit", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in (*SUBMIT_VALUE_FLAGS, *SUBMIT_BOOL_FLAGS, "--status", "--logs", "--stop"):
        assert flag in text, flag
