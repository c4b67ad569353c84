"""A DeepSpeed checkpoint (any ZeRO stage, any world size) -> the fp32 trainable state dict, safely.

DeepSpeed's own converter (`deepspeed.utils.zero_to_fp32`) unpickles with `weights_only=False`, so a file
from an untrusted source could run code. Every file is therefore first loaded with `weights_only=True`,
allowing only tensors, containers and three plain DeepSpeed data classes; a file that needs anything else is
refused before the converter touches it. The converter then merges the ZeRO partitions into fp32 tensors
(the optimizer's fp32 master weights, not the possibly bf16 module copy).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from jobs.bounded import ReadRefused, read_text

log = logging.getLogger("lma3d.export")

MODEL_STATES = "mp_rank_00_model_states.pt"
TAG = re.compile(r"global_step\d+")
"""The only tags lma3d writes (`global_step<N>`): a tag names a folder inside its checkpoint, nothing else."""
LATEST_MAX_BYTES = 64


class BadCheckpoint(ValueError):
    """A checkpoint whose meta, `latest` or layout is not what lma3d writes, or that names a path outside itself."""


class UnsafeCheckpoint(BadCheckpoint):
    """A checkpoint file that would need arbitrary code to unpickle."""


def _safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, *, mmap: bool = True, extra_globals: Sequence[Any] = ()) -> Any:
    """torch.load with weights_only=True and the allowlist above (plus `extra_globals`, for the caller that
    knows it needs them). Memory-mapped by default: screening a file then reads only its pickle, not its
    tensors; `mmap=False` when the tensors must outlive the file (DeepSpeed's own loading, see
    jobs.training.checkpoint)."""
    with torch.serialization.safe_globals([*_safe_globals(), *extra_globals]):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ... for bad files
            raise UnsafeCheckpoint(
                f"{path}: refused, cannot be loaded with weights_only=True ({_first_line(e)})"
            ) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    useful = [line for line in text if "Unsupported global" in line or "WeightsUnpickler" in line]
    return (useful or text or [type(error).__name__])[0].strip()


def resolve_tag(checkpoint_dir: str | Path, tag: str | None = None) -> str:
    """`tag`, else what the checkpoint's `latest` file names; either must be global_step<N> (BadCheckpoint)."""
    folder = Path(checkpoint_dir)
    if tag is not None and tag != "":
        if not isinstance(tag, str) or not TAG.fullmatch(tag):
            raise BadCheckpoint(f"{folder}: tag {tag!r} is not global_step<N>")
        return tag
    latest = folder / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"{folder}: no tag given and no `latest` file (not a DeepSpeed checkpoint?)")
    try:
        named = read_text(latest, LATEST_MAX_BYTES, "a DeepSpeed `latest` file").strip()
    except ReadRefused as e:
        raise BadCheckpoint(str(e)) from None
    if not TAG.fullmatch(named):
        raise BadCheckpoint(f"{latest}: latest names {named!r}, not global_step<N>")
    return named


def tag_folder(checkpoint_dir: str | Path, tag: str) -> Path:
    """checkpoint_dir/tag, refused (BadCheckpoint) unless it and every file in it resolve, symlinks followed,
    inside the checkpoint folder: the weights of a checkpoint are its own."""
    folder = Path(checkpoint_dir)
    tag_dir = folder / resolve_tag(folder, tag)
    root = folder.resolve()
    for path in [tag_dir, *(sorted(tag_dir.iterdir()) if tag_dir.is_dir() else [])]:
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise BadCheckpoint(f"{path} resolves outside the checkpoint folder {folder} ({resolved})")
    return tag_dir


def zero_stage_of(tag_dir: Path) -> int:
    """The ZeRO stage recorded in the optimizer shards (0 when there are none, or they are not ZeRO's)."""
    optim = sorted(tag_dir.glob("*_optim_states.pt"))
    if not optim:
        return 0
    state = safe_load(optim[0]).get("optimizer_state_dict", {})
    stage = state.get("zero_stage", 0) if isinstance(state, dict) else 0
    return int(getattr(stage, "value", stage))


def consolidate(checkpoint_dir: str | Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """fp32 trainable state dict (frozen parameters excluded, buffers included) of a DeepSpeed checkpoint."""
    folder = Path(checkpoint_dir)
    tag = resolve_tag(folder, tag)
    tag_dir = tag_folder(folder, tag)
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"{folder}: no checkpoint folder {tag}/")
    files = sorted(tag_dir.glob("*.pt"))
    if not files:
        raise FileNotFoundError(f"{tag_dir}: no DeepSpeed *.pt files")
    for file in files:
        safe_load(file)  # raises UnsafeCheckpoint before anything unpickles it for real
    stage = zero_stage_of(tag_dir)
    if stage == 0:
        state = _stage0(tag_dir)
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(io.StringIO()) as chatter, contextlib.redirect_stderr(chatter):
            state = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag, exclude_frozen_parameters=True)
        for line in chatter.getvalue().splitlines():
            log.debug("zero_to_fp32: %s", line)
    log.info("%s: consolidated %d tensors from a ZeRO-%d checkpoint (tag %s)", folder, len(state), stage, tag)
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _stage0(tag_dir: Path) -> dict[str, torch.Tensor]:
    """ZeRO-0 keeps the whole module in one file (in the training dtype: fp32 unless bf16/fp16 was used)."""
    path = tag_dir / MODEL_STATES
    if not path.is_file():
        raise FileNotFoundError(f"{tag_dir}: no {MODEL_STATES}")
    module = safe_load(path).get("module")
    if not isinstance(module, dict):
        raise ValueError(f"{path}: no module state dict in it")
    return {k: v.detach().clone() for k, v in module.items()}
