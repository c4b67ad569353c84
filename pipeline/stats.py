"""Statistics of a raw dataset (read through pipeline.formats) or of a shard folder's manifest.

`dataset_stats` returns a JSON-ready dict: records per split and kind, per object and affordance,
rejections per reason code (with the first few), point checks (point counts, coordinate ranges,
fraction of points with label >= 0.5 per affordance) and image checks (sizes, modes, formats).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.formats import detect_format, list_items, parse_item
from pipeline.names import AFFORDANCES
from pipeline.progress import progress
from pipeline.record import Record, Rejection

POSITIVE = 0.5  # the evaluation's binarisation threshold (docs/original.md §4)


class _Accumulator:
    def __init__(self, max_examples: int):
        self.max_examples = max_examples
        self.records: dict[str, Counter] = defaultdict(Counter)  # split -> kind -> n
        self.objects: dict[str, Counter] = defaultdict(Counter)  # object -> kind -> n
        self.affordances: dict[str, Counter] = defaultdict(Counter)  # affordance -> kind -> n
        self.rejections: Counter = Counter()
        self.rejection_examples: list[dict[str, Any]] = []
        self.seen_keys: set[str] = set()
        self.duplicates: list[str] = []
        self.point_counts: Counter = Counter()
        self.xyz_min = np.full(3, np.inf)
        self.xyz_max = np.full(3, -np.inf)
        self.cloud_fractions: dict[str, list[float]] = defaultdict(list)  # affordance -> per cloud
        self.gt_fractions: dict[str, list[float]] = defaultdict(list)  # affordance -> per triplet
        self.sizes: Counter = Counter()
        self.modes: Counter = Counter()
        self.formats: Counter = Counter()

    def add(self, result: Record | Rejection) -> None:
        if result.key in self.seen_keys:
            self.duplicates.append(result.key)
        self.seen_keys.add(result.key)
        if isinstance(result, Rejection):
            self.rejections[result.reason.split(":", 1)[0]] += 1
            if len(self.rejection_examples) < self.max_examples:
                self.rejection_examples.append(result.to_json())
            return
        self.records[result.split][result.kind] += 1
        self.objects[result.object][result.kind] += 1
        if result.affordance is not None:
            self.affordances[result.affordance][result.kind] += 1
        if result.xyz is not None:
            self._add_points(result)
        info = result.extra.get("image")
        if info:
            self.sizes[f"{info['width']}x{info['height']}"] += 1
            self.modes[info["mode"]] += 1
            self.formats[str(info["format"])] += 1

    def _add_points(self, record: Record) -> None:
        self.point_counts[len(record.xyz)] += 1
        self.xyz_min = np.minimum(self.xyz_min, record.xyz.min(axis=0))
        self.xyz_max = np.maximum(self.xyz_max, record.xyz.max(axis=0))
        if record.kind == "triplet":
            self.gt_fractions[record.affordance].append(float(np.mean(record.label_column() >= POSITIVE)))
        elif record.labels is not None and record.labels.ndim == 2:
            # a bank cloud: only the affordances it supports (a Bag's "sit" column is all zero)
            for column, affordance in enumerate(AFFORDANCES[: record.labels.shape[1]]):
                if record.labels[:, column].any():
                    self.cloud_fractions[affordance].append(float(np.mean(record.labels[:, column] >= POSITIVE)))

    def result(self) -> dict[str, Any]:
        clouds = sum(self.point_counts.values())
        return {
            "records": {split: dict(kinds) for split, kinds in sorted(self.records.items())},
            "total_records": sum(sum(k.values()) for k in self.records.values()),
            "objects": {obj: dict(kinds) for obj, kinds in sorted(self.objects.items())},
            "affordances": {aff: dict(kinds) for aff, kinds in sorted(self.affordances.items())},
            "rejections": dict(self.rejections.most_common()),
            "total_rejections": sum(self.rejections.values()),
            "rejection_examples": self.rejection_examples,
            "duplicate_keys": len(self.duplicates),
            "duplicate_key_examples": self.duplicates[: self.max_examples],
            "points": {
                "clouds": clouds,
                "point_counts": {str(n): c for n, c in sorted(self.point_counts.items())},
                "xyz_min": self.xyz_min.tolist() if clouds else None,
                "xyz_max": self.xyz_max.tolist() if clouds else None,
                "bank_positive_fraction": _summaries(self.cloud_fractions),
                "triplet_positive_fraction": _summaries(self.gt_fractions),
            },
            "images": {
                "images": sum(self.sizes.values()),
                "sizes": dict(self.sizes.most_common()),
                "modes": dict(self.modes.most_common()),
                "formats": dict(self.formats.most_common()),
            },
        }


def _summaries(fractions: dict[str, list[float]]) -> dict[str, dict[str, float | int]]:
    """Per affordance: how many clouds, the mean fraction of points >= 0.5, and how many have none."""
    return {
        aff: {"n": len(values), "mean": float(np.mean(values)), "empty": int(sum(v == 0 for v in values))}
        for aff, values in sorted(fractions.items())
    }


def dataset_stats(root: str | Path, fmt: str = "auto", num_points: int = 2048, max_examples: int = 5) -> dict[str, Any]:
    """Read every record of a raw root once and summarise it (rejections are counted, not raised)."""
    fmt = detect_format(root) if fmt == "auto" else fmt
    items = list_items(root, fmt)
    acc = _Accumulator(max_examples)
    for item in progress(items, total=len(items), desc=f"inspect {fmt}", every=max(100, len(items) // 10)):
        acc.add(parse_item(root, item, num_points))
    return {"root": str(root), "format": fmt, "num_points": num_points, "items": len(items), **acc.result()}


def manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """A shard manifest read generically: its "counts", shard totals per split, and its scalar fields."""
    summary: dict[str, Any] = {k: v for k, v in manifest.items() if isinstance(v, str | int | float | bool)}
    summary["counts"] = manifest.get("counts", manifest.get("splits", {}))
    shards = manifest.get("shards")
    totals: dict[str, dict[str, int]] = {}
    if isinstance(shards, dict):
        for split, entries in shards.items():
            totals[str(split)] = _shard_total(entries if isinstance(entries, list) else [entries])
    elif isinstance(shards, list):
        by_split: dict[str, list] = defaultdict(list)
        for entry in shards:
            by_split[str(entry.get("split", "all")) if isinstance(entry, dict) else "all"].append(entry)
        totals = {split: _shard_total(entries) for split, entries in by_split.items()}
    summary["shard_totals"] = totals
    return summary


def _shard_total(entries: list[Any]) -> dict[str, int]:
    total: dict[str, int] = {"shards": len(entries)}
    for entry in entries:
        if isinstance(entry, dict):
            for name, value in entry.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    total[name] = total.get(name, 0) + value
    return total
