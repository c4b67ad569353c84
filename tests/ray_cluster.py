"""A real single-node Ray cluster for tests: `ray start --head` on 127.0.0.1 with token auth on.

Stopped by signalling only the processes of its own session: `ray stop` would kill every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    def __init__(self, root: Path, num_cpus: int = 2) -> None:
        self.root = root
        self.num_cpus = num_cpus
        self.dashboard_port = free_port()
        # Ray's default token file, which a local `ray.init()` also uses: a process caches the first token it
        # loads, so a test process that already ran a local Ray session can only talk to a cluster with this one.
        self.token_path = Path.home() / ".ray" / "auth_token"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """What a client process needs to talk to this cluster with token auth."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def start(self, timeout: float = 90.0) -> LocalRayCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.token_path.exists():
            self.token_path.parent.mkdir(parents=True, exist_ok=True)
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)
        env = {**os.environ, **self.client_env(), "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        env.pop("RAY_ADDRESS", None)
        cmd = [
            str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--num-cpus={self.num_cpus}", f"--temp-dir={self.root / 'tmp'}", "--include-dashboard=true",
            # Free ports for every agent: the defaults (e.g. 52365) belong to any other local Ray on the machine,
            # such as the test session's own `ray.init()`, and a head whose job agent cannot bind takes no jobs.
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
        ]  # fmt: skip
        log = open(self.root / "head.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: {(self.root / 'head.log').read_text()}")
            try:
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2)
                return self
            except OSError as e:
                # 401 means the dashboard is up and enforcing the token: that is what we want.
                if getattr(e, "code", None) == 401:
                    return self
                time.sleep(1)
        self.stop()
        raise TimeoutError(f"Ray dashboard not up at {self.address} after {timeout}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        sid = os.getsid(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for pid in _pids_of_session(sid) | _pids_mentioning(str(self.root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None


def _pids_of_session(sid: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.add(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _pids_mentioning(text: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids
