"""train.precision (issue 16 §4): autocast keeps fp32 weights and BatchNorm through a real DeepSpeed step, the
fp16-autocast DeepSpeed JSON (the original's recipe) is right without a GPU, and evaluation / predict compute
under the precision a checkpoint or an export records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ds_one_process import run_script
from tiny import tiny_model_config

from jobs.inference import predict_batch
from jobs.loading import build_inference_model
from jobs.precision import from_meta
from jobs.training.deepspeed_config import deepspeed_config
from jobs.training.train_config import TrainConfig

pytestmark = pytest.mark.xdist_group("precision")  # its module fixture is built once, in one test process


@pytest.fixture(scope="module")
def steps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("precision")
    done = run_script("ds_precision.py", str(out), "2", "fp32", "bf16-autocast", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return {p: torch.load(out / f"{p}.pt", weights_only=True) for p in ("fp32", "bf16-autocast")}


@pytest.mark.slow
def test_bf16_autocast_keeps_parameters_and_batchnorm_fp32_through_a_deepspeed_step(steps: dict) -> None:
    run = steps["bf16-autocast"]
    assert set(run["param_dtypes"].values()) == {"torch.float32"}
    assert set(run["buffer_dtypes"].values()) == {"torch.float32"}  # BatchNorm running statistics
    assert run["input_dtype"] == "torch.float32"  # the loop leaves inputs to autocast
    assert run["probs_dtype"] == "torch.bfloat16"  # the forward did compute in bf16


@pytest.mark.slow
def test_bf16_autocast_outputs_are_within_1e_2_of_fp32(steps: dict) -> None:
    fp32, autocast = steps["fp32"], steps["bf16-autocast"]
    difference = float((autocast["probs"] - fp32["probs"]).abs().max())
    assert 0 < difference < 1e-2
    assert abs(autocast["loss"] - fp32["loss"]) < 1e-2 * fp32["loss"]


def test_fp16_autocast_deepspeed_json_is_the_originals_amp_without_a_gpu() -> None:
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    config = deepspeed_config(TrainConfig(precision="fp16-autocast", use_gpu=True, zero_stage=2), 6, 1)
    assert config["torch_autocast"] == {"enabled": True, "dtype": "torch.float16", "lower_precision_safe_modules": []}
    assert not config["fp16"]["enabled"] and not config["bf16"]["enabled"]  # no module cast: fp32 master weights
    parsed = DeepSpeedConfig(config)
    assert parsed.torch_autocast_enabled and parsed.torch_autocast_dtype == torch.float16
    assert parsed.torch_autocast_lower_precision_safe_modules == []  # gradients reduced in fp32, as DDP did
    assert not parsed.float16_config.enabled and not parsed.bfloat16_config.enabled


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_other_precisions_leave_torch_autocast_off(precision: str) -> None:
    assert deepspeed_config(TrainConfig(precision=precision, use_gpu=True), 1, 1)["torch_autocast"] == {
        "enabled": False
    }


def test_precision_is_read_from_the_meta_then_the_recorded_config_then_fp32() -> None:
    assert from_meta({"precision": "fp16-autocast", "config": {"train": {"precision": "bf16"}}}) == "fp16-autocast"
    assert from_meta({"config": {"train": {"precision": "bf16"}}}) == "bf16"
    assert from_meta({}) == "fp32"
    with pytest.raises(ValueError, match="fp8"):
        from_meta({"precision": "fp8"})


def _inputs() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    points = rng.standard_normal((2, 3, 256)).astype(np.float32)
    return image, points, ["grasp the mug", "open the door please"]


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    from model.lmaffordance3d import build_model

    torch.manual_seed(3)
    return build_model(tiny_model_config(), pretrained=False).trainable_state_dict()


def test_inference_under_bf16_autocast_keeps_fp32_weights_and_stays_within_1e_2(weights: dict) -> None:
    cfg = tiny_model_config()
    fp32 = build_inference_model(cfg, weights)
    autocast = build_inference_model(cfg, weights, precision="bf16-autocast")
    assert {p.dtype for p in autocast.parameters()} == {torch.float32}
    expected, got = predict_batch(fp32, *_inputs()), predict_batch(autocast, *_inputs())
    assert 0 < np.abs(got - expected).max() < 1e-2


def test_inference_under_a_cast_precision_casts_the_model(weights: dict) -> None:
    model = build_inference_model(tiny_model_config(), weights, precision="bf16")
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
    assert predict_batch(model, *_inputs()).dtype == np.float32


def test_eval_actors_rebuild_the_model_in_the_packaged_precision(weights: dict) -> None:
    from jobs.loading import model_from_package, model_package

    model = model_from_package(model_package(tiny_model_config(), weights, "bf16-autocast"))
    assert model.inference_precision == "bf16-autocast"
    assert model_from_package(model_package(tiny_model_config(), weights)).inference_precision == "fp32"


def test_an_export_loads_in_its_recorded_precision(weights: dict, tmp_path: Path) -> None:
    from jobs.loading import load
    from model.lmaffordance3d import build_model
    from model.pretrained import save_pretrained

    folder = save_pretrained(
        build_model(tiny_model_config(), pretrained=False), tmp_path / "export", weights, precision="bf16"
    )
    assert json.loads((folder / "config.json").read_text())["precision"] == "bf16"
    model = load(str(folder)).model
    assert model.inference_precision == "bf16"
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
