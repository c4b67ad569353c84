"""A parsed record as WebDataset sample members, and deterministic tar files of them.

Members of a sample: `<key>.jpg` (the original image bytes), `<key>.points.npy` (float32 [N,3] raw xyz),
`<key>.label.npy` (float32 [N], the GT column of the sample's affordance), `<key>.json` (object,
affordance, instruction, sources, shape id). Tar headers carry no wall clock, user or group, so the same
samples always give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from pipeline.record import Record

MEMBER_ORDER = ("jpg", "points.npy", "label.npy", "json")


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.getvalue()


def sample_members(record: Record) -> dict[str, bytes]:
    """The members of a shard sample (image samples and test triplets)."""
    members: dict[str, bytes] = {}
    if record.image is not None:
        members["jpg"] = record.image
    if record.xyz is not None:
        members["points.npy"] = npy_bytes(record.xyz.astype(np.float32))
        members["label.npy"] = npy_bytes(record.label_column().astype(np.float32))
    meta = {
        "object": record.object,
        "affordance": record.affordance,
        "instruction": record.instruction,
        "sources": list(record.sources),
        "shape": record.shape_id,
    }
    members["json"] = json.dumps(meta, sort_keys=True).encode()
    return members


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> tuple[int, str]:
    """Write samples (key, members) in the given order; returns (bytes, sha256). A repeated key is refused
    (readers take a tar with one as corrupt; the shard job drops duplicates before this)."""
    keys = [key for key, _ in samples]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: key {next(k for k in keys if keys.count(k) > 1)} would occur twice")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext in sorted(members, key=lambda e: MEMBER_ORDER.index(e) if e in MEMBER_ORDER else len(MEMBER_ORDER)):
                data = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return path.stat().st_size, digest
