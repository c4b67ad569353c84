"""Evaluation helpers only tests (and the eval benchmark) need: the in-process loop the Ray pool is compared
with, and reading predictions.npz back."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.evaluation.outputs import PredictionCollector, Predictions, as_list
from jobs.inference import predict_batch
from model.metrics import per_sample


def predict_loader(
    model: torch.nn.Module, batches: Iterable[dict[str, Any]], scratch: Path, votes: int = 1, seed: int = 0
) -> tuple[Predictions, int]:
    """In-process evaluation over eval_loader-style batches (the benchmark's plain loop): the same predict_batch
    and the same PredictionCollector as the pool (padding rows and repeated keys dropped and counted, loader
    order; the maps into `scratch`)."""
    collector = PredictionCollector(scratch)
    for batch in batches:
        keys = as_list(batch["key"])
        pred = predict_batch(model, batch["image"], batch["points"], as_list(batch["instruction"]), keys, votes, seed)
        gt = _numpy(batch["label"]).astype(np.float32).reshape(len(keys), -1)
        collector.add(batch | {"pred": pred, "label": gt, "valid": _numpy(batch.get("valid")), **per_sample(pred, gt)})
    return collector.finish(), collector.duplicates


def _numpy(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    return value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)


def read_predictions(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(keys, float16 predictions [M,N]) from predictions.npz, without unpickling."""
    with np.load(path, allow_pickle=False) as data:
        return [str(k) for k in data["keys"]], data["predictions"]
