"""The chain on object storage, against a real S3 endpoint (moto's server on 127.0.0.1): the Ray Data shard job
writes to a bucket, Ray Train (2 CPU workers, DeepSpeed ZeRO-2) reads its shards from there and keeps its
checkpoints there, a second launch resumes from the bucket, evaluation scores a checkpoint read from the bucket
on the bucket's test shards, and that checkpoint is exported and predicts. No checkpoint is written to a local
path (only the bank cache, temporary folders, the SQLite MLflow store and the outputs asked for). The Ray of
these tests runs with the endpoint in its environment, as a cluster's nodes would (credentials come from the
node, never from a config or a Ray object)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from servers import S3_KEYS, s3_server
from tiny import NUM_POINTS, tiny_overrides

from jobs.experiment_config import ExperimentConfig
from jobs.typed_yaml import load

pytestmark = pytest.mark.slow
BUCKET = "lma3d"


@pytest.fixture(scope="module")
def s3_ray(tmp_path_factory):
    """The S3 endpoint's environment in this process and a Ray started with it; the session's plain Ray (if
    one ran) is started again afterwards for the tests that follow."""
    import ray

    had_ray = ray.is_initialized()
    with s3_server(tmp_path_factory.mktemp("s3"), buckets=(BUCKET,)) as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        os.environ["LMA3D_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
        ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield env
        finally:
            ray.shutdown()
            os.environ.pop("LMA3D_CACHE_DIR", None)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if had_ray:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def _keys(env: dict, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_shard_train_resume_and_eval_with_everything_in_a_bucket(s3_ray, tmp_path):
    from jobs.evaluation.job import evaluate
    from jobs.training.launcher import launch
    from pipeline.shards.config import ShardConfig
    from pipeline.shards.job import run as shard
    from pipeline.synth.config import SynthConfig
    from pipeline.synth.generate import generate

    generate(SynthConfig(out=str(tmp_path / "raw"), train_images=16, test_samples=5, points_per_object=3,
                         num_points=NUM_POINTS, image_size=64))  # fmt: skip
    shards = f"s3://{BUCKET}/shards/synth"
    shard(tmp_path / "raw", "agpil", shards, ShardConfig(samples_per_shard=4), num_points=NUM_POINTS)  # Ray Data
    overrides = tiny_overrides(**{"data.shards": shards, "workdir": str(tmp_path / "work")})
    overrides += ["data.batch_size=2", "data.eval_batch_size=3", "data.num_workers=0", "train.num_workers=2",
                  "train.precision=fp32", "train.epochs=2", "train.warmup_steps=2", "train.val_every=0",
                  "train.zero_stage=2", "train.checkpoint_every=1", "train.max_steps=2",
                  f"train.storage_path=s3://{BUCKET}/runs", "mlflow.system_metrics=false",
                  f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]  # fmt: skip
    cfg = load(ExperimentConfig, None, overrides)
    first = launch(cfg, run_name="bucket")
    assert first.last_step == 2 and first.latest_checkpoint.startswith(f"s3://{BUCKET}/runs/bucket/checkpoint_")
    second = launch(replace(cfg, train=replace(cfg.train, max_steps=3)), run_name="bucket")
    assert second.mode == "resume" and second.last_step == 3 and second.run_id == first.run_id
    stored = _keys(s3_ray, "runs/bucket/")
    assert any(k.endswith("lma3d_meta.json") for k in stored) and any("global_step" in k for k in stored)

    report = evaluate(cfg, second.latest_checkpoint, out=str(tmp_path / "eval"), track=False)
    assert report.result.metrics["n"] == 5 and 0.0 <= report.result.metrics["mae"] <= 1.0
    # export from the bucket's checkpoint (copied to a temporary folder, consolidated), then predict with it
    from jobs.serving.export_folder import export
    from jobs.verbs.predict import main as predict_main

    export(cfg, second.latest_checkpoint, tmp_path / "model")
    image = next((tmp_path / "raw").rglob("*.jpg"))
    points = np.random.default_rng(0).normal(size=(NUM_POINTS, 3)).astype(np.float32)
    np.save(tmp_path / "points.npy", points)
    assert predict_main(["--model", str(tmp_path / "model"), "--image", str(image), "--points",
                         str(tmp_path / "points.npy"), "--instruction", "grasp it", "--out",
                         str(tmp_path / "predicted")]) == 0  # fmt: skip
    assert list((tmp_path / "predicted").iterdir())
    local = [p for p in tmp_path.rglob("*") if p.is_file() and "checkpoint" in p.name]
    assert local == []  # checkpoints only in the bucket
    for key in S3_KEYS.values():
        assert key not in (tmp_path / "mlflow.db").read_bytes().decode("latin-1")


def test_a_sweeps_trials_keep_their_checkpoints_in_the_bucket(s3_ray, tmp_path):
    import json

    from jobs.verbs.sweep import main as sweep_main
    from pipeline.shards.config import ShardConfig
    from pipeline.shards.job import run as shard
    from pipeline.synth.config import SynthConfig
    from pipeline.synth.generate import generate

    generate(SynthConfig(out=str(tmp_path / "raw"), train_images=8, test_samples=4, points_per_object=3,
                         num_points=NUM_POINTS, image_size=64))  # fmt: skip
    shards = f"s3://{BUCKET}/shards/sweep"
    shard(tmp_path / "raw", "agpil", shards, ShardConfig(samples_per_shard=4), num_points=NUM_POINTS, use_ray=False)
    space = tmp_path / "space.yaml"
    space.write_text(json.dumps({"train.lr": {"choice": [1e-4, 3e-4]}}))
    args = ["--search", str(space), "--trials", "2", "--max-concurrent", "1", "--name", "lr", *tiny_overrides(),
            f"data.shards={shards}", f"workdir={tmp_path / 'work'}", f"train.storage_path=s3://{BUCKET}/sweep-runs",
            "data.batch_size=2", "data.eval_batch_size=4", "data.num_workers=0", "train.num_workers=1",
            "train.precision=fp32", "train.zero_stage=0", "train.warmup_steps=2", "train.epochs=1",
            "train.val_every=1", "mlflow.system_metrics=false"]  # fmt: skip
    assert sweep_main(args) == 0
    trials = {k.split("/")[3] for k in _keys(s3_ray, "sweep-runs/sweeps/lr/") if k.endswith("lma3d_meta.json")}
    assert len(trials) == 2 and all(t.startswith("lr-") for t in trials)  # each trial's run folder in the bucket
    best = json.loads((tmp_path / "work" / "sweeps" / "lr" / "best.json").read_text())
    assert best["checkpoint"].startswith(f"s3://{BUCKET}/sweep-runs/sweeps/lr/lr-")
    assert not list((tmp_path / "work").rglob("lma3d_meta.json"))  # no checkpoint on the local disk
