"""A standalone model folder: `model.safetensors` (trainable weights, fp32) + `config.json`.

Loading needs neither DeepSpeed nor Ray, and never unpickles: safetensors only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from model.config import ModelConfig
from model.lmaffordance3d import LMAffordance3D, build_model

FORMAT = "lma3d-pretrained-v1"


def config_from_dict(values: dict) -> ModelConfig:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"config.json: unknown model keys {unknown}")
    tuples = {k: _tuple(v) for k, v in values.items() if isinstance(v, list)}
    return ModelConfig(**{**values, **tuples})


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value


def save_pretrained(model: LMAffordance3D, out_dir: str | Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `weights` (default: the model's trainable state) as fp32 safetensors plus the config."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = weights if weights is not None else model.trainable_state_dict()
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": FORMAT})
    config = {"format": FORMAT, "backbone_id": model.backbone_id, "model": dataclasses.asdict(model.cfg)}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def from_pretrained(path: str | Path, device: str | torch.device = "cpu", **overrides) -> LMAffordance3D:
    """Rebuild the model from `config.json` (backbone from its preset/path) and load the trainable weights."""
    from safetensors.torch import load_file

    path = Path(path)
    config_path, weights_path = path / "config.json", path / "model.safetensors"
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{path}: not an exported lma3d model (no {needed.name})")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    # resnet_weights "none": the image encoder's trained weights are in model.safetensors, no ImageNet file needed
    cfg = dataclasses.replace(config_from_dict(config["model"]), **{"resnet_weights": "none", **overrides})
    model = build_model(cfg, device="cpu", pretrained=True)
    model.load_trainable_state_dict(load_file(str(weights_path)))
    return model.to(device).eval()
