"""A tampered exported model folder (config.json + model.safetensors) is refused with one line naming the file
and the field, exit 2, by `lma3d predict` and by the resolution `lma3d eval` and `lma3d export` use: both are
jobs.loading (load = resolve + build)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from capped import run_verb
from safetensors.torch import load_file, save_file
from tiny import tiny_model_config

from jobs.entry import UserError
from jobs.loading import resolve
from jobs.verbs.predict import main as predict_main
from model.lmaffordance3d import build_model
from model.pretrained import save_pretrained

FIXTURE = Path(__file__).parent / "fixtures" / "piad"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_pretrained(build_model(tiny_model_config(), pretrained=False), tmp_path / "model")


def _predict_refused(folder: Path, tmp_path: Path, capsys, *needles: str) -> None:
    image, points = FIXTURE / "Img_Test_Bag_lift_1.jpg", FIXTURE / "Point_Test_Bag_1.txt"
    argv = ["--model", str(folder), "--image", str(image), "--points", str(points), "--instruction", "lift it",
            "--out", str(tmp_path / "o")]  # fmt: skip
    code = predict_main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("lma3d predict: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "o").exists()


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_config_that_is_not_json_is_refused(folder, tmp_path, capsys) -> None:
    (folder / "config.json").write_text('{"format": "lma3d-pretrained-v1", "model": {')
    _predict_refused(folder, tmp_path, capsys, str(folder / "config.json"), "not valid JSON")


@pytest.mark.parametrize("value", [False, True])
def test_a_folder_saved_with_a_retired_speed_switch_still_loads(folder, value) -> None:
    """Folders exported before `model.compile_point_mlps` was removed hold it in config.json."""
    _edit_config(folder, lambda c: c["model"].update(compile_point_mlps=value))
    config = resolve(str(folder), None).config
    assert config == dataclasses.replace(tiny_model_config(), resnet_weights=config.resnet_weights)


def test_unknown_model_key_is_refused(folder, tmp_path, capsys) -> None:
    _edit_config(folder, lambda c: c["model"].update(hidden_trapdoor=1))
    _predict_refused(folder, tmp_path, capsys, str(folder / "config.json"), "model.hidden_trapdoor")


def test_model_value_of_the_wrong_type_is_refused(folder, tmp_path, capsys) -> None:
    _edit_config(folder, lambda c: c["model"].update(emb_dim="32; rm -rf /"))
    _predict_refused(folder, tmp_path, capsys, str(folder / "config.json"), "model.emb_dim must be int")


def test_tensor_of_another_shape_is_refused(folder, tmp_path, capsys) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    key = sorted(k for k, v in weights.items() if v.ndim == 2)[0]
    weights[key] = torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])
    save_file(weights, str(folder / "model.safetensors"))
    _predict_refused(folder, tmp_path, capsys, str(folder / "model.safetensors"), f"tensor {key} has shape")


def test_tensor_with_nan_is_refused(folder, tmp_path, capsys) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    key = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(folder / "model.safetensors"))
    _predict_refused(folder, tmp_path, capsys, str(folder / "model.safetensors"), f"tensor {key} holds NaN")


def test_weights_that_are_not_safetensors_are_refused(folder, tmp_path, capsys) -> None:
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    _predict_refused(folder, tmp_path, capsys, str(folder / "model.safetensors"), "not a readable safetensors")


def test_eval_and_export_resolution_refuses_a_tensor_of_another_shape(folder) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    key = sorted(k for k, v in weights.items() if v.ndim == 2)[0]
    weights[key] = torch.zeros(1, 1)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(UserError, match=f"model.safetensors: tensor {key} has shape \\[1, 1\\]"):
        resolve(str(folder), "sqlite:///unused.db")


def test_eval_and_export_resolution_refuses_an_unknown_model_key(folder) -> None:
    _edit_config(folder, lambda c: c["model"].update(hidden_trapdoor=1))
    with pytest.raises(UserError, match=r"config.json: unknown key\(s\) model.hidden_trapdoor"):
        resolve(str(folder), "sqlite:///unused.db")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"emb_dim": 33, "num_heads": 3}, "model.fp1_mlp"),
        ({"resnet_width": 7}, "resnet_width"),
        ({"sa1_mlps": [[], []]}, "config.json: "),
        ({"fp3_mlp": []}, "config.json: "),
        ({"emb_dim": 2**40, "num_heads": 1, "fp1_mlp": [2**40, 2**40]}, "overflow"),
        ({"fusion_hidden": 2**62}, "overflow"),
        ({"resnet_width": 2**40, "sa3_mlps": [[32, 2**42], [32, 2**42]]}, "overflow"),
    ],
)
def test_widths_that_do_not_fit_together_or_overflow_are_one_line_exit_2(
    folder, tmp_path, capsys, change, needle
) -> None:
    """Refused from the config (the model skeleton is built on the meta device: nothing allocated), exit 2; it was
    exit 1 (a ValueError, IndexError or RuntimeError of the modules)."""
    _edit_config(folder, lambda c: c["model"].update(change))
    _predict_refused(folder, tmp_path, capsys, str(folder / "config.json"), needle)
    with pytest.raises(UserError, match="config.json: "):
        resolve(str(folder), "sqlite:///unused.db")


def test_a_config_json_of_gigabytes_is_refused_unread(folder, tmp_path) -> None:
    os.truncate(folder / "config.json", 5 << 30)  # 5 GiB of holes after the real JSON
    run = run_verb("export", "--checkpoint", str(folder), "--out", str(tmp_path / "o"), f"workdir={tmp_path}")
    print(f"\n[bounded] peak {run.peak_mb:.0f} MB, {run.seconds:.1f} s: {run.lines[-1:]}")
    assert run.code == 2 and len(run.lines) == 1, (run.code, run.stderr[-2000:])
    assert str(folder / "config.json") in run.lines[0] and "bytes, over the" in run.lines[0]
    assert run.peak_mb < 1500
