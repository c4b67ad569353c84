"""Export: DeepSpeed checkpoints (real ones, ZeRO-0/1/2/3) -> consolidated fp32 weights -> model.safetensors +
config.json -> from_pretrained predicts exactly as the training engine did; untrusted pickles are refused;
the registered model resolves through its alias."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ds_one_process import run_script
from pickle_payload import TouchOnUnpickle
from safetensors.torch import load_file

from jobs.consolidate import UnsafeCheckpoint, consolidate
from jobs.verbs.export import main as export_main
from model.pointnet2 import all_layer_by_layer

pytestmark = pytest.mark.xdist_group("export")  # its module fixture is built once, in one test process

HERE = Path(__file__).parent
STEP_DIR = "checkpoint_step000000002"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds")
    done = run_script("ds_checkpoint.py", str(out), "0", "1", "2", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Bitwise comparisons need the reference's thread count (BLAS summation order), and the 2 shared cores are
    faster with one OpenMP thread per process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_consolidation_gives_the_engines_fp32_weights(checkpoints: Path, stage: int) -> None:
    weights = consolidate(checkpoints / f"zero{stage}" / STEP_DIR)
    reference = load_file(str(checkpoints / f"zero{stage}" / "reference.safetensors"))
    assert set(weights) == set(reference)
    for key, value in reference.items():
        assert weights[key].dtype == value.dtype and torch.equal(weights[key], value), key


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_export_then_from_pretrained_predicts_exactly_as_the_checkpoint(
    checkpoints: Path, stage: int, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from model.pretrained import from_pretrained

    out = tmp_path / "model"
    code = export_main(["--checkpoint", str(checkpoints / f"zero{stage}" / STEP_DIR), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["backbone_id"] == "tiny" and config["source"]["step"] == 2
    inputs = np.load(checkpoints / f"zero{stage}" / "inputs.npz")
    model = from_pretrained(out)
    if stage == 3:  # the ZeRO-3 engine ran the set abstraction layer by layer (jobs/training/engine.py)
        all_layer_by_layer(model)
    with torch.no_grad():
        pred = model(torch.tensor(inputs["image"]), torch.tensor(inputs["points"]), [str(t) for t in inputs["text"]])
    np.testing.assert_array_equal(pred.numpy(), np.load(checkpoints / f"zero{stage}" / "reference_pred.npy"))


def test_a_checkpoint_needing_arbitrary_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    tag = tmp_path / "ckpt" / "global_step1"
    tag.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest").write_text("global_step1")
    marker = tmp_path / "pwned"
    torch.save({"module": {"w": torch.zeros(1)}, "evil": TouchOnUnpickle(marker)}, tag / "mp_rank_00_model_states.pt")
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpoint, match="weights_only=True"):
        consolidate(tmp_path / "ckpt")
    assert not marker.exists()


def test_export_of_a_folder_that_is_no_checkpoint_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert export_main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither an lma3d checkpoint" in err[0] and str(tmp_path) in err[0]


@pytest.mark.slow
def test_registered_model_resolves_through_its_alias(
    checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import mlflow
    import pandas as pd

    from jobs.loading import resolve
    from jobs.serving.batch_predict import Item, predict_item
    from model.pretrained import from_pretrained

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the default workdir (work/) and its mlartifacts land here
    out = tmp_path / "model"
    args = ["--checkpoint", str(checkpoints / "zero1" / STEP_DIR), "--out", str(out)]
    assert export_main([*args, "--register", "lma3d-test", "--alias", "champion"]) == 0, capsys.readouterr().err
    assert "models:/lma3d-test@champion (version 1)" in capsys.readouterr().out

    source = resolve("models:/lma3d-test@champion", uri)
    exported = load_file(str(out / "model.safetensors"))
    assert source.provenance["kind"] == "registry" and set(source.weights) == set(exported)
    assert all(torch.equal(source.weights[k], exported[k]) for k in exported)

    fixture = HERE / "fixtures" / "piad"
    row = {"image": str(fixture / "Img_Test_Bag_lift_1.jpg"), "points": str(fixture / "Point_Test_Bag_1.txt")}
    row["instruction"] = "Lift the bag."
    served = mlflow.pyfunc.load_model("models:/lma3d-test@champion").predict(pd.DataFrame([row]))
    direct = predict_item(
        from_pretrained(out, fps_start="first"), Item("x", row["image"], row["points"], "Lift the bag.")
    )
    assert len(served) == 1 and served[0].shape == (2048,)
    np.testing.assert_array_equal(served[0], direct.values)


@pytest.mark.slow
def test_a_run_id_resolves_to_its_best_checkpoint_then_to_its_logged_weights(checkpoints: Path, tmp_path: Path) -> None:
    import yaml
    from mlflow.tracking import MlflowClient

    from jobs.loading import resolve

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("t", (tmp_path / "art").as_uri())).info.run_id
    client.set_tag(run_id, "checkpoint.best", str(checkpoints / "zero2" / STEP_DIR))
    source = resolve(run_id, uri)
    reference = load_file(str(checkpoints / "zero2" / "reference.safetensors"))
    assert tuple(source.provenance[k] for k in ("kind", "run_id", "step")) == ("run", run_id, 2)
    assert all(torch.equal(source.weights[k], reference[k]) for k in reference)

    # The checkpoint folder is not reachable from here: the weights and config the run logged are used.
    for tag in ("checkpoint.best", "checkpoint.latest"):
        client.set_tag(run_id, tag, str(tmp_path / "elsewhere"))
    meta = json.loads((checkpoints / "zero1" / STEP_DIR / "lma3d_meta.json").read_text())
    client.log_text(run_id, yaml.safe_dump(meta["config"]), "config/config.yaml")
    (tmp_path / "w").mkdir()
    shutil.copy(checkpoints / "zero1" / "reference.safetensors", tmp_path / "w" / "model.safetensors")
    client.log_artifact(run_id, str(tmp_path / "w" / "model.safetensors"), "weights/best")  # as training logs it
    source = resolve(f"runs:/{run_id}", uri)
    reference = load_file(str(checkpoints / "zero1" / "reference.safetensors"))
    assert source.provenance["kind"] == "run" and source.config.backbone == "tiny" and source.config.num_points == 256
    assert all(torch.equal(source.weights[k], reference[k]) for k in reference)


def test_registering_leaves_the_processes_tracking_uri_as_it_was(tmp_path, monkeypatch):
    import mlflow

    from jobs.tracking import tracking_uri_for_now

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    with tracking_uri_for_now(f"sqlite:///{tmp_path / 'registry.db'}"):
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("registry.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() == before
