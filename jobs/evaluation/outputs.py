"""What an evaluation writes: metrics.json, per_class.csv, predictions.npz, the original's prediction.txt and
prediction_keys.txt (its rows' keys)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.metrics import KEYS

FILES = ("metrics.json", "per_class.csv", "predictions.npz", "prediction.txt", "prediction_keys.txt")


@dataclass
class Predictions:
    """One row per test sample, in the test list's order (the shards' order)."""

    keys: list[str]
    pred: np.ndarray
    """[M,N] float32 probabilities."""
    gt: np.ndarray
    """[M,N] float32 continuous GT."""
    objects: list[str]
    affordances: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: undefined metrics (no positive GT point anywhere in a group) become null."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def per_class_rows(metrics: dict) -> list[dict[str, Any]]:
    rows = []
    for group, table in (("object", metrics.get("per_object", {})), ("affordance", metrics.get("per_affordance", {}))):
        for name in sorted(table):
            values = table[name]
            rows.append({"group": group, "name": name, **{k: values[k] for k in KEYS}, "n": values["n"]})
    return rows


def write_outputs(
    out_dir: str | Path, predictions: Predictions, metrics: dict, info: dict[str, Any]
) -> dict[str, Path]:
    """Write the four result files into out_dir; `info` (source, step, config…) goes into metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in FILES}
    document = {**finite_or_none(metrics), "info": info}
    paths["metrics.json"].write_text(json.dumps(document, indent=2) + "\n")
    with paths["per_class.csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["group", "name", *KEYS, "n"])
        writer.writeheader()
        for row in per_class_rows(metrics):
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    np.savez_compressed(
        paths["predictions.npz"],
        keys=np.asarray(predictions.keys, dtype=str),
        predictions=predictions.pred.astype(np.float16),
        objects=np.asarray(predictions.objects, dtype=str),
        affordances=np.asarray(predictions.affordances, dtype=str),
    )
    # The original's layout: one row per test sample in test order, 2048 values, "%.6f", space separated.
    np.savetxt(paths["prediction.txt"], predictions.pred, fmt="%.6f")
    paths["prediction_keys.txt"].write_text("".join(f"{key}\n" for key in predictions.keys))
    return paths
