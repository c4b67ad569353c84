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


def as_list(column: Any) -> list[str]:
    return [str(v) for v in (column.tolist() if hasattr(column, "tolist") else column)]


def merge(columns: list[dict[str, Any]]) -> tuple[Predictions, int]:
    """Batches of {key, pred, label, object, affordance} (+ optional `valid` mask) -> one row per key in the order
    the batches bring them (the test list's order when they come in shard order), and the number of duplicate rows
    dropped (padding, or a key present twice in the test set)."""
    rows: dict[str, tuple[np.ndarray, np.ndarray, str, str]] = {}
    duplicates = 0
    for batch in columns:
        keys = as_list(batch["key"])
        valid = np.ones(len(keys), bool) if batch.get("valid") is None else np.asarray(batch["valid"], bool)
        pred = np.asarray(batch["pred"], np.float32).reshape(len(keys), -1)
        label = np.asarray(batch["label"], np.float32).reshape(len(keys), -1)
        objects, affordances = as_list(batch["object"]), as_list(batch["affordance"])
        for i in np.flatnonzero(valid):
            if keys[i] in rows:
                duplicates += 1
                continue
            rows[keys[i]] = (pred[i], label[i], objects[i], affordances[i])
    ordered = list(rows)  # dicts keep insertion order: first arrival wins
    if not ordered:
        raise ValueError("no test samples were predicted")
    return (
        Predictions(
            keys=ordered,
            pred=np.stack([rows[k][0] for k in ordered]),
            gt=np.stack([rows[k][1] for k in ordered]),
            objects=[rows[k][2] for k in ordered],
            affordances=[rows[k][3] for k in ordered],
        ),
        duplicates,
    )
