"""A node-local cache of point banks fetched from object storage: the train loaders memory-map the bank (random
access to any cloud, shared through the page cache), which an object store cannot give, so each node fetches it
once.

- Keyed by the manifest's sha256: `<cache>/banks/<sha256>.arrow`. The bytes are hashed as they arrive and the
  file is renamed into place only when the digest and size equal the manifest's, so a file under its final name
  is always a verified bank; a bank replaced in the bucket after sharding fails here as a corrupt shard.
- Two workers of one node fetching at once: the fetch holds an flock on `<cache>/banks/.lock`; the second waits,
  then finds the file and maps it.
- Bounded: after a fetch, the least recently used other banks are deleted until the cache holds at most
  `max_bytes` (a process that maps a deleted bank keeps reading it: POSIX frees it at the last unmap). A bank
  larger than the limit alone is refused before it is fetched.

`LMA3D_CACHE_DIR` sets the folder (default `~/.cache/lma3d`), `LMA3D_CACHE_MAX_GB` the limit (default 50).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from pathlib import Path

from pipeline.loaders.reading import CorruptShard
from pipeline.shards.manifest import READ_CHUNK
from pipeline.storage import Folder

log = logging.getLogger("lma3d.loader")
DEFAULT_MAX_GB = 50.0


def cache_dir() -> Path:
    return Path(os.environ.get("LMA3D_CACHE_DIR") or Path.home() / ".cache" / "lma3d") / "banks"


def cache_max_bytes() -> int:
    raw = os.environ.get("LMA3D_CACHE_MAX_GB", "")
    try:
        gb = float(raw) if raw else DEFAULT_MAX_GB
    except ValueError:
        raise ValueError(f"LMA3D_CACHE_MAX_GB must be a number of GB, got {raw!r}") from None
    if not gb > 0:
        raise ValueError(f"LMA3D_CACHE_MAX_GB must be > 0, got {raw!r}")
    return int(gb * (1 << 30))


def fetch_bank(folder: Folder, name: str, expected: dict) -> Path:
    """The local, verified copy of `folder/name` (the manifest's point_bank entry `expected`), fetched if absent."""
    sha, size = expected["sha256"], int(expected["bytes"])
    limit = cache_max_bytes()
    if size > limit:
        raise ValueError(f"{folder.where(name)}: {size} bytes, more than the bank cache's limit {limit} "
                         "(raise LMA3D_CACHE_MAX_GB)")  # fmt: skip
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{sha}.arrow"
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and target.stat().st_size == size:
            os.utime(target)  # recently used
            return target
        started = time.monotonic()
        _download(folder, name, target, sha, size)
        log.info("fetched the point bank %s (%.1f MB) into %s in %.1f s", folder.where(name), size / 1e6, target,
                 time.monotonic() - started)  # fmt: skip
        _evict(root, keep=target, limit=limit)
    return target


def _download(folder: Folder, name: str, target: Path, sha: str, size: int) -> None:
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    digest, written = hashlib.sha256(), 0
    try:
        with folder.open_stream(name) as source, open(partial, "wb") as out:
            while chunk := source.read(READ_CHUNK):
                written += len(chunk)
                if written > size:
                    raise CorruptShard(name, f"more than the {size} bytes the manifest says")
                digest.update(chunk)
                out.write(chunk)
        if written != size:
            raise CorruptShard(name, f"{written} bytes, the manifest says {size}")
        if digest.hexdigest() != sha:
            raise CorruptShard(name, "sha256 differs from the manifest")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _evict(root: Path, keep: Path, limit: int) -> None:
    banks = sorted((p for p in root.glob("*.arrow") if p != keep), key=lambda p: p.stat().st_mtime)
    total = keep.stat().st_size + sum(p.stat().st_size for p in banks)
    for old in banks:
        if total <= limit:
            break
        total -= old.stat().st_size
        old.unlink(missing_ok=True)
        log.info("bank cache over %.1f GB: removed %s", limit / (1 << 30), old.name)
