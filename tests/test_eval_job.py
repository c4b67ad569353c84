"""lma3d eval through a real local Ray (2 CPUs): the actor pool predicts every test sample exactly once,
re-runs are identical, the numbers are model.metrics.evaluate's on the same predictions, and the CLI writes
its files, renders and a child MLflow run under the training run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rawtree import write_agpil
from tiny import NUM_POINTS, tiny_model_config

from jobs.evaluation.eval_config import EvalConfig
from jobs.loading import Resolved

N_TEST = 11  # not a multiple of the batch size (3), nor of the samples per shard (4)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("eval_job")]


@pytest.fixture(scope="module")
def shards(ray_local, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    from pipeline.shards.config import ShardConfig
    from pipeline.shards.job import run

    root = tmp_path_factory.mktemp("eval")
    tree = write_agpil(root / "raw", n_test=N_TEST, n_train_images=3, num_points=NUM_POINTS)
    run(tree.root, "agpil", root / "shards", ShardConfig(samples_per_shard=4, min_shards=1), num_points=NUM_POINTS)
    return root / "shards", list(tree.expected_keys["triplet"])  # the test list's order


def _model(fidelity: str = "released"):
    from model.lmaffordance3d import build_model

    cfg = tiny_model_config(fidelity=fidelity)
    torch.manual_seed(7)
    return cfg, build_model(cfg, pretrained=False).trainable_state_dict()


def _eval_cfg(**changes) -> EvalConfig:
    return EvalConfig(**{"batch_size": 3, "num_actors": 2, "cpus_per_actor": 0.5, "viz_samples": 2} | changes)


def test_every_test_sample_is_predicted_exactly_once_by_two_actors(shards, tmp_path) -> None:
    from jobs.evaluation.runner import predict_shards

    folder, keys = shards
    cfg, weights = _model()
    pool = predict_shards(str(folder), Resolved(cfg, weights), _eval_cfg(), tmp_path)
    predictions = pool.predictions
    assert predictions.keys == keys and pool.duplicates == 0
    pred = predictions.read("pred")
    assert pred.shape == (N_TEST, NUM_POINTS) and np.isfinite(pred).all()


def test_auto_sizes_the_pool_from_the_local_rays_cpus(shards, tmp_path) -> None:
    import ray

    from jobs.evaluation.runner import predict_shards

    folder, keys = shards
    assert ray.cluster_resources()["CPU"] == 2  # conftest's ray_local
    cfg, weights = _model()
    source = Resolved(cfg, weights)
    pool = predict_shards(str(folder), source, _eval_cfg(num_actors="auto", cpus_per_actor=0.5), tmp_path / "a")
    assert pool.actors == 2, "(2 CPUs - 1 for the shard reader) / 0.5 CPU per actor"
    assert pool.predictions.keys == keys and pool.duplicates == 0
    one = predict_shards(str(folder), source, _eval_cfg(num_actors="auto", cpus_per_actor=1.0), tmp_path / "b")
    assert one.actors == 1 and one.predictions.keys == keys


def test_use_gpu_on_a_local_ray_without_gpus_is_refused(shards, tmp_path, monkeypatch, capsys) -> None:
    from jobs.verbs.eval import main as eval_main
    from model.lmaffordance3d import build_model
    from model.pretrained import save_pretrained

    folder, _ = shards
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    save_pretrained(build_model(tiny_model_config(), pretrained=False), tmp_path / "model")
    args = ["--checkpoint", str(tmp_path / "model"), "--shards", str(folder), "--out", str(tmp_path / "out")]
    args += [f"workdir={tmp_path}", "eval.use_gpu=true", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}"]
    assert eval_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "eval.use_gpu is true but this machine's Ray has no GPU" in err[-1], err


def test_a_rerun_gives_identical_predictions_and_metrics(shards, tmp_path) -> None:
    from jobs.evaluation.runner import run_eval

    folder, _ = shards
    cfg, weights = _model()
    first = run_eval(str(folder), Resolved(cfg, weights), _eval_cfg(), tmp_path / "first")
    second = run_eval(str(folder), Resolved(cfg, weights), _eval_cfg(num_actors=1, cpus_per_actor=1.0), tmp_path / "2")
    np.testing.assert_array_equal(first.predictions.read("pred"), second.predictions.read("pred"))
    assert json.dumps(first.metrics, sort_keys=True) == json.dumps(second.metrics, sort_keys=True)


def test_pool_predictions_match_the_in_process_loop_and_metrics_are_model_metrics(shards, tmp_path) -> None:
    from inprocess_eval import predict_loader

    from jobs.evaluation.runner import run_eval
    from jobs.loading import build_inference_model
    from model.metrics import evaluate
    from pipeline.loaders import eval_loader
    from pipeline.loaders.config import DataConfig

    folder, _ = shards
    cfg, weights = _model("corrected")  # masks padding: a prediction does not depend on its batch-mates
    pooled = run_eval(str(folder), Resolved(cfg, weights), _eval_cfg(), tmp_path / "pool")
    model = build_inference_model(cfg, weights)
    data = DataConfig(shards=str(folder), eval_batch_size=4, num_workers=0)
    local, _ = predict_loader(model, eval_loader(data, cfg.image_size, 0, 1), tmp_path / "loop")
    p = pooled.predictions
    assert local.keys == p.keys
    np.testing.assert_array_equal(local.read("gt"), p.read("gt"))
    np.testing.assert_allclose(local.read("pred"), p.read("pred"), atol=1e-5)
    # the actors' per-sample scores, summarized on the driver = the metrics of all maps at once
    expected = evaluate(p.read("pred"), p.read("gt"), p.objects, p.affordances)
    assert json.dumps(pooled.metrics, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert pooled.metrics["n"] == N_TEST and set(pooled.metrics["per_object"]) == {"Bag", "Chair", "Mug"}


def test_eval_cli_writes_results_renders_and_a_child_run_of_the_training_run(
    shards, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from inprocess_eval import read_predictions
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from jobs.verbs.eval import main as eval_main
    from model.lmaffordance3d import build_model
    from model.metrics import evaluate
    from model.pretrained import save_pretrained

    folder, keys = shards
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    training = client.create_run(client.create_experiment("lma3d/test", str(tmp_path / "art")), run_name="train")
    parent = training.info.run_id
    model_dir = tmp_path / "model"
    torch.manual_seed(7)
    save_pretrained(build_model(tiny_model_config(), pretrained=False), model_dir)
    config = json.loads((model_dir / "config.json").read_text())  # as lma3d export records a tracked source
    config["source"] = {"step": 40, "run_id": parent, "tracking_uri": uri}
    (model_dir / "config.json").write_text(json.dumps(config))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    out = tmp_path / "out"
    args = ["--checkpoint", str(model_dir), "--shards", str(folder), "--out", str(out), f"workdir={tmp_path}"]
    args += ["eval.batch_size=3", "eval.num_actors=2", "eval.cpus_per_actor=0.5", "eval.viz_samples=2"]
    called_ms = time.time() * 1000
    assert eval_main(args) == 0, capsys.readouterr().err
    returned_ms = time.time() * 1000
    printed = capsys.readouterr().out
    assert "AUC" in printed and "aIOU" in printed and "per object" in printed

    stored_keys, stored = read_predictions(out / "predictions.npz")
    text_pred = np.loadtxt(out / "prediction.txt")
    assert stored_keys == keys and text_pred.shape == (N_TEST, NUM_POINTS)
    assert (out / "prediction_keys.txt").read_text().splitlines() == keys  # prediction.txt's rows, in list order
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # the maps' scratch is removed
    np.testing.assert_allclose(stored.astype(np.float32), text_pred, atol=1e-3)
    document = json.loads((out / "metrics.json").read_text())
    gt_by_key = {}  # GT from the shards' own label files, through the loader the training uses
    from pipeline.loaders import eval_loader
    from pipeline.loaders.config import DataConfig

    for batch in eval_loader(DataConfig(shards=str(folder), eval_batch_size=4, num_workers=0), 64, 0, 1):
        for key, label in zip(batch["key"], batch["label"][:, 0].numpy()):
            gt_by_key[key] = label
    again = evaluate(text_pred, np.stack([gt_by_key[k] for k in keys]))
    for name in ("auc", "aiou", "sim", "mae"):
        assert document[name] == pytest.approx(again[name], abs=1e-3)  # prediction.txt keeps 6 decimals
    objects = sorted({k.split("_")[1] for k in keys})  # Test_<Object>_<affordance>_<n>
    shown = [next(k for k in keys if k.split("_")[1] == obj) for obj in objects[:2]]  # two objects, not two Bags
    viz = sorted(p.name for p in (out / "viz").iterdir())
    assert viz == sorted(f"{k}{suffix}" for k in shown for suffix in (".png", "_GT.ply", "_Pred.ply"))
    with Image.open(out / "viz" / f"{shown[0]}.png") as png:
        assert png.size == (1660, 380)  # image + 2 prediction views + 2 GT views

    children = client.search_runs(
        [training.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    assert len(children) == 1
    child = children[0]
    assert child.data.tags["lma3d.source"] == str(model_dir) and child.info.status == "FINISHED"
    assert child.info.run_name == "eval-step40"
    assert child.data.metrics["test/auc"] == pytest.approx(document["auc"])
    # ... and on the training run at the checkpoint's step, where several evaluations make a curve
    on_training = client.get_metric_history(parent, "test/auc")
    assert [(m.step, m.value) for m in on_training] == [(40, pytest.approx(document["auc"]))]
    assert child.data.metrics["test/n"] == N_TEST
    inputs = client.get_run(child.info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name.split("/")[-1], [t.value for t in i.tags]) for i in inputs] == [("test", ["evaluation"])]
    logged = {a.path for a in client.list_artifacts(child.info.run_id, "eval")}
    logged |= {a.path for a in client.list_artifacts(child.info.run_id, "viz")}
    assert {"eval/metrics.json", "eval/per_class.csv", "eval/predictions.npz", f"viz/{shown[0]}.png"} <= logged
    # The run spans the evaluation (not just its logging): started before inference, ended after the results.
    info = child.info
    assert called_ms <= info.start_time < (out / "metrics.json").stat().st_mtime * 1000 <= info.end_time <= returned_ms
    assert info.end_time - info.start_time >= 0.6 * (returned_ms - called_ms), (info, returned_ms - called_ms)
    # Per-object / per-affordance results as an MLflow table, one row per per_class.csv row.
    assert {"path": "eval/per_class.json", "type": "table"} in json.loads(child.data.tags["mlflow.loggedArtifacts"])
    table = Path(client.download_artifacts(child.info.run_id, "eval/per_class.json", str(tmp_path)))
    table = json.loads(table.read_text())
    assert len(table["data"]) == len((out / "per_class.csv").read_text().splitlines()) - 1
