"""A standalone model folder: `model.safetensors` (trainable weights, fp32) + `config.json`.

Loading needs neither DeepSpeed nor Ray, and never unpickles: safetensors only. A folder is checked before
anything is built from it: config.json must be JSON with known model keys of the right types, and every tensor
of model.safetensors must be one the config's model has, of its shape, and finite. Anything else is a
BadModelFolder naming the file and the field.

`config_from_dict` is the one converter from a stored mapping to a ModelConfig (exported folders, checkpoint
metas, run configs, the eval actors' model package). `from_pretrained` is the pure-torch way to open a folder;
the project's verbs open every kind of model (checkpoints, runs, registered models too) through jobs.loading.load,
which reads folders with `read_pretrained` and builds with `instantiate`, the same two steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import torch

from model.config import ModelConfig
from model.lmaffordance3d import LMAffordance3D, build_model

FORMAT = "lma3d-pretrained-v1"


RETIRED_KEYS = {"compile_point_mlps": "removed in issue 20 (inductor was slower than the eager rewrites)"}
"""Keys that stored configs (folders, checkpoint metas) written by earlier versions may hold: speed switches that
never changed the weights or the computed function, dropped on load so those artifacts keep loading."""


class BadModelFolder(ValueError):
    """A model folder (or weights) that does not fit the model it claims to hold."""


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:  # a width that follows another unless set (model.fp1_mlp): stored as widths
        return value is None or isinstance(value, (list, tuple))
    if isinstance(default, bool) or isinstance(value, bool):
        return type(default) is type(value)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple))
    return type(default) is type(value)


def config_from_dict(values: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig from a stored mapping; unknown keys, wrong types and bad values are a BadModelFolder."""
    if not isinstance(values, dict):
        raise BadModelFolder(f"{where}: model must be a mapping, got {type(values).__name__}")
    values = {k: v for k, v in values.items() if k not in RETIRED_KEYS}
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                for f in dataclasses.fields(ModelConfig)}  # fmt: skip
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        names = ", ".join(f"model.{k}" for k in unknown)
        raise BadModelFolder(f"{where}: unknown key(s) {names}; valid keys: {', '.join(sorted(defaults))}")
    hints = get_type_hints(ModelConfig)
    for key, value in values.items():
        if get_origin(hints[key]) is Literal and value not in get_args(hints[key]):
            raise BadModelFolder(f"{where}: model.{key} must be one of {list(get_args(hints[key]))}, got {value!r}")
        if not _type_ok(defaults[key], value):
            raise BadModelFolder(
                f"{where}: model.{key} must be {type(defaults[key]).__name__} like {defaults[key]!r}, got {value!r}"
            )
    try:
        return ModelConfig(**{k: _tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as e:
        raise BadModelFolder(f"{where}: {e}") from None


CONFIG_MAX_BYTES = 1 << 20
"""config.json holds the model config and where the weights came from: a few KB."""


def read_json(path: Path) -> dict:
    """A folder's config.json, read with its size bounded first; a FIFO or a device in its place is refused unread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BadModelFolder(f"{path}: not a regular file")
            if info.st_size > CONFIG_MAX_BYTES:
                raise BadModelFolder(f"{path}: {info.st_size} bytes, over the {CONFIG_MAX_BYTES}-byte limit")
            with open(fd, "rb", closefd=False) as f:
                data = json.loads(f.read(CONFIG_MAX_BYTES + 1))
        finally:
            os.close(fd)
    except RecursionError:
        raise BadModelFolder(f"{path}: not valid JSON (nested too deep)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, BadModelFolder):
            raise
        raise BadModelFolder(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise BadModelFolder(f"{path}: top level must be a JSON object")
    return data


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BadModelFolder(f"{path}: not a readable safetensors file ({e})") from None


def skeleton(cfg: ModelConfig, where: str) -> LMAffordance3D:
    """The model of `cfg` on the meta device (shapes only, nothing allocated). Widths the modules refuse, or too
    large to describe (a size overflowing int64), are a BadModelFolder naming `where`, the config's file."""
    try:
        return build_model(cfg, device="meta", pretrained=False)
    except (ValueError, TypeError, IndexError, RuntimeError, OverflowError) as e:
        raise BadModelFolder(f"{where}: model widths do not fit together ({type(e).__name__}: {e})") from None


def check_weights(
    cfg: ModelConfig, weights: dict[str, torch.Tensor], where: str, config_where: str | None = None
) -> LMAffordance3D:
    """The model skeleton (meta device, nothing allocated) after checking `weights` fit it tensor by tensor;
    `config_where` names the config in errors of the config itself (default: `where`)."""
    model = skeleton(cfg, config_where or where)
    expected = model.trainable_state_dict()
    for key, tensor in expected.items():
        if key not in weights:
            raise BadModelFolder(f"{where}: tensor {key} is missing ({len(set(expected) - set(weights))} missing)")
        got = weights[key]
        if tuple(got.shape) != tuple(tensor.shape):
            raise BadModelFolder(
                f"{where}: tensor {key} has shape {list(got.shape)}, the model config needs {list(tensor.shape)}"
            )
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise BadModelFolder(f"{where}: tensor {key} holds NaN or infinite values")
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise BadModelFolder(f"{where}: tensor {unexpected[0]} is not one of the model's ({len(unexpected)} unknown)")
    return model


def save_pretrained(
    model: LMAffordance3D,
    out_dir: str | Path,
    weights: dict[str, torch.Tensor] | None = None,
    source: dict[str, Any] | None = None,
    precision: str | None = None,
) -> Path:
    """Write `weights` (default: the model's trainable state) as fp32 safetensors plus the config; `source`
    (where the weights came from, e.g. the checkpoint lma3d export read) and the training `precision` (what
    inference computes under) are recorded in config.json."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = weights if weights is not None else model.trainable_state_dict()
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": FORMAT})
    config = {"format": FORMAT, "backbone_id": model.backbone_id, "model": dataclasses.asdict(model.cfg)}
    if source is not None:
        config["source"] = source
    if precision is not None:
        config["precision"] = precision
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def read_pretrained(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """The checked config (stored model keys, then `overrides`), the weights that fit it, and config.json."""
    path = Path(path)
    config_path, weights_path = path / "config.json", path / "model.safetensors"
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{path}: not an exported lma3d model (no {needed.name})")
    config = read_json(config_path)
    if config.get("format") != FORMAT:
        raise BadModelFolder(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    stored = config.get("model")
    if not isinstance(stored, dict):
        raise BadModelFolder(f"{config_path}: model must be a mapping, got {type(stored).__name__}")
    # resnet_weights "none": the image encoder's trained weights are in model.safetensors, no ImageNet file
    cfg = config_from_dict({**stored, "resnet_weights": "none", **(overrides or {})}, str(config_path))
    weights = read_weights(weights_path)
    check_weights(cfg, weights, str(weights_path), str(config_path))
    return cfg, weights, config


def instantiate(
    cfg: ModelConfig, weights: dict[str, torch.Tensor], device: str | torch.device = "cpu"
) -> LMAffordance3D:
    """The model of `cfg` (backbone from its preset/path) with the trainable `weights` loaded (strict), in eval()."""
    model = build_model(cfg, device="cpu", pretrained=True)
    model.load_trainable_state_dict(weights, strict=True)
    return model.to(device).eval()


def from_pretrained(path: str | Path, device: str | torch.device = "cpu", **overrides) -> LMAffordance3D:
    """Rebuild the model from `config.json` (+ `overrides` of its model keys) and load the trainable weights."""
    cfg, weights, _ = read_pretrained(path, overrides)
    return instantiate(cfg, weights, device)
