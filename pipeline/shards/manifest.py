"""The one reader of a shard folder's manifest.json: validated against its schema before anything trusts it.

A shard folder is shared storage: the manifest says which files to open, how many samples they hold and what
their bytes hash to, so every field a reader acts on is checked here, with one line naming the field:
- `format_version` is this code's; every shard entry has a name `<split>/shard-%06d.tar` of its own split that
  resolves (symlinks followed) inside the folder, an int `samples` and `bytes` >= 0, a 64-hex `sha256`;
- `splits.<split>.samples` / `.shards` are the sums over the entries, and sizes.json agrees entry by entry;
- `point_bank` (when present) is points.arrow with its sha256, byte size, cloud count and object ranges.
The bytes themselves are checked by the readers (reading.py) as they stream them.

The folder is local or on object storage (pipeline/storage.py); manifest.json and sizes.json are read whole, so
each is refused above MANIFEST_MAX_BYTES before it is read.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.storage import Folder

FORMAT_VERSION = 2
"""2: the point bank's sha256 and byte size are recorded (1 had neither: re-run lma3d shard)."""
SHARD_NAME = re.compile(r"(?P<split>[a-z]+)/shard-\d{6}\.tar")
SHA256 = re.compile(r"[0-9a-f]{64}")
BANK_FILE = "points.arrow"
READ_CHUNK = 1 << 20
MANIFEST_MAX_BYTES = 64 << 20
"""manifest.json / sizes.json of a million shards stay far below this."""


class ManifestError(ValueError):
    """manifest.json or sizes.json is not a valid lma3d shard manifest (one line naming the field)."""


@dataclass(frozen=True)
class ShardEntry:
    """One verified-to-be-well-formed manifest entry: where the tar is and what its bytes must be."""

    name: str
    path: Path | str
    """The tar's local Path, or its URI on object storage."""
    split: str
    samples: int
    bytes: int
    sha256: str
    folder: Folder | None = None
    """The shard folder (reads of an object-storage tar go through it)."""


def file_sha256(path: Path) -> str:
    """sha256 of a file, read once in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(READ_CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ManifestError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _dict(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or not SHA256.fullmatch(value):
        raise ManifestError(f"{where} must be 64 lower-case hex digits, got {value!r}")
    return value


def _inside(folder: Folder, name: str, where: str) -> Path | str:
    """folder/name: a local one refused unless it resolves (after symlinks) inside the folder; on object storage
    (no symlinks) the names' pattern, checked before, already keeps them inside."""
    if not folder.is_local:
        return folder.where(name)
    root = folder.local_path()
    path = root / name
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ManifestError(f"{where} {name!r} resolves outside the shard folder ({resolved})")
    return path


def _load_json(folder: Folder, name: str, data: bytes | None = None) -> Any:
    try:
        return json.loads(folder.read_bytes(name, MANIFEST_MAX_BYTES) if data is None else data)
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ManifestError(f"{folder.where(name)} is not readable JSON: {error}") from None


def read_manifest(shards: str | Path) -> dict[str, Any]:
    """The manifest of a shard folder (a path or an object-storage URI), validated (see the module doc).
    FileNotFoundError without one, ManifestError (a ValueError) when it, or sizes.json, breaks the schema.

    Validated once per process: the driver's checks, the loaders of every epoch and validation read the same
    bytes again (a few KB) but check them against the folder (sizes.json, every shard's size: one request each
    on object storage) only the first time. Other bytes are validated afresh."""
    folder = Folder(shards)
    if folder.size("manifest.json") is None:
        raise FileNotFoundError(f"{shards}: no manifest.json (not an lma3d shard folder; run lma3d shard first)")
    try:
        data = folder.read_bytes("manifest.json", MANIFEST_MAX_BYTES)
    except (OSError, ValueError) as error:
        raise ManifestError(f"{folder.where('manifest.json')} is not readable JSON: {error}") from None
    key = (folder.where("manifest.json"), hashlib.sha256(data).hexdigest())
    if key not in _VALIDATED:
        manifest = _dict(_load_json(folder, "manifest.json", data), folder.where("manifest.json"))
        validate(manifest, folder)
        _VALIDATED.clear()  # one shard folder at a time in practice: the memo never grows
        _VALIDATED[key] = manifest
    return copy.deepcopy(_VALIDATED[key])  # callers may edit theirs


_VALIDATED: dict[tuple[str, str], dict[str, Any]] = {}


def validate(manifest: dict[str, Any], folder: Folder) -> None:
    where = folder.where("manifest.json")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{where}: format_version {version!r}, this lma3d reads {FORMAT_VERSION} (re-run lma3d shard)"
        )
    entries = shard_entries(manifest, folder)
    splits = _dict(manifest.get("splits"), f"{where}: splits")
    for split in sorted({e.split for e in entries} | set(splits)):
        mine = [e for e in entries if e.split == split]
        counts = _dict(splits.get(split, {}), f"{where}: splits.{split}")
        claimed = _int(counts.get("samples"), f"{where}: splits.{split}.samples")
        if claimed != sum(e.samples for e in mine):
            raise ManifestError(
                f"{where}: splits.{split}.samples is {claimed} but its shards hold {sum(e.samples for e in mine)}"
            )
        if _int(counts.get("shards"), f"{where}: splits.{split}.shards") != len(mine):
            raise ManifestError(f"{where}: splits.{split}.shards is {counts.get('shards')} but {len(mine)} are listed")
    _check_sizes(folder, entries)
    config = _dict(manifest.get("config"), f"{where}: config")
    _int(config.get("num_points"), f"{where}: config.num_points", minimum=1)
    bank = manifest.get("point_bank")
    if bank is not None:
        _check_bank(_dict(bank, f"{where}: point_bank"), folder, where)


def _check_sizes(folder: Folder, entries: list[ShardEntry]) -> None:
    path = folder.where("sizes.json")
    if folder.size("sizes.json") is None:
        raise ManifestError(f"{folder}: no sizes.json next to manifest.json")
    sizes = _dict(_load_json(folder, "sizes.json"), path)
    listed = {e.name: e.samples for e in entries}
    for name in sorted(set(sizes) | set(listed)):
        if sizes.get(name) != listed.get(name):
            raise ManifestError(
                f"{path}: {name} holds {sizes.get(name)!r} samples but manifest.json says {listed.get(name)!r}"
            )


def _check_bank(bank: dict, folder: Folder, where: str) -> None:
    if bank.get("file") != BANK_FILE:
        raise ManifestError(f"{where}: point_bank.file must be {BANK_FILE!r}, got {bank.get('file')!r}")
    _sha(bank.get("sha256"), f"{where}: point_bank.sha256")
    _int(bank.get("bytes"), f"{where}: point_bank.bytes")
    clouds = _int(bank.get("clouds"), f"{where}: point_bank.clouds")
    total = 0
    for obj, span in _dict(bank.get("objects"), f"{where}: point_bank.objects").items():
        if not (isinstance(span, list) and len(span) == 2):
            raise ManifestError(f"{where}: point_bank.objects.{obj} must be [start, count], got {span!r}")
        if _int(span[0], f"{where}: point_bank.objects.{obj} start") != total:
            raise ManifestError(f"{where}: point_bank.objects.{obj} starts at {span[0]}, expected {total}")
        total += _int(span[1], f"{where}: point_bank.objects.{obj} count", minimum=1)
    if total != clouds:
        raise ManifestError(f"{where}: point_bank.clouds is {clouds} but its objects hold {total}")
    _inside(folder, BANK_FILE, f"{where}: point_bank.file")


def shard_entries(manifest: dict[str, Any], folder: str | Path | Folder) -> list[ShardEntry]:
    """Every shard entry, each checked: name pattern and split, inside the folder, counts, sha256; names unique."""
    folder = folder if isinstance(folder, Folder) else Folder(folder)
    where = folder.where("manifest.json")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise ManifestError(f"{where}: shards must be a list, got {type(shards).__name__}")
    entries: list[ShardEntry] = []
    for i, raw in enumerate(shards):
        at = f"{where}: shards[{i}]"
        raw = _dict(raw, at)
        name, split = raw.get("name"), raw.get("split")
        match = SHARD_NAME.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            raise ManifestError(f"{at}.name {name!r} is not <split>/shard-NNNNNN.tar")
        if split != match["split"]:
            raise ManifestError(f"{at}.split {split!r} does not match its name {name!r}")
        path = _inside(folder, name, f"{at}.name")
        entries.append(
            ShardEntry(
                name=name,
                path=path,
                split=split,
                samples=_int(raw.get("samples"), f"{at}.samples"),
                bytes=_int(raw.get("bytes"), f"{at}.bytes"),
                sha256=_sha(raw.get("sha256"), f"{at}.sha256"),
                folder=folder,
            )
        )
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ManifestError(f"{where}: shard {repeated[0]} is listed more than once")
    return entries


def split_entries(manifest: dict[str, Any], folder: str | Path | Folder, split: str) -> list[ShardEntry]:
    """A split's shard entries in manifest (= name) order."""
    return [e for e in shard_entries(manifest, folder) if e.split == split]
