"""Multi-node on one machine: a head and a second node (separate raylets on 127.0.0.1, own temp dirs and ports, one
token) sharing no folder: shards, checkpoints and MLflow artifacts in S3 (moto's server on 127.0.0.1), MLflow behind a
server, each node with the endpoint and keys in its environment (as pods from a Secret). Two training workers on
different nodes (train.placement_strategy: STRICT_SPREAD); the second node is killed mid-run after a checkpoint and a
successor added; the run resumes from the bucket's latest checkpoint in the same MLflow run and finishes, each step
logged once (the replayed step 3 too). Then `lma3d eval` with eval.num_actors: 2 reads checkpoint and shards from the
bucket with its actor pool across both nodes.

One such run costs about two minutes, so it happens once (the module's fixture) and each test checks one of its
promises."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_cluster import VENV_BIN, LocalRayCluster
from train_data import REPO, TESTS, build_shards, train_overrides

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multinode")]
CHECKPOINT_EVERY = 2
KILL_STEP = 4
"""The node is killed at this step, before its checkpoint: steps after the one of step 2 are trained again."""
# The GCS declares a node dead after failure_threshold missed health checks (default 5 x 3 s).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
FINAL = "lma3d/runs/bucket/checkpoint_step000000006"


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


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, ray_local) -> dict:
    """Train on two nodes, lose one after a checkpoint, resume, then eval across both: what each test checks."""
    import pyarrow.fs as pafs
    from servers import mlflow_server, s3_server

    tmp = tmp_path_factory.mktemp("two-nodes")
    shards = build_shards(tmp / "data")
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(s3_server(tmp / "s3", buckets=("lma3d",)))
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        for key, value in s3.items():
            patch.setenv(key, value)
        bucket_fs, _ = pafs.FileSystem.from_uri("s3://lma3d/shards")
        pafs.copy_files(str(shards), "lma3d/shards", destination_filesystem=bucket_fs)
        tracking = stack.enter_context(
            mlflow_server(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "mlflow", artifacts="s3://lma3d/mlflow")
        )
        cluster = LocalRayCluster(tmp / "ray", num_cpus=1, env={**FAST_NODE_DEATH, **s3}).start()
        stack.callback(cluster.stop)
        second = cluster.add_node("node2", num_cpus=1)
        marker, log = tmp / "hang", tmp / "train.log"
        fault = {"kind": "hang", "rank": 1, "step": KILL_STEP, "marker": str(marker)}
        # max_failures 2: a node loss is one failure; the second is room for this machine's noise, not needed
        overrides = train_overrides("s3://lma3d/shards", tmp / "work", max_steps=6, max_failures=2,
                                    checkpoint_every=CHECKPOINT_EVERY, placement_strategy="STRICT_SPREAD",
                                    storage_path="s3://lma3d/runs")  # fmt: skip
        args = ["--address", cluster.gcs_address, "--run-name", "bucket", f"mlflow.tracking_uri={tracking}",
                *overrides]  # fmt: skip
        with open(log, "w") as out:
            driver = subprocess.Popen([sys.executable, str(TESTS / "train_driver.py"), json.dumps(fault), *args],
                                      env=_env(cluster), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
            _wait_for(marker, driver, log, timeout=300)  # rank 1 reached step 4, step 2's checkpoint registered
            killed = time.time()
            second.kill()
            cluster.add_node("node2-again", num_cpus=1)
            assert driver.wait(timeout=300) == 0, _explain(log)
        evaluated = subprocess.run(
            [sys.executable, "-m", "jobs.verbs.eval", "--checkpoint", f"s3://{FINAL}", "--shards", "s3://lma3d/shards",
             "--out", str(tmp / "eval"), "--address", cluster.gcs_address, "--no-mlflow", "eval.num_actors=2",
             "eval.cpus_per_actor=0.5", "eval.batch_size=2", "eval.viz_samples=0", "workdir=work"],
            env=_env(cluster), cwd=REPO, capture_output=True, text=True, timeout=150,
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr[-4000:]
        yield {
            "tmp": tmp, "log": log.read_text(), "killed": killed, "tracking": f"sqlite:///{tmp / 'mlflow.db'}",
            "workers": _actors(cluster, "RayTrainWorker"), "predictors": _actors(cluster, "Predictor"),
            "bucket": [i.path for i in bucket_fs.get_file_info(pafs.FileSelector("lma3d", recursive=True))],
            "metrics": json.loads((tmp / "eval" / "metrics.json").read_text()),
        }  # fmt: skip


def _mlflow_run(two_nodes: dict):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(two_nodes["tracking"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    return client, runs[0]


def test_a_lost_node_resumes_from_the_latest_checkpoint_in_the_same_mlflow_run(two_nodes):
    assert f"resumed at step {KILL_STEP - CHECKPOINT_EVERY}" in two_nodes["log"]
    client, run = _mlflow_run(two_nodes)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # step 3, trained twice, logged once
    logged = {m.step: m.timestamp / 1000 for m in history}
    assert logged[KILL_STEP - 1] < two_nodes["killed"] < logged[KILL_STEP]  # rank 0 cannot log step 4 alone
    recovery = logged[KILL_STEP] - two_nodes["killed"]
    print(f"\nnode killed at step {KILL_STEP} -> step {KILL_STEP} logged {recovery:.1f} s later")


def test_every_attempts_two_workers_are_spread_over_both_nodes(two_nodes):
    groups = collections.defaultdict(set)  # each attempt's worker group has a placement group of its own
    for worker in two_nodes["workers"]:
        groups[worker["placement_group_id"]].add(worker["node_id"])
    assert len(groups) >= 2 and all(len(nodes) == 2 for nodes in groups.values()), groups


def test_checkpoints_and_mlflow_artifacts_are_in_the_bucket_and_nothing_on_a_nodes_disk(two_nodes):
    final = [p.removeprefix(FINAL + "/") for p in two_nodes["bucket"] if p.startswith(FINAL + "/")]
    optim = sorted(p.rsplit("/", 1)[-1] for p in final if p.endswith("_optim_states.pt"))
    assert optim == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]  # both ranks' shards
    assert sorted(p for p in final if p.startswith("rng_rank")) == ["rng_rank0.json", "rng_rank1.json"]
    assert any(p.startswith("lma3d/mlflow/") and p.endswith("config/config.yaml") for p in two_nodes["bucket"])
    assert not (two_nodes["tmp"] / "work" / "runs").exists()


def test_eval_reads_the_bucket_with_one_model_actor_on_each_node(two_nodes):
    assert two_nodes["metrics"]["n"] == 6
    predictors = two_nodes["predictors"]
    assert len(predictors) == 2 and len({a["node_id"] for a in predictors}) == 2
