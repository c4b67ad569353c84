"""lma3d submit against a real Ray cluster (`ray start --head` on 127.0.0.1 with token auth): the shard and
train verbs run as Ray jobs from the shipped working_dir and SUCCEED; their outputs are where they should be."""

import json
import os

import pytest
from ray_cluster import LocalRayCluster
from tiny import NUM_POINTS, tiny_overrides

from jobs.verbs.submit import main as submit_main
from pipeline.synth.config import SynthConfig
from pipeline.synth.generate import generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    head = LocalRayCluster(tmp_path_factory.mktemp("ray"), num_cpus=3).start()
    saved = {k: os.environ.get(k) for k in head.client_env()}
    os.environ.update(head.client_env())
    yield head
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    head.stop()


def test_submitted_shard_and_train_jobs_succeed_with_their_outputs(cluster, tmp_path, capsys):
    generate(SynthConfig(out=str(tmp_path / "raw"), train_images=12, test_samples=4, points_per_object=3,
                         num_points=NUM_POINTS, image_size=64))  # fmt: skip
    shards = tmp_path / "shards"
    code = submit_main([
        "shard", "--source", str(tmp_path / "raw"), "--out", str(shards), "--num-points", str(NUM_POINTS),
        "--samples-per-shard", "4", "--address", cluster.address,
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "SUCCEEDED" in out, out[-2000:]
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["written"] == 12 + 4 + 3 * 23

    overrides = tiny_overrides(**{"data.shards": str(shards), "workdir": str(tmp_path / "work")})
    overrides += ["data.batch_size=2", "data.num_workers=0", "train.num_workers=2", "train.max_steps=2",
                  "train.precision=fp32", "train.val_every=0", "mlflow.system_metrics=false"]  # fmt: skip
    code = submit_main(["train", "--run-name", "submitted", *overrides, "--address", cluster.address])
    out = capsys.readouterr().out
    assert code == 0 and "SUCCEEDED" in out, out[-3000:]
    assert list((tmp_path / "work" / "runs" / "submitted").glob("checkpoint_step*/lma3d_meta.json"))
    assert (tmp_path / "work" / "mlflow.db").exists()
