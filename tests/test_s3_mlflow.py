"""An `mlflow server` on PostgreSQL with `--artifacts-destination s3://...` on a real S3 endpoint (moto's server
on 127.0.0.1), as infra/mlflow deploys it with MinIO: a tiny training run reading its shards from the bucket, its
evaluation and `lma3d export --register` log through the server, and everything they upload lands in the
bucket (none on the server's disk); `models:/name@alias` loads back from it through the server's proxy."""

from __future__ import annotations

import numpy as np
import pytest
from servers import S3_KEYS, find_postgres, mlflow_server, postgres_server, s3_server
from tiny import NUM_POINTS, tiny_overrides

pytestmark = pytest.mark.slow
BUCKET = "lma3d"
NAME = "lma3d-s3"


def _keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def no_session_ray():
    """No Ray running while the test runs: the eval's Ray Data tasks must run in a Ray started with the S3 endpoint
    in its environment (the session's Ray, started earlier by another test, has none); restarted afterwards."""
    import ray

    had = ray.is_initialized()
    ray.shutdown()
    yield
    ray.shutdown()
    if had:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def test_a_run_its_eval_and_its_registered_model_land_in_the_bucket_and_load_back(tmp_path, monkeypatch,
                                                                                   no_session_ray):  # fmt: skip
    bindir, why = find_postgres()
    if bindir is None:
        pytest.skip(f"PostgreSQL unavailable: {why}")
    import mlflow

    from jobs.evaluation.job import evaluate
    from jobs.experiment_config import ExperimentConfig
    from jobs.serving.export_folder import export
    from jobs.tracking import tracking_uri_for_now
    from jobs.training.launcher import launch
    from jobs.typed_yaml import load
    from pipeline.shards.config import ShardConfig
    from pipeline.shards.job import run as shard
    from pipeline.synth.config import SynthConfig
    from pipeline.synth.generate import generate

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("LMA3D_CACHE_DIR", str(tmp_path / "cache"))
    with s3_server(tmp_path / "s3", buckets=(BUCKET,)) as env:
        for key, value in env.items():  # the shard job, the loaders and the MLflow server read these
            monkeypatch.setenv(key, value)
        generate(SynthConfig(out=str(tmp_path / "raw"), train_images=4, test_samples=3, points_per_object=3,
                             num_points=NUM_POINTS, image_size=64))  # fmt: skip
        shards = f"s3://{BUCKET}/shards"
        shard(tmp_path / "raw", "agpil", shards, ShardConfig(samples_per_shard=4), num_points=NUM_POINTS,
              use_ray=False)  # fmt: skip
        artifacts = f"s3://{BUCKET}/mlflow"
        with postgres_server(bindir, tmp_path / "pg") as database, \
                mlflow_server(database, tmp_path / "pg", artifacts=artifacts) as uri:  # fmt: skip
            overrides = tiny_overrides(**{"data.shards": shards, "workdir": str(tmp_path / "work")})
            overrides += ["data.batch_size=2", "data.eval_batch_size=3", "data.num_workers=0",
                          "train.precision=fp32", "train.epochs=1", "train.warmup_steps=1", "train.val_every=0",
                          "train.zero_stage=1", "train.num_workers=1", "mlflow.system_metrics=false",
                          f"mlflow.tracking_uri={uri}"]  # fmt: skip
            cfg = load(ExperimentConfig, None, overrides)
            summary = launch(cfg, run_name="bucket", no_ray=True)
            report = evaluate(cfg, summary.latest_checkpoint, out=str(tmp_path / "eval"))
            export(cfg, summary.run_id, tmp_path / "model", register_name=NAME, alias="champion")

            stored = _keys(env["AWS_ENDPOINT_URL"], "mlflow/")
            assert any(k.endswith("config/config.yaml") for k in stored)  # the training run's artifacts
            assert any(report.run_id in k and k.endswith("per_class.csv") for k in stored)  # the eval run's
            assert any(k.endswith("/MLmodel") for k in stored)  # the registered model
            assert not list((tmp_path / "pg").glob("mlflow-artifacts"))  # nothing on the server's disk
            with tracking_uri_for_now(uri):
                pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
                heat = pyfunc.predict(pyfunc.input_example)
            assert len(heat) == 1 and np.all((heat[0] >= 0) & (heat[0] <= 1))
    assert S3_KEYS["AWS_SECRET_ACCESS_KEY"] not in (tmp_path / "pg" / "mlflow-server.log").read_text()
