"""The sharding job: raw list -> parse + validate + write tars in Ray tasks -> manifest, sizes, quarantine.

Duplicates are removed from the item list before anything is parsed: an item whose key, or whose source files,
an earlier item already has is quarantined as `duplicate` (the first is kept), so every key occurs once in
the shards and a cloud listed twice is stored once in points.arrow.

Shard contents are fixed before any parsing (plan.py): the samples of a split, in list order, cut every
`samples_per_shard` items, and the train point clouds cut every `BANK_CHUNK`, so names and bytes depend neither
on task scheduling nor on the number of workers. One Ray Data pipeline runs everything: each task takes a
contiguous batch of shards (and point-bank chunks), parses their records and writes each shard's tar, and each
bank chunk's arrays to a chunk file; the driver then streams the chunks, in list order, into points.arrow.
Everything is written to a temporary folder renamed into place at the end. `use_ray=False` (`lma3d shard
--no-ray`) runs the same task function on every part in this process, one after the other: the same bytes.

`--out` may be an object-storage URI (pipeline/storage.py): the tasks then write their tars to it directly,
and the driver writes points.arrow, sizes.json, quarantine.jsonl and manifest.json last, so a folder a reader
accepts (it has a manifest) is always a finished one. An existing folder is replaced only with `overwrite`: its
manifest is deleted first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
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
from pipeline.shards.manifest import FORMAT_VERSION, READ_CHUNK, file_sha256
from pipeline.shards.plan import TASKS_PER_CPU, Part, group_parts, plan_parts
from pipeline.shards.samples import sample_members, tar_bytes
from pipeline.storage import Folder, check_reachable, is_uri
from pipeline.writer_lock import exclusive

log = logging.getLogger("lma3d.shard")
BANK_PARTS = ".points-parts"
"""Folder (inside the partial output) of the bank chunks' arrays, merged into points.arrow and removed."""
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


def _write_shard(part: dict[str, Any], root: str, out: str, num_points: int) -> dict[str, Any]:
    """Parse one shard's raw items and write its tar."""
    records, rejections = _parse_rows(root, part["rows"], num_points)
    name = shard_name(part["split"], int(part["index"]))
    records, samples = _serialise(records, rejections)
    data = tar_bytes(samples, name)
    Folder(out).write_bytes(name, data)
    size, digest = len(data), hashlib.sha256(data).hexdigest()
    return {
        "kind": "shard", "name": name, "split": part["split"], "samples": len(records), "bytes": size,
        "sha256": digest, "read": len(part["rows"]), "keys": [r.key for r in records],
        "objects": Counter(r.object for r in records),
        "affordances": Counter(r.affordance for r in records if r.affordance), "rejections": rejections,
    }  # fmt: skip


def _write_bank_chunk(part: dict[str, Any], root: str, out: str, num_points: int) -> dict[str, Any]:
    """Parse one chunk of train point clouds; its arrays go to a chunk file the driver merges in list order."""
    records, rejections = _parse_rows(root, part["rows"], num_points)
    if records:
        arrays = io.BytesIO()
        np.savez(arrays, xyz=np.stack([r.xyz for r in records]), labels=np.stack([r.labels for r in records]))
        Folder(out).write_bytes(_bank_chunk_name(int(part["index"])), arrays.getvalue())
    return {
        "kind": "bank", "index": int(part["index"]), "read": len(part["rows"]), "keys": [r.key for r in records],
        "objects": [r.object for r in records], "rejections": rejections,
    }  # fmt: skip


def _bank_chunk_name(index: int) -> str:
    return f"{BANK_PARTS}/chunk-{index:06d}.npz"


def _task(task: dict[str, Any], root: str, out: str, num_points: int) -> dict[str, Any]:
    """Ray task: a batch of parts, each parsed and written on its own; the results travel as one JSON string."""
    results = []
    for part in task["parts"]:
        write = _write_shard if part["kind"] == "shard" else _write_bank_chunk
        results.append(write(part, root, out, num_points))
    return {"results": json.dumps(results)}


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
    tasks: int | None = None,
    use_ray: bool = True,
) -> dict[str, Any]:
    """Shard `source` into `out`; returns the manifest. Raises FileExistsError / FileNotFoundError / ValueError.
    `tasks`: how many Ray tasks to cut the work into (default TASKS_PER_CPU per cluster CPU); `use_ray` False:
    every part in this process, one after the other. The output depends on neither."""
    if address and not use_ray:
        raise ValueError(f"use_ray=False runs every part in this process: address {address!r} needs Ray")
    source = Path(source).resolve()
    if is_uri(out):
        check_reachable(out, "--out")
        return _shard(source, fmt, Folder(out), cfg, num_points, overwrite, address, tasks, use_ray)
    out = Path(out).resolve()
    with exclusive(out, "shard folder"):  # two jobs into one --out would share (and delete) one .partial folder
        return _shard(source, fmt, out, cfg, num_points, overwrite, address, tasks, use_ray)


def _shard(
    source: Path,
    fmt: str,
    out: Path | Folder,
    cfg: ShardConfig,
    num_points: int,
    overwrite: bool,
    address: str | None,
    tasks: int | None,
    use_ray: bool,
) -> dict[str, Any]:
    remote = isinstance(out, Folder)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass --overwrite to replace it)")
    fmt = detect_format(source) if fmt == "auto" else fmt
    listed = list_items(source, fmt)
    items, duplicates = drop_duplicates(source, listed)
    if duplicates:
        log.warning("%d duplicate items quarantined (first: %s)", len(duplicates), duplicates[0]["reason"])
    if remote:  # written in place; the manifest, written last, makes it a shard folder
        tmp = out
        tmp.delete("manifest.json")  # first: from here on no reader takes the folder for a finished one
        tmp.delete()
    else:
        tmp = Folder(out.parent / f".{out.name}.partial")
        shutil.rmtree(tmp.local_path(), ignore_errors=True)
        tmp.local_path().mkdir(parents=True)
    parts = plan_parts(items, cfg.samples_per_shard)
    where = {"root": str(source), "out": tmp.uri, "num_points": num_points}
    if use_ray:
        results = _run_parts(parts, where, tasks, address)
    else:  # one task holding every part, as a Ray run with tasks=1
        results = json.loads(_task({"parts": [part.to_row() for part in parts]}, **where)["results"])
    shards = sorted((r for r in results if r["kind"] == "shard"), key=lambda r: r["name"])
    bank_parts = sorted((r for r in results if r["kind"] == "bank"), key=lambda r: r["index"])
    quarantine = duplicates + [q for result in shards + bank_parts for q in result["rejections"]]
    bank = _merge_bank(bank_parts, tmp, num_points)
    manifest = _manifest(source, fmt, listed, cfg, num_points, shards, bank, quarantine)
    tmp.write_bytes("sizes.json", json.dumps({s["name"]: s["samples"] for s in shards}, indent=2).encode())
    tmp.write_bytes("quarantine.jsonl", "".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantine).encode())
    tmp.write_bytes("manifest.json", json.dumps(manifest, indent=2).encode())
    if not remote:
        if out.exists():
            shutil.rmtree(out)
        tmp.local_path().rename(out)
    return manifest


def _run_parts(
    parts: list[Part], where: dict[str, Any], tasks: int | None, address: str | None
) -> list[dict[str, Any]]:
    """Every part's result, from Ray Data tasks (`_task(..., **where)`) on the cluster at `address` (a local Ray
    started and stopped here when there is none)."""
    import ray

    if not parts:
        return []
    started = ensure_ray(address, dashboard=False)  # Ray Data tasks only: no placement group to clean up
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        runs = group_parts(parts, tasks or TASKS_PER_CPU * cpus)
        rows = [{"parts": [p.to_row() for p in run]} for run in runs]
        dataset = ray.data.from_items(rows, override_num_blocks=len(runs))
        # Every CPU of the cluster at once: Ray Data's default resource budget otherwise runs these few long tasks
        # nearly one at a time (measured: 8 one-second tasks took 9.4 s on 2 CPUs).
        pool = ray.data.TaskPoolStrategy(size=min(len(runs), cpus))
        return [r for row in dataset.map(_task, fn_kwargs=where, compute=pool).iter_rows()
                for r in json.loads(row["results"])]  # fmt: skip
    finally:
        if started:
            ray.shutdown()


def _merge_bank(parts: list[dict[str, Any]], tmp: Folder, num_points: int) -> dict[str, Any] | None:
    """points.arrow from the bank chunk files, one record batch per chunk in list order (so objects stay
    contiguous); the chunk files are removed. On object storage it is written to a local temporary file first
    (an Arrow IPC file is written with seeks) and then uploaded."""
    if not parts:
        return None

    def batches():
        for part in parts:
            if part["keys"]:
                with tmp.open_stream(_bank_chunk_name(part["index"])) as stream:
                    chunk = io.BytesIO(stream.read())  # np.load needs a seekable file
                with np.load(chunk) as arrays:
                    yield list(zip(part["keys"], part["objects"], arrays["xyz"], arrays["labels"]))

    with tempfile.TemporaryDirectory(prefix="lma3d-bank-") as scratch:
        local = tmp.local_path(BANK_FILE) if tmp.is_local else Path(scratch, BANK_FILE)
        offsets = write_bank(local, batches(), num_points)
        if not tmp.is_local:
            with open(local, "rb") as source, tmp.open_write(BANK_FILE) as target:
                shutil.copyfileobj(source, target, READ_CHUNK)
        bank = {
            "file": BANK_FILE, "clouds": sum(len(p["keys"]) for p in parts), "read": sum(p["read"] for p in parts),
            "objects": offsets, "bytes": local.stat().st_size, "sha256": file_sha256(local),
        }  # fmt: skip
    tmp.delete(BANK_PARTS)
    return bank


def _manifest(source, fmt, items, cfg, num_points, shards, bank, quarantine) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for split in dict.fromkeys(s["split"] for s in shards):
        mine = [s for s in shards if s["split"] == split]
        objects, affordances = Counter(), Counter()
        for s in mine:
            objects.update(s["objects"])
            affordances.update(s["affordances"])
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
