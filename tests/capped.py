"""Run a verb in a child process under an address-space cap, and measure it.

Memory bombs (YAML alias bombs, /dev/zero as a config, tar members and .npy headers claiming gigabytes) are
tested here: if one gets through, the child dies with a MemoryError (or is killed at the timeout) and the test
fails; it never takes the machine. The child's peak resident memory comes from wait4's rusage of that child
alone.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CAP_BYTES = 4_000_000_000
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Capped:
    code: int
    """Exit code; negative: killed by that signal (-9 at the timeout)."""
    stdout: str
    stderr: str
    peak_mb: float
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))


def run_verb(verb: str, *args: str, timeout: float = 300.0) -> Capped:
    """`python -m jobs.verbs.<verb> ARGS` from the repository root, under CAP_BYTES of address space."""
    return run_python("-m", f"jobs.verbs.{verb}", *args, timeout=timeout)


def run_python(*args: str, timeout: float = 300.0) -> Capped:
    """`python ARGS` from the repository root, under CAP_BYTES of address space."""
    argv = [sys.executable, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, preexec_fn=_cap)
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        child.returncode = code = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Capped(code, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                      usage.ru_maxrss / 1024, seconds)  # fmt: skip
