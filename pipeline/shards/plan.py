"""The shard job's work plan: raw items -> parts (one shard tar, or one chunk of the point bank) -> Ray tasks.

What each shard holds is fixed here, before any parsing and independently of the cluster: the samples of a split,
in list order, cut every `samples_per_shard` items; the train point clouds, in list order, cut every `BANK_CHUNK`
clouds (the record batches of points.arrow). Tasks only decide who does the work: contiguous runs of parts of
about equal estimated cost, so a task parses a batch of records and writes its tars itself, and the per-task
cost of Ray (scheduling, a Ray Data block, a result row) is paid a few times per CPU, not once per shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.formats import RawItem

BANK_CHUNK = 64
"""Clouds per point-bank part (and per record batch of points.arrow)."""
TASKS_PER_CPU = 4
"""Tasks the job is cut into per cluster CPU: several, so the heaviest start first and the last ones are short."""
POINT_FILE_COST = 6
"""Estimated parse cost of an item with a point cloud (a text file of N rows) relative to an image-only item
(measured on the synthetic AGPIL data: 4.7 ms a cloud, 5.4 ms a test triplet, 0.8 ms an image record)."""


@dataclass(frozen=True)
class Part:
    """One output of the job: a shard tar (`kind` "shard", `index` its number in its split) or a chunk of the
    point bank (`kind` "bank", `index` its position in points.arrow)."""

    kind: str
    split: str
    index: int
    rows: tuple[dict[str, Any], ...]

    @property
    def cost(self) -> int:
        return sum(1 if row["kind"] == "image" else POINT_FILE_COST for row in self.rows)

    def to_row(self) -> dict[str, Any]:
        return {"kind": self.kind, "split": self.split, "index": self.index, "rows": list(self.rows)}


def plan_parts(items: list[RawItem], samples_per_shard: int) -> list[Part]:
    """Every shard of every split (splits in list order, then shard number), then every point-bank chunk."""
    parts = []
    for split in dict.fromkeys(item.split for item in items):
        rows = [item.to_row() for item in items if item.split == split and item.kind != "points"]
        for index, start in enumerate(range(0, len(rows), samples_per_shard)):
            parts.append(Part("shard", split, index, tuple(rows[start : start + samples_per_shard])))
    clouds = [item for item in items if item.kind == "points"]
    for index, start in enumerate(range(0, len(clouds), BANK_CHUNK)):
        chunk = clouds[start : start + BANK_CHUNK]
        parts.append(Part("bank", chunk[0].split, index, tuple(item.to_row() for item in chunk)))
    return parts


def group_parts(parts: list[Part], tasks: int) -> list[list[Part]]:
    """At most `tasks` contiguous runs of parts of about equal estimated cost (a part is never split), heaviest
    run first, so no worker is left with a long run at the end. A part joins run k when the middle of its cost
    falls in the k-th `tasks`-th of the total: every run is within half a part of the mean. (Cut greedily, "a new
    run where this part would pass the mean", the runs fell short and numbered `tasks` + 1: 9 on 2 CPUs, the
    last one run alone.) With at least as many tasks as parts: one run per part."""
    tasks = max(1, tasks)
    if len(parts) <= tasks:
        runs = [[part] for part in parts]
    else:
        target = sum(p.cost for p in parts) / tasks
        runs = [[] for _ in range(tasks)]
        done = 0
        for part in parts:
            runs[min(tasks - 1, int((done + part.cost / 2) / target))].append(part)
            done += part.cost
    return sorted((run for run in runs if run), key=lambda run: -sum(p.cost for p in run))  # stable sort
