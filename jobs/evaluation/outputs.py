"""What an evaluation writes: metrics.json, per_class.csv, predictions.npz, the original's prediction.txt and
prediction_keys.txt (its rows' keys); and how predictions reach them without the driver holding them.

The driver keeps an index of the test set (keys, class names, four scores per sample); the [M, N] maps go to two
float32 files of a scratch folder as batches arrive and are read back in blocks, so its memory does not grow
with the number of test samples (benchmarks/bench_data_scale.py measures it)."""

from __future__ import annotations

import csv
import json
import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.metrics import KEYS

FILES = ("metrics.json", "per_class.csv", "predictions.npz", "prediction.txt", "prediction_keys.txt")
BLOCK_ROWS = 256
"""Rows read back at a time (2 MiB of float32 at 2048 points)."""


@dataclass
class Predictions:
    """One row per test sample, in the test list's order (the shards' order)."""

    keys: list[str]
    objects: list[str]
    affordances: list[str]
    scores: dict[str, np.ndarray]
    """Per-sample auc, aiou, sim, mae [M] (model.metrics.per_sample; NaN where undefined)."""
    maps: dict[str, Path]
    """"pred" (probabilities) and "gt" (continuous GT): raw float32 [M, points] files."""
    points: int

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, which: str, rows: Sequence[int] | None = None) -> np.ndarray:
        """[len(rows), points] float32 of "pred" or "gt": the given rows, or all of them."""
        rows = range(len(self)) if rows is None else rows
        out = np.empty((len(rows), self.points), np.float32)
        row_bytes = self.points * 4
        with self.maps[which].open("rb") as f:
            for i, row in enumerate(rows):
                f.seek(int(row) * row_bytes)
                out[i] = np.frombuffer(f.read(row_bytes), np.float32)
        return out

    def blocks(self, which: str) -> Iterator[np.ndarray]:
        """"pred" or "gt" in order, BLOCK_ROWS rows at a time."""
        with self.maps[which].open("rb") as f:
            while chunk := f.read(BLOCK_ROWS * self.points * 4):
                yield np.frombuffer(chunk, np.float32).reshape(-1, self.points)


class PredictionCollector:
    """Batches of {key, pred, label, object, affordance, auc, aiou, sim, mae} (+ optional `valid` mask) -> one row
    per key in the order the batches bring them (the test list's order when they come in shard order); a key seen
    before (padding, or a key present twice in the test set) is dropped and counted."""

    def __init__(self, scratch: str | Path) -> None:
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.maps = {which: self.scratch / f"{which}.f32" for which in ("pred", "gt")}
        self._files = {which: path.open("wb") for which, path in self.maps.items()}
        self.keys: list[str] = []
        self.objects: list[str] = []
        self.affordances: list[str] = []
        self._scores: dict[str, list[np.ndarray]] = {key: [] for key in KEYS}
        self._seen: set[str] = set()
        self.points = 0
        self.duplicates = 0

    def add(self, batch: dict[str, Any]) -> None:
        keys = as_list(batch["key"])
        valid = np.ones(len(keys), bool) if batch.get("valid") is None else np.asarray(batch["valid"], bool)
        keep = []
        for i in np.flatnonzero(valid):
            if keys[i] in self._seen:
                self.duplicates += 1
                continue
            self._seen.add(keys[i])
            keep.append(i)
        if not keep:
            return
        pred = np.asarray(batch["pred"], np.float32).reshape(len(keys), -1)[keep]
        gt = np.asarray(batch["label"], np.float32).reshape(len(keys), -1)[keep]
        if self.points and pred.shape[1] != self.points:
            raise ValueError(f"a batch has {pred.shape[1]} points per sample, earlier ones {self.points}")
        self.points = pred.shape[1]
        self._files["pred"].write(np.ascontiguousarray(pred).tobytes())
        self._files["gt"].write(np.ascontiguousarray(gt).tobytes())
        objects, affordances = as_list(batch["object"]), as_list(batch["affordance"])
        self.keys += [keys[i] for i in keep]
        self.objects += [objects[i] for i in keep]
        self.affordances += [affordances[i] for i in keep]
        for key in KEYS:
            self._scores[key].append(np.asarray(batch[key], np.float64)[keep])

    def finish(self) -> Predictions:
        for f in self._files.values():
            f.close()
        if not self.keys:
            raise ValueError("no test samples were predicted")
        scores = {key: np.concatenate(parts) for key, parts in self._scores.items()}
        return Predictions(self.keys, self.objects, self.affordances, scores, self.maps, self.points)


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
    """Write the result files into out_dir; `info` (source, step, config…) goes into metrics.json."""
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
    _write_npz(paths["predictions.npz"], predictions)
    # The original's layout: one row per test sample in test order, 2048 values, "%.6f", space separated.
    with paths["prediction.txt"].open("w") as f:
        for block in predictions.blocks("pred"):
            np.savetxt(f, block, fmt="%.6f")
    paths["prediction_keys.txt"].write_text("".join(f"{key}\n" for key in predictions.keys))
    return paths


def _write_npz(path: Path, predictions: Predictions) -> None:
    """np.savez_compressed's layout (keys, float16 predictions, objects, affordances), the predictions written a
    block at a time into their member."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for name in ("keys", "objects", "affordances"):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(getattr(predictions, name), dtype=str))
        shape = (len(predictions), predictions.points)
        header = {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": shape}
        with archive.open("predictions.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            for block in predictions.blocks("pred"):
                member.write(block.astype(np.float16).tobytes())


def as_list(column: Any) -> list[str]:
    return [str(v) for v in (column.tolist() if hasattr(column, "tolist") else column)]
