"""The train point bank (points.arrow) memory-mapped: every loader worker maps the same file, so the clouds
live once in the page cache however many workers read them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.names import AFFORDANCE_INDEX


class PointBank:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no point bank (run lma3d shard on a dataset with train clouds)")
        reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
        meta = reader.schema.metadata or {}
        self.num_points = int(meta[b"num_points"])
        self.columns = int(meta[b"columns"])
        self._xyz, self._labels, objects = [], [], []
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            self._xyz.append(batch.column("xyz").values.to_numpy(zero_copy_only=True).reshape(-1, self.num_points, 3))
            labels = batch.column("labels").values.to_numpy(zero_copy_only=True)
            self._labels.append(labels.reshape(-1, self.num_points, self.columns))
            objects += batch.column("object").to_pylist()
        self._starts = np.cumsum([0] + [len(x) for x in self._xyz])
        self.ranges: dict[str, tuple[int, int]] = {}
        for index, obj in enumerate(objects):
            start, count = self.ranges.get(obj, (index, 0))
            self.ranges[obj] = (start, count + 1)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def cloud(self, index: int, affordance: str) -> tuple[np.ndarray, np.ndarray]:
        """(xyz [N,3] float32 view, the affordance's GT column [N] float32)."""
        batch = int(np.searchsorted(self._starts, index, side="right") - 1)
        row = index - self._starts[batch]
        return self._xyz[batch][row], self._labels[batch][row][:, AFFORDANCE_INDEX[affordance]].astype(np.float32)

    def draw(self, obj: str, k: int, rng: np.random.Generator) -> list[int]:
        """k clouds of `obj` without replacement (the original's random.sample over the object's range)."""
        if obj not in self.ranges:
            raise KeyError(f"{self.path}: no train point cloud of object {obj!r}")
        start, count = self.ranges[obj]
        if count < k:
            raise ValueError(f"{self.path}: {obj} has {count} clouds, {k} pairs need at least {k}")
        return [start + int(i) for i in rng.choice(count, size=k, replace=False)]
