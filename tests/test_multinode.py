"""Multi-node on one machine: a head and a second node (separate raylets on 127.0.0.1, own temp dirs and ports, one
token). Two training workers on different nodes (train.placement_strategy: STRICT_SPREAD); the second node is
killed mid-run after a checkpoint and re-added; the run resumes from the latest checkpoint in the same MLflow run and
finishes, both ranks' shards are in the shared storage, each step is logged once (the replayed step 3 too). Then
`lma3d eval` with eval.num_actors: 2 runs its actor pool across both nodes."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_cluster import VENV_BIN, LocalRayCluster
from train_data import REPO, TESTS, build_shards, train_overrides

pytestmark = pytest.mark.slow
CHECKPOINT_EVERY = 2
KILL_STEP = 4
"""The node is killed at this step, before its checkpoint: steps after the one of step 2 are trained again."""
# The GCS declares a node dead after failure_threshold missed health checks (default 5 x 3 s).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> Path:
    return build_shards(tmp_path_factory.mktemp("data"))


def _env(cluster: LocalRayCluster) -> dict[str, str]:
    env = {**os.environ, **cluster.client_env(), "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the driver ended ({proc.returncode}) first:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout}s:\n{log.read_text()[-4000:]}"
        time.sleep(0.2)


def _explain(log: Path) -> str:
    """Why a driver failed: every line that reports a failure (the first attempts' too, which a tail of the log
    loses behind the last one's stack), then the tail."""
    text = log.read_text(errors="replace")
    marks = ("Error", "error:", "Traceback", "failure", "marked dead", "lma3d train:")
    reports = [line[:300] for line in text.splitlines() if any(m in line for m in marks)]
    return "\n".join(reports[:60]) + "\n--- tail ---\n" + text[-3000:]


def _actors(cluster: LocalRayCluster, class_part: str) -> list[dict]:
    """Every actor (alive or dead) of the cluster whose class name contains `class_part`."""
    out = subprocess.run(
        [str(VENV_BIN / "ray"), "list", "actors", "--address", cluster.gcs_address, "--format", "json", "--detail",
         "--limit", "1000"],
        env=cluster.node_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return [a for a in json.loads(out.stdout) if class_part in (a.get("class_name") or "")]


def test_two_nodes_train_survive_a_lost_node_and_evaluate_across_both(shards, tmp_path):
    began = time.monotonic()
    cluster = LocalRayCluster(tmp_path / "ray", num_cpus=1, env=FAST_NODE_DEATH).start()
    try:
        second = cluster.add_node("node2", num_cpus=1)
        shared = tmp_path / "shared"  # stands for a mount every node sees
        tracking = f"sqlite:///{shared / 'mlflow.db'}"
        marker, log = tmp_path / "hang", tmp_path / "train.log"
        fault = {"kind": "hang", "rank": 1, "step": KILL_STEP, "marker": str(marker)}
        args = ["--address", cluster.gcs_address, "--run-name", "two-nodes", f"mlflow.tracking_uri={tracking}",
                *train_overrides(shards, tmp_path / "work", max_steps=6, checkpoint_every=CHECKPOINT_EVERY,
                                 max_failures=1, placement_strategy="STRICT_SPREAD",
                                 storage_path=str(shared / "runs"))]  # fmt: skip
        with open(log, "w") as out:
            driver = subprocess.Popen([sys.executable, str(TESTS / "train_driver.py"), json.dumps(fault), *args],
                                      env=_env(cluster), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
            _wait_for(marker, driver, log, timeout=300)  # rank 1 reached step 4, step 2's checkpoint registered
            killed = time.time()
            second.kill()
            cluster.add_node("node2-again", num_cpus=1)
            assert driver.wait(timeout=300) == 0, _explain(log)
        assert f"resumed at step {KILL_STEP - CHECKPOINT_EVERY}" in log.read_text()
        groups = collections.defaultdict(set)  # each attempt's worker group has a placement group of its own
        for worker in _actors(cluster, "RayTrainWorker"):
            groups[worker["placement_group_id"]].add(worker["node_id"])
        assert len(groups) == 2 and all(len(nodes) == 2 for nodes in groups.values()), groups

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        history = client.get_metric_history(runs[0].info.run_id, "train/loss")
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # step 3, trained twice, logged once
        logged = {m.step: m.timestamp / 1000 for m in history}
        assert logged[KILL_STEP - 1] < killed < logged[KILL_STEP]  # rank 0 could not log step 4 without rank 1
        recovery = logged[KILL_STEP] - killed

        final = shared / "runs" / "two-nodes" / "checkpoint_step000000006"
        shards_written = sorted(p.name for p in final.glob("global_step6/zero_pp_rank_*_optim_states.pt"))
        assert shards_written == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
        assert sorted(p.name for p in final.glob("rng_rank*.json")) == ["rng_rank0.json", "rng_rank1.json"]

        evaluated = subprocess.run(
            [sys.executable, "-m", "jobs.verbs.eval", "--checkpoint", str(final), "--shards", str(shards),
             "--out", str(shared / "eval"), "--address", cluster.gcs_address, "--no-mlflow", "eval.num_actors=2",
             "eval.cpus_per_actor=0.5", "eval.batch_size=2", "eval.viz_samples=0", "workdir=work"],
            env=_env(cluster), cwd=REPO, capture_output=True, text=True, timeout=150,
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr[-4000:]
        assert json.loads((shared / "eval" / "metrics.json").read_text())
        predictors = _actors(cluster, "Predictor")
        assert len(predictors) == 2 and len({a["node_id"] for a in predictors}) == 2  # one model actor per node
        print(f"\nnode killed at step {KILL_STEP} -> step {KILL_STEP} logged {recovery:.1f} s later; "
              f"whole test {time.monotonic() - began:.0f} s")  # fmt: skip
    finally:
        cluster.stop()


def test_two_nodes_with_a_bucket_and_no_shared_folder_resume_and_evaluate(shards, tmp_path, monkeypatch):
    """The same run with shards, checkpoints and MLflow artifacts in S3 (moto's server on 127.0.0.1) and MLflow
    behind a server: nodes share no folder (each has the endpoint and keys in its environment, as pods from a
    Secret); the lost node's successor resumes from the bucket and eval reads checkpoint and shards from it."""
    import pyarrow.fs as pafs
    from servers import mlflow_server, s3_server

    with s3_server(tmp_path / "s3", buckets=("lma3d",)) as s3:
        for key, value in s3.items():
            monkeypatch.setenv(key, value)
        bucket_fs, _ = pafs.FileSystem.from_uri("s3://lma3d/shards")
        pafs.copy_files(str(shards), "lma3d/shards", destination_filesystem=bucket_fs)
        with mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlflow",
                           artifacts="s3://lma3d/mlflow") as tracking:  # fmt: skip
            cluster = LocalRayCluster(tmp_path / "ray", num_cpus=1, env={**FAST_NODE_DEATH, **s3}).start()
            try:
                second = cluster.add_node("node2", num_cpus=1)
                marker, log = tmp_path / "hang", tmp_path / "train.log"
                fault = {"kind": "hang", "rank": 1, "step": KILL_STEP, "marker": str(marker)}
                # max_failures 2: this test is about the bucket; the one above holds a node loss to one failure
                overrides = train_overrides("s3://lma3d/shards", tmp_path / "work", max_steps=6, max_failures=2,
                                            checkpoint_every=CHECKPOINT_EVERY, placement_strategy="STRICT_SPREAD",
                                            storage_path="s3://lma3d/runs")  # fmt: skip
                args = ["--address", cluster.gcs_address, "--run-name", "bucket", f"mlflow.tracking_uri={tracking}",
                        *overrides]  # fmt: skip
                with open(log, "w") as out:
                    driver = subprocess.Popen(
                        [sys.executable, str(TESTS / "train_driver.py"), json.dumps(fault), *args],
                        env=_env(cluster), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                    )  # fmt: skip
                    _wait_for(marker, driver, log, timeout=300)
                    second.kill()
                    cluster.add_node("node2-again", num_cpus=1)
                    assert driver.wait(timeout=300) == 0, _explain(log)
                assert f"resumed at step {KILL_STEP - CHECKPOINT_EVERY}" in log.read_text()
                final = "lma3d/runs/bucket/checkpoint_step000000006"
                listed = bucket_fs.get_file_info(pafs.FileSelector(final, recursive=True))
                optim = sorted(i.base_name for i in listed if i.base_name.endswith("_optim_states.pt"))
                assert optim == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
                assert not (tmp_path / "work" / "runs").exists()  # no checkpoint on a node's disk

                evaluated = subprocess.run(
                    [sys.executable, "-m", "jobs.verbs.eval", "--checkpoint", f"s3://{final}", "--shards",
                     "s3://lma3d/shards", "--out", str(tmp_path / "eval"), "--address", cluster.gcs_address,
                     "--no-mlflow", "eval.num_actors=2", "eval.cpus_per_actor=0.5", "eval.batch_size=2",
                     "eval.viz_samples=0", "workdir=work"],
                    env=_env(cluster), cwd=REPO, capture_output=True, text=True, timeout=150,
                )  # fmt: skip
                assert evaluated.returncode == 0, evaluated.stderr[-4000:]
                assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 6
            finally:
                cluster.stop()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        artifacts = bucket_fs.get_file_info(pafs.FileSelector("lma3d/mlflow", recursive=True))
        assert any(i.path.endswith("config/config.yaml") for i in artifacts)  # the run's artifacts: in the bucket
