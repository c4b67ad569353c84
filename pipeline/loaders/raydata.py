"""The test shards as a Ray Data dataset (`ray.data.read_webdataset`, members left as bytes) and the batch
decode the evaluation job's actors run: the same transforms as the eval loader (`decode_test_sample`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.loaders.eval import decode_test_sample
from pipeline.loaders.reading import read_manifest, shard_paths


def read_test_shards(shards: str | Path) -> Any:
    """Raw test samples in manifest order: columns `__key__`, `jpg`, `points.npy`, `label.npy`, `json` (bytes)."""
    import ray.data

    manifest = read_manifest(shards)
    paths = [str(p) for p, n in shard_paths(shards, manifest, "test") if n > 0]
    if not paths:
        raise ValueError(f"{shards}: no test samples in the manifest")
    # A light read (tar bytes only): a quarter CPU, so the model actors never starve it of a slot.
    return ray.data.read_webdataset(paths, decoder=None, override_num_blocks=len(paths), num_cpus=0.25)


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
