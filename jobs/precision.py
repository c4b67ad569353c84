"""`train.precision`: how training computes, and how evaluation and predict replay it (issue 16 §4).

- `fp32`: everything in float32.
- `bf16`, `fp16`: DeepSpeed casts the whole module (weights, BatchNorm included) to that dtype; its optimizer
  keeps fp32 master copies. `fp16` needs a GPU.
- `bf16-autocast`, `fp16-autocast`: parameters, BatchNorm and optimizer state stay float32; the forward runs
  under `torch.autocast` (DeepSpeed's `torch_autocast` section), so matmuls and convolutions compute in the low
  dtype. `fp16-autocast` is the original's recipe (torch.cuda.amp with a GradScaler).

A checkpoint records its precision (lma3d_meta.json `precision`); evaluation and predict compute under it, so
a model is scored the way it was validated during training (the sigmoid saturates to exactly 1.0 at different
probabilities in fp16, bf16 and fp32, which the aIOU threshold t = 1 sees).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "bf16-autocast", "fp16-autocast")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def cast_dtype(precision: str) -> torch.dtype | None:
    """The dtype the whole module is cast to (`bf16`, `fp16`), else None."""
    return _DTYPES.get(check(precision))


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast compute dtype (`*-autocast`), else None."""
    check(precision)
    return _DTYPES[precision.removesuffix("-autocast")] if precision.endswith("-autocast") else None


@contextlib.contextmanager
def computing_in(precision: str, device: torch.device | str) -> Iterator[None]:
    """The autocast context of an autocast precision on `device`; nothing for the others."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield


def for_inference(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model as training ran it: cast for `bf16`/`fp16`, float32 (autocast at call time) otherwise."""
    dtype = cast_dtype(precision)
    return model.to(dtype) if dtype is not None else model


def from_meta(meta: dict) -> str:
    """The training precision of a checkpoint meta (or an exported config.json): its `precision` field, else
    the recorded train config's, else fp32 (files written before precisions were recorded)."""
    precision = meta.get("precision") or ((meta.get("config") or {}).get("train") or {}).get("precision") or "fp32"
    return check(str(precision))
