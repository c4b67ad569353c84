"""The train point bank (points.arrow) memory-mapped: every loader worker maps the same file, so the clouds
live once in the page cache however many workers read them.

Verified once per process at open (before the loader forks its workers, which inherit the result): the file
is hashed in one read (that read also fills the page cache the map then uses) against the manifest's
sha256, and its values are checked as at write (coordinates finite, labels in [0, 1], the manifest's point
count, cloud count and object ranges). A verification is remembered by (path, inode, size, mtime), so the
next epoch's loader does not hash the same unchanged file again.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.loaders.bank_cache import fetch_bank
from pipeline.loaders.reading import CorruptShard
from pipeline.names import AFFORDANCE_INDEX
from pipeline.shards.manifest import file_sha256
from pipeline.storage import Folder

_VERIFIED: set[tuple] = set()


class PointBank:
    def __init__(self, path: str | Path, expected: dict | None = None, num_points: int | None = None,
                 hashed: bool = False) -> None:
        """`expected` is the manifest's point_bank entry: with it the file is verified (CorruptShard on a
        mismatch); without it (tools reading their own fresh output) it is trusted. `hashed`: its bytes were
        already checked against `expected` (the bank cache hashes as it fetches), so only its values are."""
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no point bank (run lma3d shard on a dataset with train clouds)")
        stat = os.stat(self.path)
        identity = (str(self.path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        verify = expected is not None and (identity, expected["sha256"]) not in _VERIFIED
        if verify:
            if stat.st_size != expected["bytes"]:
                raise CorruptShard(self.path.name, f"{stat.st_size} bytes, the manifest says {expected['bytes']}")
            if not hashed and file_sha256(self.path) != expected["sha256"]:
                raise CorruptShard(self.path.name, "sha256 differs from the manifest")
        try:
            self._map(num_points)
        except (pa.ArrowException, KeyError, ValueError) as error:
            raise CorruptShard(self.path.name, f"unreadable point bank: {error}") from None
        if verify:
            self._check_values(expected)
            _VERIFIED.add((identity, expected["sha256"]))

    def _map(self, num_points: int | None) -> None:
        reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
        meta = reader.schema.metadata or {}
        self.num_points = int(meta[b"num_points"])
        self.columns = int(meta[b"columns"])
        if num_points is not None and self.num_points != num_points:
            raise ValueError(f"{self.num_points} points per cloud, the manifest says {num_points}")
        self._xyz, self._labels, self._objects = [], [], []
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            self._xyz.append(batch.column("xyz").values.to_numpy(zero_copy_only=True).reshape(-1, self.num_points, 3))
            labels = batch.column("labels").values.to_numpy(zero_copy_only=True)
            self._labels.append(labels.reshape(-1, self.num_points, self.columns))
            self._objects += batch.column("object").to_pylist()
        self._starts = np.cumsum([0] + [len(x) for x in self._xyz])
        self.ranges: dict[str, tuple[int, int]] = {}
        for index, obj in enumerate(self._objects):
            start, count = self.ranges.get(obj, (index, 0))
            self.ranges[obj] = (start, count + 1)

    def _check_values(self, expected: dict) -> None:
        if len(self) != expected["clouds"]:
            raise CorruptShard(self.path.name, f"{len(self)} clouds, the manifest says {expected['clouds']}")
        ranges = {obj: tuple(span) for obj, span in expected["objects"].items()}
        if self.ranges != ranges:
            raise CorruptShard(self.path.name, "object ranges differ from the manifest")
        for xyz, labels, start in zip(self._xyz, self._labels, self._starts):
            if not np.isfinite(xyz).all():
                row = int(np.flatnonzero(~np.isfinite(xyz).reshape(len(xyz), -1).all(1))[0])
                raise CorruptShard(self.path.name, f"cloud {start + row}: non-finite coordinates")
            ok = (labels >= 0) & (labels <= 1)
            if not ok.all():
                row = int(np.flatnonzero(~ok.reshape(len(labels), -1).all(1))[0])
                raise CorruptShard(self.path.name, f"cloud {start + row}: labels outside [0, 1]")

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


def open_bank(shards: str | Path, manifest: dict) -> PointBank:
    """The folder's point bank, verified against its manifest entry; on object storage, from the node's bank
    cache (fetched once, pipeline/loaders/bank_cache.py)."""
    bank = manifest.get("point_bank")
    if bank is None:
        raise FileNotFoundError(f"{shards}: the manifest lists no point bank (a dataset without train clouds)")
    folder = Folder(shards)
    num_points = int(manifest["config"]["num_points"])
    if folder.is_local:
        return PointBank(folder.local_path(bank["file"]), bank, num_points)
    return PointBank(fetch_bank(folder, bank["file"], bank), bank, num_points, hashed=True)
