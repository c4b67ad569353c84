"""A shard folder's splits as MLflow dataset inputs (jobs/dataset_inputs.py), on a real sqlite MLflow store and a
folder the shard job wrote (no Ray): one dataset per split with its context, counts from the manifest in the
profile, a digest that follows the split's bytes, and logging again (a resumed attempt) adds nothing."""

from __future__ import annotations

import hashlib
import json

import pytest
from mlflow.tracking import MlflowClient
from tiny import NUM_POINTS

from jobs.dataset_inputs import log_shard_inputs
from pipeline.shards.config import ShardConfig
from pipeline.shards.job import run as shard
from pipeline.shards.manifest import read_manifest
from pipeline.synth.config import SynthConfig
from pipeline.synth.generate import generate


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    generate(SynthConfig(out=str(root / "raw"), train_images=6, test_samples=3, points_per_object=3,
                         num_points=NUM_POINTS, image_size=32))  # fmt: skip
    shard(root / "raw", "agpil", root / "demo-shards", ShardConfig(samples_per_shard=2), NUM_POINTS, use_ray=False)
    return root / "demo-shards"


def _inputs(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    return {t.value: i.dataset for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}


def test_training_run_holds_the_train_split_as_training_and_the_test_split_as_validation(folder, tmp_path):
    manifest = read_manifest(folder)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("inputs")).info.run_id
    log_shard_inputs(client, run_id, str(folder), manifest, ["training", "validation"])
    inputs = _inputs(client, run_id)
    assert set(inputs) == {"training", "validation"}
    train, test = inputs["training"], inputs["validation"]
    assert (train.name, test.name) == ("demo-shards/train", "demo-shards/test")
    assert json.loads(train.source) == {"uri": str(folder)} and train.source_type == "local"
    profile = json.loads(train.profile)
    assert profile["samples"] == 6 and profile["shards"] == 3
    assert profile["point_clouds"] == manifest["point_bank"]["clouds"]
    assert profile["quarantined"] == manifest["quarantined"] and json.loads(test.profile)["samples"] == 3
    hashes = [s["sha256"] for s in manifest["shards"] if s["split"] == "train"]
    assert train.digest == hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:32] != test.digest


def test_logging_the_inputs_again_adds_nothing(folder, tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("again")).info.run_id
    for _ in range(2):
        log_shard_inputs(client, run_id, str(folder), read_manifest(folder), ["evaluation"])
    run = client.get_run(run_id)
    assert len(run.inputs.dataset_inputs) == 1 and set(_inputs(client, run_id)) == {"evaluation"}
