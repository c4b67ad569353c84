"""Raw dataset readers: AGPIL, PIAD (IAGNet) and LASO (PointRefer) -> Record | Rejection.

Reading is two steps so a Ray Data job can parallelise it: `list_items` reads only the list files
(cheap) and returns small picklable RawItems; `parse_item` reads and checks one item's files and
returns a Record, or a Rejection for bad data (it never raises on bad data). `iter_records` does
both in order. A missing root or list file, or aligned lists of different lengths, are immediate
errors (FileNotFoundError / ValueError naming the files). See docs/data-formats.md.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.formats.common import CODES, BadRecord, fallback_key, require_root
from pipeline.record import Record, Rejection

FORMATS: tuple[str, ...] = ("agpil", "piad", "laso")
KINDS: tuple[str, ...] = ("image", "points", "triplet")

# Files whose presence identifies a format.
_MARKERS: dict[str, tuple[str, ...]] = {
    "agpil": ("Description_Train.txt", "Description_Test.txt"),
    "piad": ("Box_Train.txt", "Box_Test.txt"),
    "laso": ("anno_train.pkl", "anno_val.pkl", "anno_test.pkl"),
}


@dataclass(frozen=True)
class RawItem:
    """One small, picklable unit of parse work (one Ray task row)."""

    format: str
    split: str
    kind: str  # "image" | "points" | "triplet"
    line: int  # 1-based line in its (first) list file; the annotation index for LASO
    paths: tuple[str, ...]  # as listed: relative to root, or absolute
    payload: dict[str, Any] = field(default_factory=dict)  # format-specific (list names, LASO fields)

    def to_row(self) -> dict[str, Any]:
        """A flat Ray Data row: strings, an int, a list of strings and the payload as bytes."""
        return {
            "format": self.format,
            "split": self.split,
            "kind": self.kind,
            "line": self.line,
            "paths": list(self.paths),
            "payload": pickle.dumps(self.payload, protocol=4),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RawItem:
        from pipeline.formats.safe_pickle import safe_loads  # the payload goes through the restricted unpickler too

        return cls(
            format=str(row["format"]),
            split=str(row["split"]),
            kind=str(row["kind"]),
            line=int(row["line"]),
            paths=tuple(str(p) for p in row["paths"]),
            payload=safe_loads(bytes(row["payload"]), f"RawItem row {row['format']} {row['split']} {row['line']}"),
        )


def detect_format(root: str | Path) -> str:
    """The format of a raw root, from which list/pickle files it holds."""
    path = require_root(root)
    found = [fmt for fmt, markers in _MARKERS.items() if any((path / m).is_file() for m in markers)]
    if len(found) == 1:
        return found[0]
    if not found:
        wanted = "; ".join(f"{fmt}: {' or '.join(m)}" for fmt, m in _MARKERS.items())
        raise ValueError(f"cannot tell the format of {path}: none of the marker files exist ({wanted})")
    raise ValueError(f"{path} holds marker files of several formats ({', '.join(found)}); pass the format explicitly")


def _module(fmt: str) -> ModuleType:
    if fmt == "agpil":
        from pipeline.formats import agpil

        return agpil
    if fmt == "piad":
        from pipeline.formats import piad

        return piad
    if fmt == "laso":
        from pipeline.formats import laso

        return laso
    raise ValueError(f"format must be one of {', '.join(FORMATS)} or auto, got {fmt!r}")


def list_items(root: str | Path, fmt: str = "auto") -> list[RawItem]:
    """Every unit of parse work of a raw root (reads list files only; LASO: the pickles, once)."""
    path = require_root(root)
    fmt = detect_format(path) if fmt == "auto" else fmt
    return _module(fmt).list_items(path)


def parse_item(root: str | Path, item: RawItem, num_points: int = 2048) -> Record | Rejection:
    """Read and check one item: a Record, or a Rejection naming the code, file and line."""
    module = _module(item.format)
    root = Path(root)
    try:
        return module.parse_item(root, item, num_points)
    except BadRecord as e:
        reason = str(e)
    except Exception as e:  # noqa: BLE001 - whatever a parser raises on one record must not end the job
        reason = unexpected_reason(e, item.paths)
    try:
        key = module.item_key(root, item)
    except Exception:  # noqa: BLE001 - a payload too broken to name the record
        key = fallback_key(item.split, item.format, item.line)
    return Rejection(key=key, split=item.split, sources=item.paths, reason=reason)


def unexpected_reason(error: BaseException, paths: tuple[str, ...] | list[str]) -> str:
    """The quarantine reason of an exception no check anticipated: `parse_error: <files>: <type>: <message>`."""
    message = str(error)[:300] or "(no message)"
    if isinstance(error, MemoryError):
        message = "ran out of memory"
    elif isinstance(error, RecursionError):
        message = "nested too deep"
    return f"parse_error: {', '.join(paths)}: {type(error).__name__}: {message}"


def item_key(root: str | Path, item: RawItem) -> str:
    """The key a record of `item` gets (from its file names, before any file is read)."""
    return _module(item.format).item_key(Path(root), item)


def iter_records(root: str | Path, fmt: str = "auto", num_points: int = 2048) -> Iterator[Record | Rejection]:
    """list_items then parse_item, in list order."""
    for item in list_items(root, fmt):
        yield parse_item(root, item, num_points)


__all__ = [
    "CODES", "FORMATS", "KINDS", "RawItem", "detect_format", "item_key", "iter_records", "list_items", "parse_item",
    "unexpected_reason",
]  # fmt: skip
