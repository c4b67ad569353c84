"""The sharding job: raw list -> parse + validate + write tars in Ray tasks -> manifest, sizes, quarantine.

Duplicates are removed from the item list before anything is parsed: an item whose key, or whose source files,
an earlier item already has is quarantined as `duplicate` (the first is kept), so every key occurs once in
the shards and a cloud listed twice is stored once in points.arrow.

Shard contents are fixed before any parsing: the samples of a split, in list order, cut every
`samples_per_shard` items, so shard names and bytes do not depend on task scheduling. Each Ray task parses
its items and writes its own tar; the train point clouds go through Ray tasks too and stream, in list order,
into points.arrow. Everything is written to a temporary folder renamed into place at the end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.formats import RawItem, detect_format, item_key, list_items, parse_item, unexpected_reason
from pipeline.formats.common import fallback_key
from pipeline.ray_session import ensure_ray
from pipeline.record import Rejection
from pipeline.shards.bank import BANK_FILE, write_bank
from pipeline.shards.config import ShardConfig
from pipeline.shards.manifest import FORMAT_VERSION, file_sha256
from pipeline.shards.samples import sample_members, write_tar

log = logging.getLogger("lma3d.shard")
BANK_CHUNK = 64
DUPLICATE = "duplicate"
"""The quarantine reason code of an item whose key or source files an earlier item already has."""


def shard_name(split: str, index: int) -> str:
    return f"{split}/shard-{index:06d}.tar"


def _parse_rows(root: str, rows: list[dict], num_points: int) -> tuple[list, list[dict]]:
    """Records and quarantine lines of rows; an exception on one row becomes its quarantine line, so one
    hostile record never fails the task (and with it the job)."""
    records, rejections = [], []
    for row in rows:
        try:
            parsed = parse_item(root, RawItem.from_row(row), num_points)
        except Exception as e:  # noqa: BLE001 - parse_item quarantines; this catches a row it cannot even read
            parsed = _row_rejection(row, unexpected_reason(e, [str(p) for p in row.get("paths", [])]))
        if isinstance(parsed, Rejection):
            rejections.append(parsed.to_json())
        else:
            records.append(parsed)
    return records, rejections


def _row_rejection(row: dict, reason: str) -> Rejection:
    split = str(row.get("split", "unknown"))
    key = fallback_key(split, str(row.get("format", "row")), int(row.get("line", 0)))
    return Rejection(key=key, split=split, sources=tuple(str(p) for p in row.get("paths", [])), reason=reason)


def _serialise(records: list, rejections: list[dict]) -> tuple[list, list[tuple[str, dict[str, bytes]]]]:
    """(records kept, their tar samples); a record that cannot be serialised goes to `rejections` instead."""
    kept, samples = [], []
    for record in records:
        try:
            samples.append((record.key, sample_members(record)))
            kept.append(record)
        except Exception as e:  # noqa: BLE001 - e.g. text no encoder accepts: that record only is lost
            reason = unexpected_reason(e, list(record.sources))
            rejections.append(Rejection(record.key, record.split, record.sources, reason).to_json())
    return kept, samples


def _shard_task(task: dict[str, Any], root: str, out: str, num_points: int) -> dict[str, Any]:
    """Ray task: parse one shard's raw items and write its tar."""
    records, rejections = _parse_rows(root, task["rows"], num_points)
    name = shard_name(task["split"], int(task["index"]))
    records, samples = _serialise(records, rejections)
    size, digest = write_tar(Path(out, name), samples)
    return {
        "name": name, "split": task["split"], "samples": len(records), "bytes": size, "sha256": digest,
        "read": len(task["rows"]), "keys": json.dumps([r.key for r in records]),
        "objects": json.dumps(Counter(r.object for r in records)),
        "affordances": json.dumps(Counter(r.affordance for r in records if r.affordance)),
        "rejections": json.dumps(rejections),
    }  # fmt: skip


def _bank_task(task: dict[str, Any], root: str, num_points: int) -> dict[str, Any]:
    """Ray task: parse a chunk of train point clouds; arrays travel as one .npz blob per chunk."""
    records, rejections = _parse_rows(root, task["rows"], num_points)
    blob = io.BytesIO()
    if records:
        np.savez(blob, xyz=np.stack([r.xyz for r in records]), labels=np.stack([r.labels for r in records]))
    return {
        "order": task["order"], "read": len(task["rows"]), "keys": json.dumps([r.key for r in records]),
        "objects": json.dumps([r.object for r in records]), "arrays": blob.getvalue(),
        "rejections": json.dumps(rejections),
    }  # fmt: skip


def _source_files(root: Path, item: RawItem) -> tuple[str, ...] | None:
    """The item's own files, normalised (None for LASO, whose items share the split's pickles)."""
    if item.format == "laso":
        return None
    return tuple(os.path.normpath(p if os.path.isabs(p) else root / p) for p in item.paths)


def drop_duplicates(root: Path, items: list[RawItem]) -> tuple[list[RawItem], list[dict]]:
    """(items without duplicates, one `duplicate` quarantine line per dropped item), list order kept: an item
    is a duplicate when an earlier item has its key, or its source files."""
    kept: list[RawItem] = []
    lines: list[dict] = []
    keys: dict[str, RawItem] = {}
    sources: dict[tuple[str, ...], RawItem] = {}
    for item in items:
        key, files = item_key(root, item), _source_files(root, item)
        first = keys.get(key) or (sources.get(files) if files is not None else None)
        if first is not None:
            where = f"{(item.payload.get('lists') or [item.paths[0]])[0]}:{item.line}"
            lines.append({
                "key": key, "split": item.split, "sources": list(item.paths),
                "reason": f"{DUPLICATE}: {where} repeats {item_key(root, first)} (line {first.line}), the first kept",
            })  # fmt: skip
            continue
        keys[key] = item
        if files is not None:
            sources[files] = item
        kept.append(item)
    return kept, lines


def fingerprint_source(root: Path, items: list[RawItem]) -> str:
    """sha256 over the list files' bytes and every listed file's path and size: cheap, and changes with the data."""
    digest = hashlib.sha256()
    for listed in sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".txt", ".pkl", ".csv")):
        digest.update(listed.name.encode())
        digest.update(listed.read_bytes())
    for item in items:
        for path in item.paths:
            full = Path(path) if os.path.isabs(path) else root / path
            digest.update(f"{path}:{full.stat().st_size if full.exists() else -1}".encode())
    return digest.hexdigest()


def run(
    source: str | Path,
    fmt: str,
    out: str | Path,
    cfg: ShardConfig,
    num_points: int = 2048,
    overwrite: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """Shard `source` into `out`; returns the manifest. Raises FileExistsError / FileNotFoundError / ValueError."""
    import ray

    source, out = Path(source).resolve(), Path(out).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass --overwrite to replace it)")
    fmt = detect_format(source) if fmt == "auto" else fmt
    listed = list_items(source, fmt)
    items, duplicates = drop_duplicates(source, listed)
    if duplicates:
        log.warning("%d duplicate items quarantined (first: %s)", len(duplicates), duplicates[0]["reason"])
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = ensure_ray(address)
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        shards, quarantine = _write_shards(items, source, tmp, cfg, num_points)
        quarantine = duplicates + quarantine
        bank = _write_points(items, source, tmp, num_points, quarantine)
    finally:
        if started:
            ray.shutdown()
    manifest = _manifest(source, fmt, listed, cfg, num_points, shards, bank, quarantine)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (tmp / "sizes.json").write_text(json.dumps({s["name"]: s["samples"] for s in shards}, indent=2))
    (tmp / "quarantine.jsonl").write_text("".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantine))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return manifest


def _parallelism(tasks: int) -> int:
    """Parse tasks to run at once: every CPU of the cluster. Ray Data's default resource budget otherwise runs
    these one-row-per-task maps nearly one at a time (measured: 8 one-second tasks took 9.4 s on 2 CPUs)."""
    import ray

    return max(1, min(tasks, int(ray.cluster_resources().get("CPU", 1))))


def _write_shards(items: list[RawItem], source: Path, tmp: Path, cfg: ShardConfig, num_points: int):
    import ray

    tasks = []
    for split in dict.fromkeys(item.split for item in items):
        rows = [item.to_row() for item in items if item.split == split and item.kind != "points"]
        for index, start in enumerate(range(0, len(rows), cfg.samples_per_shard)):
            tasks.append({"split": split, "index": index, "rows": rows[start : start + cfg.samples_per_shard]})
    if not tasks:
        return [], []
    kwargs = {"root": str(source), "out": str(tmp), "num_points": num_points}
    dataset = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    pool = ray.data.TaskPoolStrategy(size=_parallelism(len(tasks)))
    results = dataset.map(_shard_task, fn_kwargs=kwargs, compute=pool).take_all()
    results.sort(key=lambda r: r["name"])
    quarantine = [q for r in results for q in json.loads(r["rejections"])]
    return results, quarantine


def _write_points(items: list[RawItem], source: Path, tmp: Path, num_points: int, quarantine: list[dict]):
    import ray

    rows = [item.to_row() for item in items if item.kind == "points"]
    if not rows:
        return None
    tasks = [{"order": i, "rows": rows[s : s + BANK_CHUNK]} for i, s in enumerate(range(0, len(rows), BANK_CHUNK))]
    kwargs = {"root": str(source), "num_points": num_points}
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    ds = ds.map(_bank_task, fn_kwargs=kwargs, compute=ray.data.TaskPoolStrategy(size=_parallelism(len(tasks))))
    stats = {"read": 0, "written": 0}

    def batches():
        for result in ds.iter_rows():  # preserve_order: list order, so objects stay contiguous
            stats["read"] += int(result["read"])
            quarantine.extend(json.loads(result["rejections"]))
            keys, objects = json.loads(result["keys"]), json.loads(result["objects"])
            if not keys:
                continue
            arrays = np.load(io.BytesIO(result["arrays"]))
            stats["written"] += len(keys)
            yield list(zip(keys, objects, arrays["xyz"], arrays["labels"]))

    offsets = write_bank(tmp / BANK_FILE, batches(), num_points)
    return {
        "file": BANK_FILE, "clouds": stats["written"], "read": stats["read"], "objects": offsets,
        "bytes": (tmp / BANK_FILE).stat().st_size, "sha256": file_sha256(tmp / BANK_FILE),
    }  # fmt: skip


def _manifest(source, fmt, items, cfg, num_points, shards, bank, quarantine) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for split in dict.fromkeys(s["split"] for s in shards):
        mine = [s for s in shards if s["split"] == split]
        objects, affordances = Counter(), Counter()
        for s in mine:
            objects.update(json.loads(s["objects"]))
            affordances.update(json.loads(s["affordances"]))
        counts[split] = {
            "samples": sum(s["samples"] for s in mine),
            "shards": len(mine),
            "objects": dict(sorted(objects.items())),
            "affordances": dict(sorted(affordances.items())),
        }
    written = sum(s["samples"] for s in shards) + (bank["clouds"] if bank else 0)
    shard_list = [{k: s[k] for k in ("name", "split", "samples", "sha256", "bytes")} for s in shards]
    digest = hashlib.sha256(json.dumps([s["sha256"] for s in shard_list]).encode())
    if bank:
        digest.update(str(bank["objects"]).encode())
    quarantined = Counter(q["reason"].split(":")[0] for q in quarantine)
    return {
        "format_version": FORMAT_VERSION,
        "source": str(source),
        "source_format": fmt,
        "source_fingerprint": fingerprint_source(source, items),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {**asdict(cfg), "num_points": num_points},
        "read": len(items),
        "written": written,
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(sorted(quarantined.items())),
        "splits": counts,
        "point_bank": bank,
        "shards": shard_list,
        "total_bytes": sum(s["bytes"] for s in shard_list),
        "fingerprint": digest.hexdigest(),
    }
