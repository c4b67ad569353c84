"""A sweep's inputs are resolved on the driver before Ray starts: relative paths mean what they mean for
`lma3d train` (absolute against the folder the command was run from), and every value of the search space is
built into the full experiment config, the rules the model's modules enforce at construction included, so that a
value a trial would die of is one line naming key and value (exit 2) instead of an errored trial."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import pipeline.ray_session
from jobs.experiment_config import ExperimentConfig
from jobs.sweeping.space import apply_trial
from jobs.training.launcher import absolute_paths
from jobs.typed_yaml import build
from jobs.verbs.sweep import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory) -> Path:
    """Shards the demo config can train on (3 clouds per object: its data.pairs): the driver checks them."""
    from tiny import synth_shards

    return synth_shards(tmp_path_factory.mktemp("demo-data"))


class _TuneNotStarted(Exception):
    pass


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was started although the sweep's inputs are invalid")


@pytest.fixture
def stop_at_tune(monkeypatch):
    """The sweep driver runs up to Ray Tune's start (no Ray): by then it has written sweep.json, the state every
    trial is started from."""
    from ray import tune

    class Tuner:
        @staticmethod
        def can_restore(path: str) -> bool:
            return False

        def __init__(self, *args, **kwargs) -> None:
            pass

        def fit(self):
            raise _TuneNotStarted

    monkeypatch.setattr(tune, "Tuner", Tuner)
    monkeypatch.setattr(pipeline.ray_session, "ensure_ray", lambda *args, **kwargs: False)


def _space(folder: Path, text: str) -> Path:
    path = folder / "space.yaml"
    path.write_text(text)
    return path


def _trial_config(state_file: Path, values: dict) -> ExperimentConfig:
    """The config a trial trains with, as the trial builds it in Tune's own working folder."""
    state = json.loads(state_file.read_text())
    cfg = build(ExperimentConfig, apply_trial(state["base"], values), "<sweep trial>")
    return absolute_paths(cfg)


def test_relative_paths_mean_the_folder_the_sweep_was_run_from(tmp_path, monkeypatch, stop_at_tune, demo_shards):
    import torch
    from test_resnet_weights import torchvision_resnet18

    run_from = (tmp_path / "here").resolve()
    shutil.copytree(demo_shards, run_from / "shards" / "demo")
    (run_from / "weights").mkdir()
    torch.save(torchvision_resnet18(16), run_from / "weights" / "r18.pth")  # configs/demo.yaml: resnet_width 16
    monkeypatch.chdir(run_from)
    _space(run_from, "train.lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    main(["--config", str(DEMO), "--search", "space.yaml", "--trials", "1", "--max-concurrent", "1",
          "--name", "rel", "data.shards=shards/demo", "model.resnet_weights=weights/r18.pth"])  # fmt: skip
    state_file = run_from / "work" / "sweeps" / "rel" / "sweep.json"
    trial_folder = tmp_path / "tune-trial"  # Tune runs each trial in a folder of its own
    trial_folder.mkdir()
    monkeypatch.chdir(trial_folder)
    cfg = _trial_config(state_file, {"train.lr": 3e-4})
    assert cfg.data.shards == str(run_from / "shards" / "demo")
    assert cfg.workdir == str(run_from / "work")
    assert cfg.model.resnet_weights == str(run_from / "weights" / "r18.pth")
    assert cfg.storage_path.startswith(str(run_from / "work"))


def test_an_emb_dim_choice_over_the_demo_config_gives_every_trial_a_model_that_builds(
    tmp_path, monkeypatch, stop_at_tune, demo_shards
):
    from model.lmaffordance3d import build_model

    _space(tmp_path, "model.emb_dim: {choice: [64, 128]}\n")
    main(["--config", str(DEMO), "--search", str(tmp_path / "space.yaml"), "--trials", "2", "--max-concurrent",
          "1", "--name", "emb", f"workdir={tmp_path / 'work'}", "model.backbone=tiny",
          f"data.shards={demo_shards}"])  # fmt: skip
    for emb_dim in (64, 128):
        cfg = _trial_config(tmp_path / "work" / "sweeps" / "emb" / "sweep.json", {"model.emb_dim": emb_dim})
        assert cfg.model.emb_dim == emb_dim and cfg.model.fp1_mlp[-1] == emb_dim  # the gate's width follows
        build_model(cfg.model, device="meta", pretrained=False)  # the modules' own checks pass


def test_a_config_that_sets_a_width_emb_dim_fixes_is_refused_before_ray_naming_both_keys(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(pipeline.ray_session, "ensure_ray", _no_ray)
    _space(tmp_path, "model.emb_dim: {choice: [64, 128]}\n")
    rc = main(["--config", str(DEMO), "--search", str(tmp_path / "space.yaml"), "--trials", "2",
               f"workdir={tmp_path / 'work'}", "model.fp1_mlp=[128, 128]"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "model.emb_dim = 64" in err[0] and "model.fp1_mlp" in err[0]
    assert not (tmp_path / "work").exists()  # no sweep folder, no MLflow store


@pytest.mark.parametrize(
    ("space", "overrides", "named"),
    [
        # the ResNet's last stage and SA3 feed one shared fusion MLP (model/lmaffordance3d.py)
        ("model.resnet_width: {choice: [16, 32]}", [], ["model.resnet_width = 32", "model.sa3_mlps"]),
        # rules DeepSpeed's config and the engine applied inside a worker
        ("train.precision: {choice: [bf16, fp16]}", [], ["train.precision = 'fp16'", "train.use_gpu"]),
        ("train.zero_stage: {choice: [2, 0]}", ["train.offload_optimizer=true"],
         ["train.zero_stage = 0", "train.offload_optimizer"]),
        ("train.zero_stage: {choice: [2, 3]}", ["model.backbone_mode=lora"],
         ["train.zero_stage = 3", "model.backbone_mode"]),
    ],
)  # fmt: skip
def test_a_value_a_trial_would_die_of_is_one_line_before_ray(tmp_path, monkeypatch, capsys, space, overrides, named):
    monkeypatch.setattr(pipeline.ray_session, "ensure_ray", _no_ray)
    _space(tmp_path, space + "\n")
    rc = main(["--config", str(DEMO), "--search", str(tmp_path / "space.yaml"), "--trials", "2",
               f"workdir={tmp_path / 'work'}", *overrides])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert all(name in err[0] for name in named), err[0]


def test_missing_shards_are_one_line_before_ray(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline.ray_session, "ensure_ray", _no_ray)
    monkeypatch.chdir(tmp_path)
    rc = main(["--config", "demo", "--search", "demo", "--trials", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"lma3d sweep: error: data.shards {tmp_path.resolve()}/work/shards/demo: no such folder "
                               "(run lma3d shard first)"]  # fmt: skip


def test_the_shipped_config_and_space_by_name_from_any_folder(tmp_path, monkeypatch, stop_at_tune, demo_shards):
    shutil.copytree(demo_shards, tmp_path / "work" / "shards" / "demo")  # where configs/demo.yaml reads them
    monkeypatch.chdir(tmp_path)
    main(["--config", "demo", "--search", "demo", "--trials", "1", "--max-concurrent", "1", "--name", "names"])
    state = json.loads((tmp_path / "work" / "sweeps" / "names" / "sweep.json").read_text())
    assert set(state["space"]) == {"train.lr", "train.weight_decay"}  # configs/sweeps/demo.yaml
    assert state["base"]["data"]["shards"] == str(tmp_path.resolve() / "work" / "shards" / "demo")


def test_a_relative_tracking_store_means_the_folder_the_command_was_run_from(
    tmp_path, monkeypatch, stop_at_tune, demo_shards
):
    # sqlite:///db/mlflow.db (three slashes) and a bare folder (MLflow's file store) are relative paths too
    run_from = (tmp_path / "here").resolve()
    run_from.mkdir()
    monkeypatch.chdir(run_from)
    _space(run_from, "train.lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    main(["--config", str(DEMO), "--search", "space.yaml", "--trials", "1", "--max-concurrent", "1",
          "--name", "uri", "mlflow.tracking_uri=sqlite:///db/mlflow.db", f"data.shards={demo_shards}"])  # fmt: skip
    state = json.loads((run_from / "work" / "sweeps" / "uri" / "sweep.json").read_text())
    assert state["tracking_uri"] == f"sqlite:///{run_from}/db/mlflow.db"  # what every trial logs to
    cfg = build(ExperimentConfig, {"mlflow": {"tracking_uri": "mlruns"}}, "<train>")
    assert absolute_paths(cfg).tracking_uri == str(run_from / "mlruns")  # lma3d train's workers likewise
