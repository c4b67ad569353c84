"""A parsed record as WebDataset sample members, and deterministic tar files of them.

Members of a sample: `<key>.jpg` (the original image bytes), `<key>.points.npy` (float32 [N,3] raw xyz),
`<key>.label.npy` (float32 [N], the GT column of the sample's affordance), `<key>.json` (object,
affordance, instruction, sources, shape id). The tars are written by the `webdataset` library's own TarWriter
(members of a sample in its order: by extension name), with no wall clock, user or group in the headers, so the
same samples always give the same bytes, and `webdataset.WebDataset` reads them as they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from pipeline.record import Record


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


def tar_bytes(samples: list[tuple[str, dict[str, bytes]]], where: str = "shard") -> bytes:
    """The tar of samples (key, members) in the given order. A repeated key is refused (readers take a tar with
    one as corrupt; the shard job drops duplicates before this)."""
    keys = [key for key, _ in samples]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{where}: key {next(k for k in keys if keys.count(k) > 1)} would occur twice")
    import webdataset as wds

    out = io.BytesIO()
    # encoder=False: members are bytes already (the image as it was read, .npy written above).
    writer = wds.TarWriter(out, user="", group="", mode=0o644, mtime=0, encoder=False, format=tarfile.USTAR_FORMAT)
    for key, members in samples:
        writer.write({"__key__": key, **members})
    writer.close()  # closes the tar stream only: webdataset leaves a file object it was given open
    return out.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> tuple[int, str]:
    """Write the tar of samples to a local file; returns (bytes, sha256)."""
    data = tar_bytes(samples, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()
