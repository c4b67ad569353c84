"""Validation during training: the exact metrics (model.metrics.evaluate) on the test shards, every rank a slice.

Each rank runs its padded slice of the eval loader (the loader gives every rank the same number of
batches, so ZeRO-3's lockstep forwards hold), keeps the valid rows, and sends them to rank 0
(`gather_object`: only rank 0 needs the predictions, so the others never hold the whole test set).
Rank 0 dedupes by key, computes the metrics and broadcasts the numbers, so every rank reports the same
values to `ray.train.report`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from jobs.experiment_config import ExperimentConfig
from model.metrics import KEYS

log = logging.getLogger("lma3d.train.validate")


def _rows(batch: dict[str, Any], pred: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, str, str]]:
    """(key, pred, gt, object, affordance) of each valid (not padding) sample."""
    gt = batch["label"].float().cpu().numpy()[:, 0]
    valid = batch["valid"].cpu().numpy().astype(bool) if "valid" in batch else np.ones(len(pred), dtype=bool)
    return [
        (batch["key"][i], pred[i], gt[i], batch["object"][i], batch["affordance"][i]) for i in np.flatnonzero(valid)
    ]


def validate(engine: Any, cfg: ExperimentConfig, rank: int, world: int) -> tuple[dict[str, float], dict | None]:
    """(`val/auc`, `val/aiou`, `val/sim`, `val/mae`, `val/n` — identical on every rank;
    the per-object / per-affordance tables on rank 0, None elsewhere)."""
    from jobs.inference import predict_batch
    from model.metrics import evaluate
    from pipeline.loaders import eval_loader

    rows: list[tuple] = []
    for batch in eval_loader(cfg.data, cfg.model.image_size, rank, world):
        # The evaluation job's prediction path (eval mode, no autograd, seeded on a fork of the RNG) on this
        # rank's engine module; it restores the module's train mode, training continues with its own stream.
        instructions = list(batch["instruction"])
        pred = predict_batch(
            engine.module, batch["image"], batch["points"], instructions, precision=cfg.train.precision
        )
        rows.extend(_rows(batch, pred))

    gathered: list[list[tuple]] | None = [None] * world if rank == 0 else None
    if world > 1:
        torch.distributed.gather_object(rows, gathered, dst=0)
    else:
        gathered = [rows]
    result: list[dict[str, float] | None] = [None]
    tables = None
    if rank == 0:
        unique = {row[0]: row for part in gathered for row in part}  # padding repeats keys across ranks
        ordered = [unique[key] for key in sorted(unique)]
        metrics = evaluate(
            np.stack([r[1] for r in ordered]),
            np.stack([r[2] for r in ordered]),
            [r[3] for r in ordered],
            [r[4] for r in ordered],
        )
        tables = {"per_object": metrics["per_object"], "per_affordance": metrics["per_affordance"]}
        result[0] = {f"val/{k}": float(metrics[k]) for k in KEYS} | {"val/n": float(metrics["n"])}
        log.info("validation on %d pairs: %s", len(ordered), " ".join(f"{k}={v:.4f}" for k, v in result[0].items()))
    if world > 1:
        torch.distributed.broadcast_object_list(result, src=0)
    return result[0], tables
