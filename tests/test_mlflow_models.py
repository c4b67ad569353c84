"""MLflow-native models, end to end on a tiny `--no-ray` run and a real sqlite MLflow store: through MlflowClient,
the training run's LoggedModels are exactly its kept checkpoints with their validation metrics, and
`lma3d export --register` from the run gives a version linked to the training run and to the best checkpoint's
LoggedModel, with a signature, an input example, a description naming its metrics and fidelity / backbone /
precision tags; `models:/name@alias` still loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny import synth_shards, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mlflow_models")]  # trains with DeepSpeed (one process, no Ray)
NAME = "lma3d-card"


def _train(root: Path, no_ray: bool) -> dict:
    """6 optimizer steps (2 per epoch), validated at each epoch's end, a checkpoint at every step, 2 kept best."""
    import os

    from jobs.experiment_config import ExperimentConfig
    from jobs.run_folder import RunFolder
    from jobs.training.launcher import launch
    from jobs.typed_yaml import load

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    shards = synth_shards(root, train_images=4, test_samples=3, samples_per_shard=4)
    overrides = tiny_overrides(**{"data.shards": str(shards), "workdir": str(root / "work")})
    overrides += ["data.batch_size=2", "data.eval_batch_size=3", "data.num_workers=0", "train.precision=fp32",
                  "train.epochs=3", "train.warmup_steps=2", "train.log_every=1", "train.val_every=1",
                  "train.checkpoint_every=1", "train.keep_checkpoints=2", "train.zero_stage=1",
                  "train.num_workers=1", "mlflow.system_metrics=false"]  # fmt: skip
    cfg = load(ExperimentConfig, None, overrides)
    summary = launch(cfg, run_name="card", no_ray=no_ray)
    kept = RunFolder(cfg.storage_path, "card").registered()[1]
    return {"cfg": cfg, "summary": summary, "kept": kept, "root": root}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return _train(tmp_path_factory.mktemp("card"), no_ray=True)


def _models(uri: str, run_id: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    return {m.name: m for m in found}


def test_the_runs_logged_models_are_exactly_its_kept_checkpoints_with_their_metrics(trained):
    _check_kept(trained)


def test_the_training_experiment_is_of_the_model_training_kind(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained["cfg"].tracking_uri)
    experiment = client.get_experiment(client.get_run(trained["summary"].run_id).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_under_ray_train_too_the_logged_models_are_exactly_the_kept_checkpoints(tmp_path, ray_local):
    _check_kept(_train(tmp_path, no_ray=False))


def _check_kept(trained: dict) -> None:
    from mlflow.tracking import MlflowClient

    cfg, summary, kept = trained["cfg"], trained["summary"], trained["kept"]
    assert summary.last_step == 6
    models = _models(cfg.tracking_uri, summary.run_id)
    assert set(models) == {Path(m["path"]).name for m in kept} and len(models) < 6  # the dropped ones are gone
    client = MlflowClient(cfg.tracking_uri)
    for meta in kept:
        model = models[Path(meta["path"]).name]
        assert model.params["step"] == str(meta["step"]) and model.tags["lma3d.checkpoint.path"] == meta["path"]
        linked = {m.key: m.value for m in model.metrics or []}
        validated = {k: v for k, v in meta["metrics"].items() if k.startswith("val/") and v != -1.0}
        assert linked == pytest.approx(validated) and set(linked) <= {"val/auc", "val/aiou", "val/sim", "val/mae",
                                                                       "val/n"}  # fmt: skip
        assert all(m.model_id == model.model_id and m.step == meta["step"] for m in model.metrics or [])
    # Each validation is one point of the run's curve, linked or not.
    assert sorted(m.step for m in client.get_metric_history(summary.run_id, "val/auc")) == [2, 4, 6]
    tags = client.get_run(summary.run_id).data.tags  # the run tags other code reads are still there
    assert {k for k in tags if k.startswith("checkpoint/")} == {f"checkpoint/{n}" for n in models}


def test_export_register_links_the_version_to_the_training_run_and_its_best_checkpoint(trained):
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs.loading import resolve
    from jobs.serving.export_folder import export
    from jobs.tracking import tracking_uri_for_now

    cfg, summary = trained["cfg"], trained["summary"]
    uri = cfg.tracking_uri
    report = export(cfg, summary.run_id, trained["root"] / "model", register_name=NAME, alias="champion")
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    best = _models(uri, summary.run_id)[Path(summary.best_checkpoint).name]
    assert version.run_id == summary.run_id and report.registered["model_id"] == best.model_id
    assert client.get_logged_model(best.model_id).status.name == "READY"
    assert {version.tags[k] for k in ("fidelity", "backbone", "precision")} == {"released", "tiny", "fp32"}
    auc = {m.key: m.value for m in best.metrics}["val/auc"]
    assert f"val/auc {auc:.4f}" in version.description and "best kept checkpoint" in version.description

    with tracking_uri_for_now(uri):
        info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
        assert info.model_id == best.model_id
        assert [c["name"] for c in info.signature.inputs.to_dict()] == ["image", "points", "instruction"]
        assert info.saved_input_example_info is not None
        pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        example = pyfunc.input_example
        heat = pyfunc.predict(example)  # the input example (its image is base64 text after the JSON round trip)
    assert len(heat) == 1 and heat[0].shape == (len(example["points"][0]),) and np.all((heat[0] >= 0) & (heat[0] <= 1))
    source = resolve(f"models:/{NAME}@champion", uri)  # as `lma3d predict --model` / serve load it
    assert source.provenance["kind"] == "registry"
    # Registering did not change which checkpoints the Models tab lists.
    assert set(_models(uri, summary.run_id)) == {Path(m["path"]).name for m in trained["kept"]}


def test_export_register_of_a_named_logged_model_links_that_checkpoint(trained, capsys):
    """`lma3d export --checkpoint models:/m-<id> --register`: the LoggedModel of a kept checkpoint that is not the
    best, read from its checkpoint folder."""
    from mlflow.tracking import MlflowClient

    from jobs.verbs.export import main as export_main

    cfg, summary = trained["cfg"], trained["summary"]
    models = _models(cfg.tracking_uri, summary.run_id)
    other = next(m for name, m in models.items() if name != Path(summary.best_checkpoint).name)
    args = ["--checkpoint", f"models:/{other.model_id}", "--out", str(trained["root"] / "named"), "--register",
            NAME, "--alias", "named", f"workdir={cfg.workdir}", f"mlflow.tracking_uri={cfg.tracking_uri}"]  # fmt: skip
    assert export_main(args) == 0, capsys.readouterr().err
    version = MlflowClient(cfg.tracking_uri).get_model_version_by_alias(NAME, "named")
    assert version.run_id == summary.run_id and version.tags["lma3d.step"] == other.params["step"]
    assert f"named explicitly (models:/{other.model_id})" in version.description
    assert MlflowClient(cfg.tracking_uri).get_logged_model(other.model_id).tags["mlflow.modelVersions"]
