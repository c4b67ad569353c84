"""jobs.loading.load: every kind of spec gives (model, config, provenance) through the same checks and build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from registered import IMAGE, INSTRUCTION, POINTS, export_tiny, register_tiny

from jobs.entry import UserError
from jobs.loading import load, model_from_package, model_package, resolve
from jobs.serving.batch_predict import Item, predict_item


def _predict(model) -> np.ndarray:
    return predict_item(model, Item("x", IMAGE, POINTS, INSTRUCTION)).values


def test_an_exported_folder_loads_as_model_config_and_provenance(tmp_path: Path) -> None:
    folder = export_tiny(tmp_path / "model", seed=3)
    config = json.loads((folder / "config.json").read_text())
    config["source"] = {"spec": "ckpt", "kind": "checkpoint", "step": 12, "run_id": "a" * 32, "tracking_uri": "x"}
    (folder / "config.json").write_text(json.dumps(config))
    model, cfg, origin = load(str(folder), overrides=["model.max_txt_len=20"])
    assert cfg is model.cfg and cfg.fps_start == "first" and cfg.max_txt_len == 20 and not model.training
    assert isinstance(origin, dict)
    assert (origin["kind"], origin["name"], origin["step"], origin["run_id"]) == ("exported", "model", 12, "a" * 32)
    assert origin["backbone_id"] == "tiny" and origin["spec"] == str(folder)


def test_the_eval_actors_package_rebuilds_the_same_model(tmp_path: Path) -> None:
    source = resolve(str(export_tiny(tmp_path / "model", seed=4)), None)
    direct, _, _ = load(str(tmp_path / "model"))
    np.testing.assert_array_equal(_predict(model_from_package(model_package(source.config, source.weights))),
                                  _predict(direct))  # fmt: skip


def test_a_package_with_a_foreign_model_key_is_refused_by_the_same_converter(tmp_path: Path) -> None:
    source = resolve(str(export_tiny(tmp_path / "model", seed=4)), None)
    package = model_package(source.config, source.weights)
    package["model"]["hidden_trapdoor"] = 1
    with pytest.raises(ValueError, match=r"<model package>: unknown key\(s\) model.hidden_trapdoor"):
        model_from_package(package)


def test_an_override_of_an_unknown_key_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"config.json: unknown key\(s\) model.nope"):
        load(str(export_tiny(tmp_path / "model", seed=4)), overrides=["model.nope=1"])


@pytest.mark.slow
def test_registered_logged_and_local_mlflow_models_load_the_exported_weights(tmp_path: Path) -> None:
    import mlflow

    from jobs.tracking import tracking_uri_for_now

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exported = export_tiny(tmp_path / "model", seed=6)
    registered = register_tiny(exported, "lma3d-load", "champion", uri, tmp_path / "work")
    expected = _predict(load(str(exported))[0])
    with tracking_uri_for_now(uri):  # MLflow finds a logged model id through the process's tracking URI
        local = mlflow.artifacts.download_artifacts(registered["model_uri"], dst_path=str(tmp_path / "d"))
    for spec, kind in [(registered["uri"], "registry"), (registered["model_uri"], "registry"), (local, "exported")]:
        model, _, origin = load(spec, uri)
        assert origin["kind"] == kind and origin["spec"] == spec
        np.testing.assert_array_equal(_predict(model), expected)
