"""Checks and file readers shared by the AGPIL, PIAD and LASO readers.

A failed check raises BadRecord(code, detail); the format reader turns it into a Rejection whose
reason is "<code>: <detail>". Codes are the fixed vocabulary in CODES.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipeline.names import AFFORDANCE_INDEX, OBJECTS, SPLITS

CODES: tuple[str, ...] = (
    "missing_file",
    "unreadable_file",
    "bad_image",
    "bad_columns",
    "bad_point_count",
    "non_finite",
    "label_range",
    "unknown_object",
    "unknown_affordance",
    "bad_name",
    "path_escape",
    "empty_instruction",
    "bad_json",
    "mismatch",
)
POINT_COLUMNS = 22  # shape id, object class, x y z, 17 affordance probabilities
# Top folders of the raw layout: a listed path with an unknown prefix is retried from one of these.
LAYOUT_FOLDERS = ("Img", "Point", "Description", "Box")


class BadRecord(Exception):
    """A raw record failed a check; `code` is one of CODES."""

    def __init__(self, code: str, detail: str):
        assert code in CODES, code
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


# ---------------------------------------------------------------- list files and paths


def require_root(root: str | Path) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset root {path} does not exist or is not a folder")
    return path


def read_list(root: Path, name: str) -> list[tuple[int, str]]:
    """Non-blank entries of a list file as (1-based line, path text)."""
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} is missing")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"list file {path} cannot be read: {e}") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_aligned(root: Path, names: tuple[str, ...]) -> list[list[tuple[int, str]]]:
    """List files that are aligned by entry index; different lengths are an immediate ValueError."""
    lists = [read_list(root, name) for name in names]
    for name, entries in zip(names[1:], lists[1:]):
        if len(entries) != len(lists[0]):
            raise ValueError(
                f"list files {root / names[0]} ({len(lists[0])} entries) and {root / name} "
                f"({len(entries)} entries) must be aligned line by line but differ in length"
            )
    return lists


def where(list_name: str, line: int) -> str:
    return f"({list_name} line {line})"


def resolve(root: Path, listed: str, origin: str) -> Path:
    """The file a list entry names: absolute as is, relative under root (never outside it).

    If a relative path does not exist but contains a layout folder (Img/, Point/, Description/,
    Box/), the part from that folder on is tried under root: released lists may carry an unknown
    prefix (spec §8 q4).
    """
    path = Path(listed)
    if path.is_absolute():
        return path
    joined = Path(os.path.normpath(root / path))
    root_norm = os.path.normpath(root.absolute())
    if os.path.commonpath([root_norm, os.path.normpath(joined.absolute())]) != root_norm:
        raise BadRecord("path_escape", f"{listed} resolves outside the dataset root {root} {origin}")
    if not joined.exists():
        parts = path.parts
        for i in range(len(parts) - 1, 0, -1):
            if parts[i] in LAYOUT_FOLDERS and ".." not in parts[i:] and (root / Path(*parts[i:])).exists():
                return root / Path(*parts[i:])
    return joined


def read_bytes(path: Path, origin: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadRecord("missing_file", f"{path} does not exist {origin}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the listed path
        raise BadRecord(
            "unreadable_file", f"{path} cannot be read {origin}: {getattr(e, 'strerror', None) or e}"
        ) from None


def read_text(path: Path, origin: str) -> str:
    data = read_bytes(path, origin)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord("unreadable_file", f"{path} is not UTF-8 text {origin}: {e.reason} at byte {e.start}") from None


# ---------------------------------------------------------------- file names


class ImageName(NamedTuple):
    split: str
    object: str
    affordance: str
    n: str


class PointName(NamedTuple):
    split: str
    object: str
    n: str


_IMAGE_NAME = re.compile(r"^Img_([A-Za-z]+)_([A-Za-z0-9-]+)_([A-Za-z0-9-]+)_(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
_POINT_NAME = re.compile(r"^Point_([A-Za-z]+)_([A-Za-z0-9-]+)_(\d+)\.txt$")


def match_image_name(path: Path) -> ImageName | None:
    m = _IMAGE_NAME.match(path.name)
    return ImageName(*m.groups()) if m else None


def match_point_name(path: Path) -> PointName | None:
    m = _POINT_NAME.match(path.name)
    return PointName(*m.groups()) if m else None


def fallback_key(split: str, list_name: str, line: int) -> str:
    """Key of a record whose file name is too broken to name it: `<Split>_<ListStem>_line<n>`."""
    stem = re.sub(r"[^A-Za-z0-9-]", "", Path(list_name).stem)
    return f"{SPLITS.get(split, split)}_{stem}_line{line}"


def check_image_name(name: ImageName | None, path: Path, split: str, origin: str) -> ImageName:
    """`Img_<Split>_<Object>_<affordance>_<n>.jpg`, split as listed, folders (when under Img/) agreeing."""
    if name is None:
        raise BadRecord("bad_name", f"{path.name} is not Img_<Split>_<Object>_<affordance>_<n>.jpg {origin}")
    _check_split(name.split, path, split, origin)
    parents = path.parents
    if len(path.parts) >= 5 and parents[3].name == "Img":
        folders = (parents[2].name, parents[1].name, parents[0].name)
        if folders != (name.split, name.object, name.affordance):
            raise BadRecord("bad_name", f"{path} lies in folder {'/'.join(folders)}, its name says otherwise {origin}")
    check_object(name.object, path, origin)
    if name.affordance not in AFFORDANCE_INDEX:
        detail = f"{name.affordance!r} in {path.name} is not one of the 17 affordances {origin}"
        raise BadRecord("unknown_affordance", detail)
    return name


def check_point_name(name: PointName | None, path: Path, split: str, origin: str) -> PointName:
    """`Point_<Split>_<Object>_<n>.txt`, split as listed, folders (when under Point/) agreeing."""
    if name is None:
        raise BadRecord("bad_name", f"{path.name} is not Point_<Split>_<Object>_<n>.txt {origin}")
    _check_split(name.split, path, split, origin)
    parents = path.parents
    if len(path.parts) >= 4 and parents[2].name == "Point":
        folders = (parents[1].name, parents[0].name)
        if folders != (name.split, name.object):
            raise BadRecord("bad_name", f"{path} lies in folder {'/'.join(folders)}, its name says otherwise {origin}")
    check_object(name.object, path, origin)
    return name


def _check_split(found: str, path: Path, split: str, origin: str) -> None:
    if found != SPLITS[split]:
        raise BadRecord("bad_name", f"{path.name} names split {found!r} but is listed for {SPLITS[split]} {origin}")


def check_object(obj: str, path: Path | str, origin: str) -> None:
    if obj not in OBJECTS:
        raise BadRecord("unknown_object", f"{obj!r} in {Path(path).name} is not one of the 23 objects {origin}")


# ---------------------------------------------------------------- contents


def decode_image(data: bytes, path: Path, origin: str) -> dict[str, Any]:
    """Fully decode (not just verify) an image; returns width, height, mode and format."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return {"width": image.width, "height": image.height, "mode": image.mode, "format": image.format}
    except Image.UnidentifiedImageError:
        raise BadRecord("bad_image", f"{path} is not in a recognised image format {origin}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on bad data
        raise BadRecord("bad_image", f"{path} cannot be decoded {origin}: {e}") from None


def read_json(path: Path, origin: str) -> Any:
    text = read_text(path, origin)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRecord("bad_json", f"{path} line {e.lineno} column {e.colno}: {e.msg} {origin}") from None


def read_points(path: Path, num_points: int, origin: str) -> tuple[str, str, np.ndarray, np.ndarray]:
    """A point file: (shape id, object column, xyz [N,3] float32, labels [N,17] float32), all lines checked."""
    numbered = [(n, line.split()) for n, line in enumerate(read_text(path, origin).splitlines(), 1) if line.strip()]
    if len(numbered) != num_points:
        raise BadRecord("bad_point_count", f"{path} has {len(numbered)} points, expected {num_points} {origin}")
    for n, tokens in numbered:
        if len(tokens) != POINT_COLUMNS:
            raise BadRecord("bad_columns", f"{path} line {n}: {len(tokens)} columns, expected {POINT_COLUMNS} {origin}")
    try:
        values = np.array([tokens[2:] for _, tokens in numbered], dtype=np.float64)
    except ValueError:  # find the offending token to name it
        values = np.array([[_number(t, path, n, c, origin) for c, t in enumerate(tk[2:], 3)] for n, tk in numbered])
    check_values(values, 3, lambda i: f"{path} line {numbered[i][0]}", origin)
    shape_id, obj = numbered[0][1][0], numbered[0][1][1]
    for n, tokens in numbered:
        if tokens[1] != obj:
            raise BadRecord("mismatch", f"{path} line {n}: object column {tokens[1]!r} != {obj!r} of line 1 {origin}")
    return shape_id, obj, values[:, :3].astype(np.float32), values[:, 3:].astype(np.float32)


def _number(token: str, path: Path, line: int, column: int, origin: str) -> float:
    try:
        return float(token)
    except ValueError:
        detail = f"{path} line {line} column {column}: {token!r} is not a number {origin}"
        raise BadRecord("bad_columns", detail) from None


def check_values(values: np.ndarray, labels_from: int, row: Callable[[int], str], origin: str) -> None:
    """All values finite and columns from `labels_from` on in [0, 1]; `row(i)` names row i in the message."""
    rows = values.reshape(len(values), -1)
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise BadRecord("non_finite", f"{row(int(np.argmax(bad)))}: NaN or inf value {origin}")
    labels = rows[:, labels_from:]
    bad = ((labels < 0) | (labels > 1)).any(axis=1)
    if bad.any():
        raise BadRecord("label_range", f"{row(int(np.argmax(bad)))}: label outside [0, 1] {origin}")
