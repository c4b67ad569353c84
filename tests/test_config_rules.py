"""The rules the model's modules enforce at construction are config rules: a config that breaks one is refused
when it is read (one line naming both keys, exit 2, in seconds), not by a worker building the model. Widths that
must equal `model.emb_dim` follow it unless the config sets them; stored configs load as before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_model_config

from jobs.typed_yaml import to_dict
from model.config import ModelConfig
from model.lmaffordance3d import build_model
from model.pretrained import config_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_the_gate_width_follows_emb_dim_unless_set():
    cfg = tiny_model_config(emb_dim=64, fp1_mlp=None)
    assert cfg.fp1_mlp == (64, 64)
    build_model(cfg, device="meta", pretrained=False)
    assert ModelConfig().fp1_mlp == (512, 512)  # the paper's, as before


@pytest.mark.parametrize(
    ("changes", "keys"),
    [
        (dict(emb_dim=64), ("model.fp1_mlp", "model.emb_dim")),  # tiny sets fp1_mlp (32, 32)
        (dict(resnet_width=16), ("model.sa3_mlps", "model.resnet_width")),  # SA3 and layer4 share the fusion MLP
    ],
)
def test_a_module_rule_is_refused_by_the_config_naming_both_keys(changes, keys):
    with pytest.raises(ValueError) as error:
        tiny_model_config(**changes)
    assert all(key in str(error.value) for key in keys) and "\n" not in str(error.value)


def test_stored_configs_load_as_before():
    stored = to_dict(tiny_model_config())
    assert stored["fp1_mlp"] == [32, 32]  # a concrete width is stored, never "follows"
    assert config_from_dict(stored) == tiny_model_config()
    unset = {k: v for k, v in stored.items() if k != "fp1_mlp"}  # a stored config that leaves it out
    assert config_from_dict(unset).fp1_mlp == (32, 32)


def test_a_broken_module_rule_is_one_line_from_the_cli_before_anything_starts(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "jobs.verbs.train", "--config", str(REPO / "configs" / "demo.yaml"),
         "model.emb_dim=64", "model.fp1_mlp=[128, 128]", f"workdir={tmp_path / 'work'}", "--print-config"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "model.fp1_mlp [128, 128]" in lines[0] and "model.emb_dim (64)" in lines[0]
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["train.precision=fp16"], ("train.precision fp16", "train.use_gpu")),  # DeepSpeed's config refused it
        (["train.offload_optimizer=true", "train.zero_stage=0"], ("train.offload_optimizer", "train.zero_stage")),
        (["model.backbone_mode=lora", "train.zero_stage=3"], ("model.backbone_mode lora", "train.zero_stage 3")),
    ],
)
def test_rules_a_worker_met_are_refused_when_the_config_is_read(overrides, keys):
    from jobs.experiment_config import ExperimentConfig
    from jobs.typed_yaml import ConfigError, load

    with pytest.raises(ConfigError) as error:
        load(ExperimentConfig, REPO / "configs" / "demo.yaml", overrides)
    assert all(key in str(error.value) for key in keys) and "\n" not in str(error.value)
