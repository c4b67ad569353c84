"""A real Ray cluster for tests: `ray start --head` on 127.0.0.1 with token auth on, plus optional worker nodes
(`add_node`: a second raylet with its own temp dir and ports, joining with the same token).

Stopped by signalling only the processes of its own session: `ray stop` would kill every Ray on the machine.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from servers import free_port

VENV_BIN = Path(sys.executable).parent


_WORKER_PORT_BLOCKS = itertools.count()


def _agent_ports() -> list[str]:
    """Free ports for every agent: the defaults (e.g. 52365) belong to any other local Ray on the machine, such as
    the test session's own `ray.init()`, and a node whose agents cannot bind fails in odd ways. Each node also gets
    a worker port range of its own: every raylet hands out 10002-19999 by default without knowing the others on
    the machine, so two nodes could give one port to two workers (the loser dies as soon as it is called)."""
    # Two pytest-xdist workers each count from 0: gw1 starts half way through the 24 blocks.
    first = 12 * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    low = 20000 + 500 * ((first + next(_WORKER_PORT_BLOCKS)) % 24)  # below the kernel's ephemeral range (32768-)
    return [
        f"--min-worker-port={low}", f"--max-worker-port={low + 499}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
    ]  # fmt: skip


RAY_TOKEN = Path.home() / ".ray" / "auth_token"
"""Ray's default token file, which a local `ray.init()` also uses."""


def ensure_auth_token(path: Path = RAY_TOKEN) -> None:
    """Ray's token file, created at most once even by two test processes at the same moment (pytest-xdist): a
    token written by one and overwritten by the other would lock the first one's clients out of its own Ray."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    draft.write_text(secrets.token_hex(32))
    draft.chmod(0o600)
    try:
        os.link(draft, path)  # atomic, and fails if another process got there first
    except FileExistsError:
        pass
    finally:
        draft.unlink()


class LocalRayCluster:
    def __init__(self, root: Path, num_cpus: int = 2, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.temp_dir = _short_temp_dir()
        self.num_cpus = num_cpus
        self.env = dict(env or {})
        """Extra environment for every node's processes, e.g. RAY_memory_usage_threshold."""
        self.dashboard_port = free_port()
        self.gcs_port = free_port()
        self.nodes: list[LocalRayNode] = []
        # A process caches the first token it loads, so a test process that already ran a local Ray session can
        # only talk to a cluster with this one.
        self.token_path = RAY_TOKEN
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """The dashboard / Jobs API URL (what `lma3d submit --address` takes)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        """What a driver's `ray.init(address=...)` and a joining node take."""
        return f"127.0.0.1:{self.gcs_port}"

    def client_env(self) -> dict[str, str]:
        """What a client process needs to talk to this cluster with token auth."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def start(self, timeout: float = 90.0) -> LocalRayCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        ensure_auth_token(self.token_path)
        cmd = [
            str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}", "--include-dashboard=true",
            f"--ray-client-server-port={free_port()}", *_agent_ports(),
        ]  # fmt: skip
        env = self.node_env()
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

    def node_env(self) -> dict[str, str]:
        env = {**os.environ, **self.client_env(), **self.env, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        env.pop("RAY_ADDRESS", None)
        return env

    def add_node(self, name: str, num_cpus: int = 1, timeout: float = 60.0) -> LocalRayNode:
        """A second raylet on 127.0.0.1 joining this head: its own temp dir, log and ports, the same token."""
        node = LocalRayNode(self, self.root / name, num_cpus)
        node.start(timeout)
        self.nodes.append(node)
        return node

    def alive_nodes(self) -> int:
        """Nodes the GCS counts as alive (asked through `ray list nodes`, so no Ray session is needed here)."""
        import json

        out = subprocess.run(
            [str(VENV_BIN / "ray"), "list", "nodes", "--address", self.gcs_address, "--format", "json",
             "--filter", "state=ALIVE"],
            env=self.node_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return len(json.loads(out.stdout or "[]")) if out.returncode == 0 else -1

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        self.nodes = []
        if self.proc is None:
            return
        sid = os.getsid(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _kill_all(sid, self.root, self.temp_dir)
        self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class LocalRayNode:
    """A worker node of a LocalRayCluster; `kill()` SIGKILLs its raylet and every process it started, as a lost
    machine would."""

    def __init__(self, cluster: LocalRayCluster, root: Path, num_cpus: int) -> None:
        self.cluster, self.root, self.num_cpus = cluster, root, num_cpus
        self.temp_dir = _short_temp_dir()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(VENV_BIN / "ray"), "start", "--block", f"--address={self.cluster.gcs_address}",
            "--node-ip-address=127.0.0.1", f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
            *_agent_ports(),
        ]  # fmt: skip
        log_path = self.root / "node.log"
        log_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            cmd, env=self.cluster.node_env(), stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: {log_path.read_text()}")
            if "Ray runtime started" in log_path.read_text(errors="replace"):  # the raylet registered with the GCS
                return
            time.sleep(0.5)
        self.kill()
        raise TimeoutError(f"node {self.root.name} did not join {self.cluster.gcs_address} in {timeout}s")

    def kill(self) -> None:
        """SIGKILL, no clean shutdown: the GCS learns of the loss from missed health checks."""
        if self.proc is None:
            return
        sid = os.getsid(self.proc.pid)
        _kill_all(sid, self.root, self.temp_dir)
        self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _kill_all(session: int, *folders: Path) -> None:
    """SIGKILL every process of `session` and every process whose command line names one of `folders`."""
    pids = _pids_of_session(session)
    for folder in folders:
        pids |= _pids_mentioning(str(folder))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _short_temp_dir() -> Path:
    """Ray's temp dir holds its AF_UNIX sockets, whose paths must fit in 107 bytes: not under a long tmp_path."""
    return Path(tempfile.mkdtemp(prefix="lma3d-ray-"))


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
