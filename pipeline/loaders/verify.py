"""Verify a whole shard folder (what `lma3d inspect SHARDS` runs): every shard and points.arrow read once and
checked as the loaders check them, every problem collected instead of stopping at the first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.loaders.bank import open_bank
from pipeline.loaders.reading import CorruptShard, read_shard
from pipeline.shards.manifest import read_manifest, shard_entries


def verify_folder(shards: str | Path) -> dict[str, Any]:
    """{"shards": checked, "samples": verified samples, "bad": [{"name", "reason"}...], "point_bank": "ok" |
    reason | None}. A manifest that breaks its schema raises ManifestError (nothing else can be trusted then)."""
    manifest = read_manifest(shards)
    num_points = int(manifest["config"]["num_points"])
    entries = shard_entries(manifest, shards)
    bad: list[dict[str, str]] = []
    samples = 0
    for entry in entries:
        try:
            samples += len(read_shard(entry, num_points))
        except CorruptShard as error:
            bad.append({"name": entry.name, "reason": error.reason})
    bank_state = None
    bank = manifest.get("point_bank")
    if bank is not None:
        try:
            open_bank(shards, manifest)
            bank_state = "ok"
        except (CorruptShard, FileNotFoundError) as error:
            reason = error.reason if isinstance(error, CorruptShard) else str(error)
            bad.append({"name": bank["file"], "reason": reason})
            bank_state = reason
    return {"shards": len(entries), "samples": samples, "bad": bad, "point_bank": bank_state}
