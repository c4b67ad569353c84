"""Reading shard tars as WebDataset samples, with corrupt shards and samples skipped, counted and warned
about (rate-limited, naming the shard), until more than `max_bad_fraction` of what was read is bad."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from webdataset.tariterators import group_by_keys, tar_file_iterator

log = logging.getLogger("lma3d.loader")


def read_manifest(shards: str | Path) -> dict:
    path = Path(shards, "manifest.json")
    if not path.is_file():
        raise FileNotFoundError(f"{shards}: no manifest.json (not an lma3d shard folder; run lma3d shard first)")
    return json.loads(path.read_text())


def shard_paths(shards: str | Path, manifest: dict, split: str) -> list[tuple[Path, int]]:
    """(path, samples) of a split's shards, in manifest (= name) order."""
    return [(Path(shards, s["name"]), int(s["samples"])) for s in manifest["shards"] if s["split"] == split]


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


def iter_samples(path: Path, bad: BadData, expected: int | None = None) -> Iterator[dict]:
    """The samples of one tar as dicts of member bytes (`__key__`, `jpg`, `json`, ...). A truncated or
    unreadable tar (or one with fewer samples than the manifest's `expected`) yields what it could and counts
    one bad read."""
    errors: list[BaseException] = []
    count = 0

    def handler(error: BaseException) -> bool:
        errors.append(error)
        return False  # stop this tar: what follows a broken header cannot be trusted

    try:
        with open(path, "rb") as stream:
            files = ({**f, "__url__": str(path)} for f in tar_file_iterator(stream, handler=handler))
            count = 0
            for sample in group_by_keys(files, handler=handler):
                count += 1
                yield sample
    except (OSError, ValueError) as error:
        errors.append(error)
    if not errors and expected is not None and count < expected:
        errors.append(ValueError(f"truncated: {count} of {expected} samples"))
    if errors:
        bad.failed(str(path), errors[0])
