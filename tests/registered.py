"""Tiny exported models and their registration in a local MLflow registry (sqlite), for the tests that serve or
load a registered model."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny import tiny_model_config

HERE = Path(__file__).parent
PIAD = HERE / "fixtures" / "piad"
IMAGE, POINTS = PIAD / "Img_Test_Bag_lift_1.jpg", PIAD / "Point_Test_Bag_1.txt"
INSTRUCTION = "Lift the bag by its handles."


def export_tiny(out: Path, seed: int) -> Path:
    """An exported folder (config.json + model.safetensors) of the tiny model with weights drawn from `seed`."""
    from model.lmaffordance3d import build_model
    from model.pretrained import save_pretrained

    torch.manual_seed(seed)
    save_pretrained(build_model(tiny_model_config(), pretrained=False), out)
    return out


def register_tiny(exported: Path, name: str, alias: str | None, tracking_uri: str, workdir: Path) -> dict:
    """`lma3d export --checkpoint EXPORTED --register NAME --alias ALIAS`, through the same code path."""
    from jobs.experiment_config import ExperimentConfig
    from jobs.serving.export_folder import export

    cfg = ExperimentConfig(workdir=str(workdir))
    cfg.mlflow.tracking_uri = tracking_uri
    out = workdir / "exports" / f"{exported.name}-{name}"
    return export(cfg, str(exported), out, register_name=name, alias=alias).registered
