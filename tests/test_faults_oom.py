"""An out-of-memory kill is a fault like any other: a training worker pushed over the memory threshold of a
dedicated Ray cluster is killed by Ray's memory monitor; with train.max_failures: 1 the run resumes from its latest
checkpoint in the same MLflow run and finishes, with 0 it stops with one line naming the OOM."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from ray_cluster import LocalRayCluster
from train_data import build_shards, run_driver, train_overrides

# One xdist process runs both (`make test`: --dist loadgroup): each sets its kill threshold from the machine's usage
# at its start, which the other's 8 GiB allocation would move.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("oom")]
GiB = 2**30
HOLD_S = 10
"""How long the faulty worker holds its allocation (released afterwards so that the retry meets no pressure)."""


def _headroom(available: int) -> int:
    """How far above the machine's current usage the kill threshold sits: room for this cluster's processes and
    for what the machine's other users add meanwhile (half of what is free beyond 4 GiB, at least 4 GiB)."""
    return max(4 * GiB, (available - 4 * GiB) // 2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> Path:
    return build_shards(tmp_path_factory.mktemp("data"))


@pytest.fixture
def cluster(tmp_path_factory):
    """A cluster per test: its threshold is relative to the machine's usage at that moment."""
    memory = psutil.virtual_memory()
    headroom = _headroom(memory.available)
    if memory.available < headroom + 4 * GiB:
        pytest.skip(f"{memory.available / GiB:.1f} GiB available: too little to push a worker over a threshold")
    threshold = (memory.total - memory.available + headroom) / memory.total
    env = {"RAY_memory_usage_threshold": f"{threshold:.4f}", "RAY_memory_monitor_refresh_ms": "100"}
    head = LocalRayCluster(tmp_path_factory.mktemp("ray-oom"), num_cpus=2, env=env).start()
    # The faulty worker fills this much (stopping short of the machine's last 2 GiB): 3 GiB past the threshold, so
    # that the kill does not depend on the other test process's memory staying where it was.
    head.allocation = headroom + 3 * GiB
    yield head
    head.stop()


def _mlflow(workdir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, runs


def test_an_oom_killed_worker_is_retried_from_the_latest_checkpoint_in_the_same_mlflow_run(cluster, shards, tmp_path):
    marker = tmp_path / "oom"
    fault = {"kind": "oom", "rank": 1, "step": 3, "marker": str(marker), "bytes": cluster.allocation, "hold_s": HOLD_S}
    args = ["--address", cluster.gcs_address, "--run-name", "oom",
            *train_overrides(shards, tmp_path, max_steps=5, checkpoint_every=1, max_failures=1)]  # fmt: skip
    code, said = run_driver(args, cluster.client_env(), tmp_path / "train.log", fault)
    assert code == 0, f"{said} (whole output: {tmp_path / 'train.log'} and .err)"
    assert marker.exists() and "5 optimizer steps" in (tmp_path / "train.log").read_text()
    client, runs = _mlflow(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    # killed after step 3's optimizer step, before it was logged; resumed from the checkpoint of step 2
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    resumed = min(m.timestamp for m in history if m.step == 3) / 1000
    print(f"\nOOM kill -> resumed step 3 logged: {resumed - marker.stat().st_mtime:.1f} s")


def test_an_oom_kill_with_max_failures_0_stops_with_one_line_naming_it(cluster, shards, tmp_path):
    marker = tmp_path / "oom"
    fault = {"kind": "oom", "rank": 1, "step": 2, "marker": str(marker), "bytes": cluster.allocation, "hold_s": HOLD_S}
    args = ["--address", cluster.gcs_address, "--run-name", "oom0",
            *train_overrides(shards, tmp_path, max_steps=4, checkpoint_every=1, max_failures=0)]  # fmt: skip
    code, said = run_driver(args, cluster.client_env(), tmp_path / "train.log", fault)
    assert code == 1 and marker.exists(), f"{said} (whole output: {tmp_path / 'train.log'} and .err)"
    assert len(said.splitlines()) == 1, said
    assert said.startswith("lma3d train: training stopped: a worker was killed by Ray's memory monitor"), said
    assert "train.max_failures=0" in said
    _, runs = _mlflow(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
