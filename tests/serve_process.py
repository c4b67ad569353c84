"""`lma3d serve` as the user runs it: a subprocess on 127.0.0.1 and a free port, its own local Ray, stopped with
Ctrl-C (SIGINT) at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from servers import free_port

ROOT = Path(__file__).resolve().parents[1]


class Served:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def stop(self, timeout: float = 90.0) -> int:
        """Ctrl-C, as a user would; the exit code (killed with the process group if it does not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def get_json(url: str, timeout: float = 30.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start_serving(args: list[str], tmp: Path, env: dict[str, str] | None = None, timeout: float = 180.0) -> Served:
    """`python -m jobs.verbs.serve ARGS --port FREE` in `tmp`, once GET /healthz answers 200."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    environment.pop("RAY_ADDRESS", None)
    with log.open("w") as out:
        command = [sys.executable, "-m", "jobs.verbs.serve", *args, "--port", str(port)]
        proc = subprocess.Popen(
            command, cwd=tmp, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    served = Served(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lma3d serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            if get_json(served.url + "/healthz", timeout=5)[0] == 200:
                return served
        time.sleep(1)
    served.stop(timeout=30)
    raise RuntimeError(f"lma3d serve did not answer /healthz in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
