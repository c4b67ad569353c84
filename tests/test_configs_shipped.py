"""The shipped experiment configs load, and the AGPIL ones carry the original recipe (docs/original.md §3.1)."""

from pathlib import Path

import pytest

from jobs.experiment_config import ExperimentConfig
from jobs.typed_yaml import load

ROOT = Path(__file__).resolve().parents[1] / "configs"
SPACES = sorted(ROOT.glob("sweeps/*.yaml"))
CONFIGS = [p for p in sorted(ROOT.glob("**/*.yaml")) if p not in SPACES]
AGPIL = [p for p in CONFIGS if p.parent.name == "agpil" and p.stem != "base"]  # base.yaml: the shared recipe


def test_every_benchmark_has_a_config():
    names = {p.stem for p in AGPIL}
    assert {f"{v}_{s}" for v in ("full", "partial", "rotation") for s in ("seen", "unseen")} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    load(ExperimentConfig, path)


@pytest.mark.parametrize("path", AGPIL, ids=lambda p: p.name)
def test_agpil_config_is_the_original_recipe(path):
    cfg = load(ExperimentConfig, path)
    view, setting = path.stem.split("_")[:2]
    assert (cfg.data.view, cfg.data.setting) == (view, setting)
    assert (cfg.train.lr, cfg.train.min_lr, cfg.train.warmup_lr, cfg.train.warmup_steps) == (1e-4, 1e-5, 1e-6, 2000)
    assert (cfg.train.weight_decay, cfg.train.betas, cfg.train.epochs) == (0.06, (0.9, 0.999), 20)
    assert (cfg.data.batch_size, cfg.data.pairs, cfg.model.max_txt_len) == (6, 3, 32)
    assert cfg.model.backbone == "llava-1.6-vicuna-7b" and cfg.model.backbone_mode == "frozen"
    assert cfg.model.num_points == 2048 and cfg.model.image_size == 224 and cfg.model.spatial_tokens == 113
    assert cfg.train.zero_stage in (2, 3)
    # the original: fp16 autocast with fp32 master weights, the LLM in fp16, ResNet18 from ImageNet weights
    assert cfg.train.precision == "fp16-autocast" and cfg.model.backbone_dtype == "fp16"
    assert cfg.model.resnet_weights == "ckpt/resnet18.pth"


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_search_space_fits_its_configs(path):
    from jobs.sweeping.space import check_space, read_space
    from jobs.typed_yaml import to_dict

    space = read_space(path)
    for config in AGPIL if path.stem == "agpil" else [ROOT / f"{path.stem}.yaml"]:
        check_space(space, to_dict(load(ExperimentConfig, config)), ExperimentConfig)
