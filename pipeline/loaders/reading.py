"""Reading shard tars as WebDataset samples, verified while they stream.

A shard is read once: its bytes go through a hashing file wrapper into a streaming tar parser, and its samples
are held (a shard is tens of MB) until the digest at EOF equals the manifest's sha256; only then are they
handed out. The same pass checks what the writer checked: the sample count, unique keys, members of a known
kind, and the values (labels in [0, 1], coordinates finite, N points). Any failure makes the whole shard a
CorruptShard naming it: a truncated tar, a flipped header, a repeated key and a flipped array byte alike;
never "some samples and carry on". `data.on_corrupt_shard` decides what a reader does with one: `fail` (the
job stops with that line) or `skip` (its samples are dropped, the shard is counted and logged once).

Per-sample decode failures in a verified shard (e.g. a JPEG PIL cannot decode) remain BadData: skipped,
counted and warned about until more than `max_bad_fraction` of what was read is bad.

Whoever can write a shard can also re-sign it, so what a shard declares is checked before it is allocated: each
tar header before its member is read (a regular file of a known kind, at most MEMBER_MAX_BYTES; a header of any
other type, e.g. a pax or GNU long-name header whose data tarfile would read whole, is refused before its data
is), each `.npy` header against the bytes its member holds (a shape claiming 10^12 points is a corrupt shard,
not a MemoryError).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.formats.common import ANNOTATION_MAX_BYTES, IMAGE_MAX_BYTES
from pipeline.shards.manifest import READ_CHUNK, ShardEntry, read_manifest, split_entries
from pipeline.storage import StorageError

log = logging.getLogger("lma3d.loader")
MEMBERS = ("jpg", "points.npy", "label.npy", "json")
META_FIELDS = ("object", "affordance", "instruction")
NPY_MAX_POINTS = 500_000
"""As pipeline.pointfiles.MAX_POINTS: the most points per cloud anything in lma3d reads."""
MEMBER_MAX_BYTES = {
    "jpg": IMAGE_MAX_BYTES,  # the raw image's bytes, which the raw readers refuse above this
    "json": ANNOTATION_MAX_BYTES,  # its instruction comes from an annotation file, refused above this
    "points.npy": (64 << 10) + NPY_MAX_POINTS * 3 * 4,  # header + float32 [N,3]
    "label.npy": (64 << 10) + NPY_MAX_POINTS * 4,
}
"""The most bytes a member of each kind may declare in its tar header: far above what lma3d shard writes."""


class CorruptShard(ValueError):
    """A shard whose bytes, structure or values differ from what the manifest promises."""

    def __init__(self, shard: str, reason: str) -> None:
        super().__init__(f"corrupt shard {shard}: {reason}")
        self.shard, self.reason = shard, reason

    def __reduce__(self):  # crosses Ray task boundaries with its fields
        return CorruptShard, (self.shard, self.reason)


_CORRUPT_LINE = re.compile(r"CorruptShard: (corrupt shard [^\n]+)")


def corrupt_shard_line(error: BaseException) -> str | None:
    """The one line of a CorruptShard behind `error`, however it travelled: raised here, re-raised by a torch
    loader worker as RuntimeError text, or inside a Ray task's error (which keeps only the traceback text)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, CorruptShard):
            return str(current)
        match = _CORRUPT_LINE.search(str(current))
        if match:
            return match.group(1).strip()
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


class HashingReader:
    """A read-only file wrapper that hashes every byte handed out, and can drain the rest to EOF."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest, self.read_bytes = raw, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        self.read_bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(READ_CHUNK):
            pass


def read_shard(entry: ShardEntry, num_points: int | None = None) -> list[dict]:
    """Every sample of a shard (dicts of member bytes plus `__key__`, `__url__`), verified; else CorruptShard."""
    try:
        size = _size(entry)
        if size is None:
            raise CorruptShard(entry.name, "missing")
        if size != entry.bytes:
            raise CorruptShard(entry.name, f"{size} bytes, the manifest says {entry.bytes}")
        with _open(entry) as raw:
            stream = HashingReader(raw)
            samples, problem = _parse(stream, entry)
            stream.drain()  # the tar end padding (and anything after a header tarfile took as the end)
    except StorageError:
        raise  # the endpoint, not the shard: one line, never counted as a corrupt shard
    except OSError as error:
        raise CorruptShard(entry.name, f"unreadable: {error}") from None
    if stream.digest.hexdigest() != entry.sha256:
        raise CorruptShard(entry.name, "sha256 differs from the manifest" + (f" ({problem})" if problem else ""))
    if problem:
        raise CorruptShard(entry.name, problem)
    if len(samples) != entry.samples:
        raise CorruptShard(entry.name, f"{len(samples)} samples, the manifest says {entry.samples}")
    for sample in samples:
        problem = check_sample(sample, num_points)
        if problem:
            raise CorruptShard(entry.name, f"sample {sample['__key__']}: {problem}")
    return samples


def _size(entry: ShardEntry) -> int | None:
    if isinstance(entry.path, Path):
        return entry.path.stat().st_size
    return entry.folder.size(entry.name)


def _open(entry: ShardEntry) -> BinaryIO:
    """The tar's bytes as a stream: a local file, or an object read in ranged GETs that resume after a drop (no
    local copy: the bytes go straight into the hashing reader)."""
    if isinstance(entry.path, Path):
        return open(entry.path, "rb", buffering=READ_CHUNK)  # noqa: SIM115 - closed by the caller's with
    return entry.folder.open_stream(entry.name)


class _Declared(tarfile.TarInfo):
    """A tar header checked before tarfile acts on it: tarfile reads the data of pax and GNU long-name headers
    whole, whatever size they declare, before it hands out the next member. Only regular files of a known kind
    within MEMBER_MAX_BYTES pass; the others end the parse as a CorruptShard naming the member."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            kind = self.type.decode("latin-1")
            raise _Refused(f"member {self.name!r} is not a regular file (tar type {kind!r})")
        ext = self.name.partition(".")[2]
        limit = MEMBER_MAX_BYTES.get(ext, max(MEMBER_MAX_BYTES.values()))  # an unknown kind: refused by name next
        if self.size > limit:
            raise _Refused(f"member {self.name} declares {self.size} bytes, over the {limit}-byte limit for a .{ext} "
                           "member")  # fmt: skip
        return super()._proc_member(tarfile_)


class _Refused(Exception):
    """A member refused from its header (its declared bytes are never read)."""


def _parse(stream: HashingReader, entry: ShardEntry) -> tuple[list[dict], str]:
    """(samples, first structural problem or ""): members grouped by key, in order; parsing stops at a problem
    (the digest is still taken over every byte). A member refused from its header is a CorruptShard at once:
    the rest of the shard (gigabytes, as declared) is neither read nor hashed."""
    samples: list[dict] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_Declared) as tar:
            for info in tar:
                key, dot, ext = info.name.partition(".")
                if not dot or "/" in info.name or ext not in MEMBERS:
                    return samples, f"member {info.name!r} is not <key>.{{{','.join(MEMBERS)}}}"
                if not samples or samples[-1]["__key__"] != key:
                    if key in seen:
                        return samples, f"key {key} occurs twice"
                    seen.add(key)
                    samples.append({"__key__": key, "__url__": str(entry.path)})
                elif ext in samples[-1]:
                    return samples, f"key {key} occurs twice (member {info.name})"
                samples[-1][ext] = tar.extractfile(info).read()
    except _Refused as refused:
        raise CorruptShard(entry.name, str(refused)) from None
    except (tarfile.TarError, EOFError) as error:
        return samples, f"unreadable tar: {error}"
    return samples, ""


def check_sample(sample: dict, num_points: int | None) -> str:
    """The write-time checks on one sample's members ("" when it is good)."""
    try:
        meta = json.loads(sample["json"])
    except (KeyError, ValueError) as error:
        return f"no readable json member ({error})"
    if not isinstance(meta, dict) or not all(isinstance(meta.get(f), str) for f in META_FIELDS):
        return "json member lacks a string object / affordance / instruction"
    if ("points.npy" in sample) != ("label.npy" in sample):
        return "points.npy and label.npy come together"
    if "points.npy" not in sample:
        return "" if "jpg" in sample else "neither an image nor points"
    xyz, label = _npy(sample["points.npy"], "points.npy"), _npy(sample["label.npy"], "label.npy")
    for problem in (xyz, label):
        if isinstance(problem, str):
            return problem
    if xyz.dtype != np.float32 or xyz.ndim != 2 or xyz.shape[1] != 3:
        return f"points.npy is {xyz.dtype} {xyz.shape}, expected float32 [N,3]"
    if label.dtype != np.float32 or label.shape != xyz.shape[:1]:
        return f"label.npy is {label.dtype} {label.shape}, expected float32 [{len(xyz)}]"
    if num_points is not None and len(xyz) != num_points:
        return f"{len(xyz)} points, the manifest says {num_points}"
    if not np.isfinite(xyz).all():
        return "non-finite coordinates"
    if not ((label >= 0) & (label <= 1)).all():  # NaN fails both comparisons
        return "labels outside [0, 1]"
    return ""


def _npy(data: bytes, name: str) -> np.ndarray | str:
    """An `.npy` member's array, or the problem with it: its header is read first and must claim exactly the bytes
    that follow (shape x itemsize), so nothing is allocated for a shape the member does not hold."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):  # what np.save writes for a plain float array
            return f"unreadable array: {name} is .npy format {version}"
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)  # headers over 10,000 bytes are refused by numpy
    except (ValueError, TypeError, SyntaxError) as error:
        return f"unreadable array: {name}: {error}"
    if dtype.hasobject:
        return f"unreadable array: {name} holds Python objects"
    offset = stream.tell()
    declared = math.prod(shape) * dtype.itemsize
    if declared != len(data) - offset:
        return f"{name} header claims shape {shape} {dtype}: {declared} bytes, the member holds {len(data) - offset}"
    return np.frombuffer(data, dtype, math.prod(shape), offset).reshape(shape, order="F" if fortran else "C")


class ShardPolicy:
    """`data.on_corrupt_shard`: `fail` raises the CorruptShard; `skip` drops the shard, logs it once and counts it."""

    def __init__(self, on_corrupt: str = "fail", num_points: int | None = None) -> None:
        if on_corrupt not in ("fail", "skip"):
            raise ValueError(f"data.on_corrupt_shard must be fail or skip, got {on_corrupt!r}")
        self.on_corrupt, self.num_points = on_corrupt, num_points
        self.corrupt: dict[str, str] = {}

    def samples(self, entry: ShardEntry) -> list[dict]:
        if entry.name in self.corrupt:
            return []
        try:
            return read_shard(entry, self.num_points)
        except CorruptShard as error:
            if self.on_corrupt == "fail":
                raise
            self.corrupt[entry.name] = error.reason
            log.warning("%s; skipped (data.on_corrupt_shard: skip, %d corrupt so far)", error, len(self.corrupt))
            return []


def policy_for(manifest: dict, on_corrupt: str) -> ShardPolicy:
    return ShardPolicy(on_corrupt, int(manifest["config"]["num_points"]))


def shard_paths(shards: str | Path, manifest: dict, split: str) -> list[ShardEntry]:
    """A split's shard entries in manifest order (validated names, inside the folder)."""
    return split_entries(manifest, shards, split)


class BadData:
    """Counts samples read and bad; warns at most every `every_s` seconds; raises above the fraction."""

    def __init__(self, max_fraction: float, every_s: float = 10.0, min_seen: int = 20) -> None:
        self.max_fraction, self.every_s, self.min_seen = max_fraction, every_s, min_seen
        self.seen = self.bad = 0
        self._last_warning = -float("inf")

    def ok(self) -> None:
        self.seen += 1

    def failed(self, where: str, error: BaseException) -> None:
        self.seen += 1
        self.bad += 1
        now = time.monotonic()
        if now - self._last_warning >= self.every_s:
            log.warning("skipped corrupt data in %s: %s (%d bad of %d read so far)", where, error, self.bad, self.seen)
            self._last_warning = now
        if self.seen >= self.min_seen and self.bad / self.seen > self.max_fraction:
            raise RuntimeError(
                f"{self.bad} of {self.seen} samples read were corrupt (> data.max_bad_fraction {self.max_fraction}); "
                f"last: {where}: {error}"
            )


def iter_samples(entry: ShardEntry, policy: ShardPolicy | None = None) -> Iterator[dict]:
    """The verified samples of one shard, in order (none when `policy` skips it as corrupt)."""
    yield from (policy or ShardPolicy()).samples(entry)


__all__ = [
    "BadData", "CorruptShard", "HashingReader", "ShardEntry", "ShardPolicy", "check_sample", "corrupt_shard_line",
    "iter_samples", "policy_for", "read_manifest", "read_shard", "shard_paths",
]  # fmt: skip
