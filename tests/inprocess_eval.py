"""Evaluation helpers only tests (and the eval benchmark) need: the in-process loop the Ray pool is compared
with, and reading predictions.npz back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.evaluation.outputs import as_list
from jobs.inference import predict_batch


@dataclass
class LoopPredictions:
    """One row per test sample in loader order, held in memory (the test sets here are small)."""

    keys: list[str]
    pred: np.ndarray
    gt: np.ndarray
    objects: list[str]
    affordances: list[str]


def predict_loader(
    model: torch.nn.Module, batches: Iterable[dict[str, Any]], votes: int = 1, seed: int = 0
) -> tuple[LoopPredictions, int]:
    """In-process evaluation over eval_loader-style batches (the benchmark's plain loop): the same
    predict_batch as the pool, padding rows (`valid` False) and repeated keys dropped (and counted), in loader
    order."""
    rows: dict[str, tuple] = {}
    duplicates = 0
    for batch in batches:
        keys = as_list(batch["key"])
        pred = predict_batch(model, batch["image"], batch["points"], as_list(batch["instruction"]), keys, votes, seed)
        gt = _numpy(batch["label"]).astype(np.float32).reshape(len(keys), -1)
        valid = _numpy(batch.get("valid"))
        objects, affordances = as_list(batch["object"]), as_list(batch["affordance"])
        for i in range(len(keys)) if valid is None else np.flatnonzero(valid):
            if keys[i] in rows:
                duplicates += 1
                continue
            rows[keys[i]] = (pred[i], gt[i], objects[i], affordances[i])
    ordered = list(rows)
    columns = list(zip(*rows.values()))
    return LoopPredictions(ordered, np.stack(columns[0]), np.stack(columns[1]), list(columns[2]),
                           list(columns[3])), duplicates  # fmt: skip


def _numpy(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    return value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)


def read_predictions(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(keys, float16 predictions [M,N]) from predictions.npz, without unpickling."""
    with np.load(path, allow_pickle=False) as data:
        return [str(k) for k in data["keys"]], data["predictions"]
