"""points.arrow: the train point clouds, once, in an Arrow IPC file that every loader worker memory-maps.

Rows are grouped by object in the order the raw list gives them (the original pairs by contiguous object
ranges). Columns: key, object, xyz (float32 N*3), labels (float16 N*17). Written as a stream of batches, so
the job never holds the whole bank; the per-object [start, count] ranges go to the manifest (and a reader can
recompute them from the `object` column).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

BANK_FILE = "points.arrow"


def bank_schema(num_points: int, columns: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("key", pa.string()),
            pa.field("object", pa.string()),
            pa.field("xyz", pa.list_(pa.float32(), num_points * 3)),
            pa.field("labels", pa.list_(pa.float16(), num_points * columns)),
        ],
        metadata={"num_points": str(num_points), "columns": str(columns)},
    )


def write_bank(
    path: Path, batches: Iterable[list[tuple[str, str, np.ndarray, np.ndarray]]], num_points: int, columns: int = 17
) -> dict[str, list[int]]:
    """batches of (key, object, xyz [N,3], labels [N,C]), grouped by object; returns object -> [start, count]."""
    offsets: dict[str, list[int]] = {}
    count = 0
    schema = bank_schema(num_points, columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for rows in batches:
            if not rows:
                continue
            for key, obj, _, _ in rows:
                if obj in offsets and sum(offsets[obj]) != count:
                    raise ValueError(f"{BANK_FILE}: the clouds of {obj} are not contiguous in the list (at {key})")
                offsets.setdefault(obj, [count, 0])[1] += 1
                count += 1
            xyz = np.stack([r[2] for r in rows]).astype(np.float32).reshape(len(rows), -1)
            labels = np.stack([r[3] for r in rows]).astype(np.float16).reshape(len(rows), -1)
            writer.write_batch(
                pa.record_batch(
                    [
                        pa.array([r[0] for r in rows]),
                        pa.array([r[1] for r in rows]),
                        pa.FixedSizeListArray.from_arrays(pa.array(xyz.ravel()), num_points * 3),
                        pa.FixedSizeListArray.from_arrays(pa.array(labels.ravel()), num_points * columns),
                    ],
                    schema=schema,
                )
            )
    return offsets
