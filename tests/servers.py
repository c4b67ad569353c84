"""Real servers for the tests that are about them: PostgreSQL and an MLflow tracking server, on 127.0.0.1.

Both are started on free ports in the test's temp dir and stopped (process group killed) at the end.
PostgreSQL comes from Debian's `postgresql` package; where it is missing and apt-get can install it
(root), it is installed once; otherwise the caller skips with the reason `find_postgres` gives.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_postgres(install: bool = True) -> tuple[Path | None, str]:
    """(bin dir holding initdb/pg_ctl/postgres, "") or (None, why not)."""

    def located() -> Path | None:
        for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
            if Path(candidate, "initdb").exists():
                return Path(candidate)
        found = shutil.which("initdb")
        return Path(found).resolve().parent if found else None

    if (bindir := located()) is not None:
        return bindir, ""
    if not install:
        return None, "PostgreSQL is not installed"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "PostgreSQL is not installed and apt-get is not usable here (needs root on Debian)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode:
            return None, f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}"
    bindir = located()
    return (bindir, "") if bindir else (None, "apt-get installed postgresql but initdb was not found")


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` user the Debian package creates."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        if check():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def _answers(url: str) -> bool:
    """True once `url` answers 200 (a server's health page)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def postgres_server(bindir: Path, root: Path, database: str = "mlflow") -> Iterator[str]:
    """Yields `postgresql+psycopg2://postgres@127.0.0.1:<port>/<database>` (trust auth, loopback only)."""
    # Its own folder under /tmp: the `postgres` user cannot traverse pytest's root-only (0700) temp folders.
    home = Path(tempfile.mkdtemp(prefix="lma3d-pg-"))
    data = home / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        shutil.chown(data, "postgres")
    initdb = subprocess.run(
        _as_postgres_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]),
        capture_output=True,
        text=True,
    )
    if initdb.returncode:
        raise RuntimeError(f"initdb failed: {initdb.stderr.strip()[-1000:]}")
    port = free_port()
    log = home / "postgres.log"
    with open(log, "w") as out:
        if os.geteuid() == 0:
            shutil.chown(log, "postgres")
        proc = subprocess.Popen(
            _as_postgres_user(
                [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(data)]
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ready = bindir / "pg_isready"
        _wait(
            lambda: (
                subprocess.run([str(ready), "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode == 0
            ),
            "postgres",
            proc,
            log,
        )
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"
    finally:
        _stop(proc)
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, root: Path, port: int | None = None, artifacts: str = "") -> Iterator[str]:
    """`mlflow server` on `port` (default: a free loopback port) proxying artifacts to `artifacts` (default: a
    folder under `root`; an s3:// URI takes MLFLOW_S3_ENDPOINT_URL and the keys from this process's environment);
    yields its http URI."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "mlflow-server.log"
    if not artifacts:
        artifacts = str(root / "mlflow-artifacts")
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    try:
        _wait(lambda: _answers(f"{uri}/health"), "mlflow server", proc, log, timeout=120)
        yield uri
    finally:
        _stop(proc)


S3_KEYS = {"AWS_ACCESS_KEY_ID": "lma3d-test-key", "AWS_SECRET_ACCESS_KEY": "lma3d-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
"""What the tests give S3 clients; moto's server accepts any key unless told to authenticate."""


@contextlib.contextmanager
def s3_server(root: Path, buckets: tuple[str, ...] = ("lma3d",), auth: bool = False) -> Iterator[dict[str, str]]:
    """An S3-compatible endpoint (moto's server mode: the S3 HTTP API, spoken to unmodified boto3, pyarrow and
    MLflow clients) on a free 127.0.0.1 port, with `buckets` created. Yields the environment a client needs:
    AWS_ENDPOINT_URL (and MLFLOW_S3_ENDPOINT_URL) plus keys: the fixed test keys, or with `auth` the keys of an
    IAM user allowed s3:* that the server checks every request against (any other key is refused with 403)."""
    port = free_port()
    log = root / "s3-server.log"
    root.mkdir(parents=True, exist_ok=True)
    # moto authenticates every request after its first N: exactly the 3 IAM calls below that create the user.
    server_env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"} if auth else None
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=server_env)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint, **S3_KEYS}

    try:
        _wait(lambda: _answers(f"{endpoint}/moto-api/"), "moto S3 server", proc, log)
        import boto3

        key, secret = S3_KEYS["AWS_ACCESS_KEY_ID"], S3_KEYS["AWS_SECRET_ACCESS_KEY"]
        if auth:
            iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                               aws_secret_access_key=secret)  # fmt: skip
            iam.create_user(UserName="lma3d")
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
            iam.put_user_policy(UserName="lma3d", PolicyName="s3", PolicyDocument=json.dumps(policy))
            created = iam.create_access_key(UserName="lma3d")["AccessKey"]
            key, secret = created["AccessKeyId"], created["SecretAccessKey"]
            env |= {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                              aws_secret_access_key=secret)  # fmt: skip
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield env
    finally:
        _stop(proc)
