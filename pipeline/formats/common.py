"""Checks and file readers shared by the AGPIL, PIAD and LASO readers.

A failed check raises BadRecord(code, detail); the format reader turns it into a Rejection whose
reason is "<code>: <detail>". Codes are the fixed vocabulary in CODES.

Hostile files cost bounded memory and time: a file is refused (`too_large`) from its size before a byte of it
is parsed when it is larger than any valid file of its kind, so what a record costs is set by the limits below,
whatever lies on disk; listed paths must stay inside the root after symlinks are resolved.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
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
    "too_large",
    "parse_error",
)
POINT_COLUMNS = 22  # shape id, object class, x y z, 17 affordance probabilities
# Top folders of the raw layout: a listed path with an unknown prefix is retried from one of these.
LAYOUT_FOLDERS = ("Img", "Point", "Description", "Box")

# Size limits, each far above any real file of its kind and small enough that a worker reading it cannot
# exhaust memory. Real point lines are ~165 bytes (22 numbers of ~9 characters and a 32-character shape id).
POINT_LINE_BYTES = 512
IMAGE_MAX_BYTES = 32 << 20
IMAGE_MAX_PIXELS = 40_000_000  # a decoded RGB image of this size is 120 MB
ANNOTATION_MAX_BYTES = 16 << 20  # LabelMe JSONs may embed their image as base64
FLOAT32_MAX = float(np.finfo(np.float32).max)  # values beyond it become inf in the float32 arrays stored


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
        check_inside_root(root, path, name, "")
    except BadRecord as e:  # a list is every record it names: an error, not a quarantine line
        raise ValueError(str(e).strip()) from None
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
    prefix (docs/original.md §8 q4). A path under the root must also stay under it once symlinks are resolved
    (check_inside_root): a link planted in the tree cannot point a reader at files elsewhere.
    """
    path = Path(listed)
    if path.is_absolute():
        check_inside_root(root, path, listed, origin)
        return path
    joined = Path(os.path.normpath(root / path))
    root_norm = os.path.normpath(root.absolute())
    if os.path.commonpath([root_norm, os.path.normpath(joined.absolute())]) != root_norm:
        raise BadRecord("path_escape", f"{listed} resolves outside the dataset root {root} {origin}")
    if not joined.exists():
        parts = path.parts
        for i in range(len(parts) - 1, 0, -1):
            if parts[i] in LAYOUT_FOLDERS and ".." not in parts[i:] and (root / Path(*parts[i:])).exists():
                joined = root / Path(*parts[i:])
                break
    check_inside_root(root, joined, listed, origin)
    return joined


def check_inside_root(root: Path, path: Path, listed: str, origin: str) -> None:
    """A path lying under root must resolve (symlinks followed) under root's real path; path_escape otherwise.

    Absolute list entries outside the root are the user's explicit choice and are not checked.
    """
    root_abs = os.path.normpath(root.absolute())
    path_abs = os.path.normpath(path.absolute())
    if os.path.commonpath([root_abs, path_abs]) != root_abs:
        return
    root_real, real = os.path.realpath(root_abs), os.path.realpath(path_abs)
    if os.path.commonpath([root_real, real]) != root_real:
        detail = f"{listed} is a symlink resolving to {real}, outside the dataset root {root} {origin}"
        raise BadRecord("path_escape", detail)


def read_bytes(path: Path, origin: str, limit: int, what: str) -> bytes:
    """A regular file's bytes; too_large, from its size and before reading it, when it is over `limit` bytes.

    `what` says what the limit is for (e.g. "an image"). At most the file's size + 1 bytes are ever read: a file
    changing size meanwhile is unreadable_file; FIFOs and devices are refused without blocking on them.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadRecord("missing_file", f"{path} does not exist {origin}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the listed path
        raise BadRecord(
            "unreadable_file", f"{path} cannot be read {origin}: {getattr(e, 'strerror', None) or e}"
        ) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise BadRecord("unreadable_file", f"{path} cannot be read {origin}: Is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise BadRecord("unreadable_file", f"{path} cannot be read {origin}: not a regular file")
        if info.st_size > limit:
            detail = f"{path} is {info.st_size} bytes, over the {limit}-byte limit for {what} {origin}"
            raise BadRecord("too_large", detail)
        with open(fd, "rb", closefd=False) as f:
            data = f.read(info.st_size + 1)  # read(n) allocates n bytes up front: never more than the file
    except OSError as e:
        raise BadRecord("unreadable_file", f"{path} cannot be read {origin}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) != info.st_size:
        raise BadRecord("unreadable_file", f"{path} changed size while being read {origin}")
    return data


def read_text(path: Path, origin: str, limit: int, what: str) -> str:
    data = read_bytes(path, origin, limit, what)
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


def check_image(data: bytes, path: Path, origin: str) -> dict[str, Any]:
    """Fully decode (not just verify) an image; returns width, height, mode and format.

    The size in the header is checked before decoding: a small file can claim a huge canvas."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > IMAGE_MAX_PIXELS:
                detail = f"{path} is {image.width}x{image.height}, over the {IMAGE_MAX_PIXELS}-pixel limit {origin}"
                raise BadRecord("too_large", detail)
            image.load()
            return {"width": image.width, "height": image.height, "mode": image.mode, "format": image.format}
    except BadRecord:
        raise
    except Image.UnidentifiedImageError:
        raise BadRecord("bad_image", f"{path} is not in a recognised image format {origin}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on bad data
        raise BadRecord("bad_image", f"{path} cannot be decoded {origin}: {e}") from None


def read_json(path: Path, origin: str) -> Any:
    """An annotation JSON (at most ANNOTATION_MAX_BYTES). Nesting too deep for the parser is bad_json."""
    text = read_text(path, origin, ANNOTATION_MAX_BYTES, "an annotation JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRecord("bad_json", f"{path} line {e.lineno} column {e.colno}: {e.msg} {origin}") from None
    except RecursionError:
        raise BadRecord("bad_json", f"{path} is nested too deep to parse {origin}") from None


def finite_rows(values: np.ndarray) -> np.ndarray:
    """Per row: every value finite and inside float32's range (1e39 is finite in float64, inf in float32)."""
    rows = values.reshape(len(values), -1)
    with np.errstate(invalid="ignore"):
        return (np.isfinite(rows) & (np.abs(rows) <= FLOAT32_MAX)).all(axis=1)


def check_values(values: np.ndarray, labels_from: int, row: Callable[[int], str], origin: str) -> None:
    """All values finite in float32 and columns from `labels_from` on in [0, 1]; `row(i)` names row i."""
    rows = values.reshape(len(values), -1)
    bad = ~finite_rows(rows)
    if bad.any():
        raise BadRecord("non_finite", f"{row(int(np.argmax(bad)))}: NaN, inf or beyond float32's range {origin}")
    labels = rows[:, labels_from:]
    bad = ((labels < 0) | (labels > 1)).any(axis=1)
    if bad.any():
        raise BadRecord("label_range", f"{row(int(np.argmax(bad)))}: label outside [0, 1] {origin}")
