"""pipeline/ray_session.py: a local Ray started by ensure_ray listens on loopback only, with its dashboard and
without it (the shard job's).

Runs in a fresh interpreter: the test session's own Ray (conftest's ray_local) must not be the one measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, os, time
import psutil, ray
from pipeline.ray_session import ensure_ray

DASHBOARD = {dashboard}
assert ensure_ray(dashboard=DASHBOARD) is True
assert ray.get(ray.remote(lambda x: x + 1).remote(41)) == 42  # the loopback node runs tasks
time.sleep(3)  # the dashboard agent and runtime-env agent bind after ray.init returns
tree = [psutil.Process()] + psutil.Process().children(recursive=True)
listeners = []
for proc in tree:
    try:
        conns = proc.net_connections(kind="tcp")
    except psutil.Error:
        continue
    listeners += [[c.laddr.ip, c.laddr.port, proc.name()] for c in conns if c.status == psutil.CONN_LISTEN]
print("LISTENERS" + json.dumps(listeners))
print("DASHBOARD" + json.dumps(ray._private.worker.global_worker.node.webui_url))  # '' when not served
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.parametrize("dashboard", [True, False])
def test_local_ray_started_by_ensure_ray_listens_on_loopback_only(tmp_path, dashboard):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    probe = PROBE.format(dashboard=dashboard)
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("LISTENERS"))
    listeners = json.loads(line.removeprefix("LISTENERS"))
    names = {name for _, _, name in listeners}
    assert {"gcs_server", "raylet"} <= names, f"the probe did not see Ray's own processes: {listeners}"
    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    exposed = [x for x in listeners if x[0] not in loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"
    url = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("DASHBOARD")).removeprefix("DASHBOARD"))
    assert url.startswith("127.0.0.1:") if dashboard else url == "", url
