"""The test shards as a Ray Data dataset (one read task per shard, members left as bytes) and the batch decode
the evaluation job's actors run: the same transforms as the eval loader (`decode_test_sample`).

Each read task reads its shard through the verifying reader (reading.read_shard: sha256 while streaming,
count, keys, values) and emits its samples only once the shard proved whole, so a corrupt test shard never
reaches a metric: with `on_corrupt_shard: fail` the task raises CorruptShard (the evaluation job turns it
into one line), with `skip` it emits nothing and logs the shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.loaders.eval import decode_test_sample
from pipeline.loaders.reading import ShardPolicy, read_manifest, shard_paths
from pipeline.shards.manifest import ShardEntry
from pipeline.storage import Folder


def _read_shard_rows(row: dict[str, Any], on_corrupt: str, num_points: int) -> list[dict[str, Any]]:
    """Ray Data flat_map: one manifest entry -> its verified samples as rows (member bytes)."""
    folder = Folder(row["folder"])  # resolved in the task: credentials come from the node's environment
    path = folder.local_path(row["name"]) if folder.is_local else folder.where(row["name"])
    entry = ShardEntry(
        name=str(row["name"]), path=path, split=str(row["split"]), samples=int(row["samples"]),
        bytes=int(row["bytes"]), sha256=str(row["sha256"]), folder=folder,
    )  # fmt: skip
    return [{k: v for k, v in s.items() if k != "__url__"} for s in ShardPolicy(on_corrupt, num_points).samples(entry)]


def read_test_shards(shards: str | Path, on_corrupt: str = "fail") -> Any:
    """Raw test samples in manifest order: columns `__key__`, `jpg`, `points.npy`, `label.npy`, `json` (bytes)."""
    import ray.data

    manifest = read_manifest(shards)
    entries = [e for e in shard_paths(shards, manifest, "test") if e.samples > 0]
    if not entries:
        raise ValueError(f"{shards}: no test samples in the manifest")
    rows = [
        {"name": e.name, "folder": e.folder.uri, "split": e.split, "samples": e.samples, "bytes": e.bytes,
         "sha256": e.sha256}
        for e in entries
    ]  # fmt: skip
    kwargs = {"on_corrupt": on_corrupt, "num_points": int(manifest["config"]["num_points"])}
    # A light read (tar bytes only): a quarter CPU, so the model actors never starve it of a slot.
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    return dataset.flat_map(_read_shard_rows, fn_kwargs=kwargs, num_cpus=0.25)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else bytes(value)


def decode_test_batch(batch: dict[str, np.ndarray], image_size: int) -> dict[str, np.ndarray]:
    """A Ray Data batch of raw samples -> image [B,3,S,S], points [B,3,N], label [B,N] float32, and the
    key, instruction, object and affordance of each sample."""
    samples = []
    for i, key in enumerate(batch["__key__"]):
        raw = {"__key__": str(key), "json": _bytes(batch["json"][i])}
        raw |= {ext: _bytes(batch[ext][i]) for ext in ("jpg", "points.npy", "label.npy") if ext in batch}
        samples.append(decode_test_sample(raw, image_size))
    out: dict[str, np.ndarray] = {
        "image": np.stack([s["image"] for s in samples]),
        "points": np.stack([s["points"][0] for s in samples]),
        "label": np.stack([s["label"][0] for s in samples]),
    }
    for field in ("key", "instruction", "object", "affordance"):
        out[field] = np.asarray([s[field] for s in samples])
    return out
