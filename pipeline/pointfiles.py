"""Point clouds for `lma3d predict`: read .txt / .npy / .ply files, resample to the model's point count, map back.

Accepted files:
- `.txt`: the AGPIL/PIAD 22-column lines (`shape_id object x y z a0 … a16`) or plain `x y z` lines
  (whitespace or comma separated, `#` comments allowed);
- `.npy`: a float array [N,3] (never unpickled);
- `.ply`: `format ascii 1.0` or `binary_little_endian 1.0` / `binary_big_endian 1.0`, a `vertex` element with
  x, y, z properties (others ignored; elements after `vertex`, such as faces, are not read).
Any point count up to MAX_POINTS (500,000) works; a file larger than that many points can be is refused from its
size, before parsing, with the shard reader's limits (pipeline/formats/common.py). Clouds are resampled to the
model's count by farthest-point sampling (padded with repeats when smaller), and a prediction comes back to every
input point from its nearest sampled point.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.formats.common import (
    POINT_COLUMNS,
    BadRecord,
    finite_rows,
    read_bytes,
)
from pipeline.formats.point_text import parse_point_rows, read_point_lines
from pipeline.geometry import farthest_point_indices

SUFFIXES = (".txt", ".npy", ".ply")
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_NEAREST_CHUNK = 4096
# The most points a predict file may hold: memory and time stay bounded (a .txt is refused over
# MAX_POINTS x POINT_LINE_BYTES bytes before parsing; .npy / .ply over MAX_POINTS x 3 float64 or the PLY limit).
MAX_POINTS = 500_000
_PLY_MAX_BYTES = MAX_POINTS * 64


class PointFileError(ValueError):
    """A point file that cannot be used; the message names the file (and line or element) and the problem."""


class Resampled(NamedTuple):
    xyz: np.ndarray
    """[n,3] float32: the points the model sees."""
    nearest: np.ndarray
    """[N] int64: for every input point, the index of its nearest point in `xyz`."""


def read_point_file(path: str | Path) -> np.ndarray:
    """xyz [N,3] float32 of a .txt, .npy or .ply point file; PointFileError when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise PointFileError(f"{path}: no such point file")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        xyz = _read_txt(path)
    elif suffix == ".npy":
        xyz = _read_npy(path)
    elif suffix == ".ply":
        xyz = _read_ply(path)
    else:
        raise PointFileError(f"{path}: unsupported point file type {suffix or '(none)'}; use {', '.join(SUFFIXES)}")
    if len(xyz) == 0:
        raise PointFileError(f"{path}: no points")
    if len(xyz) > MAX_POINTS:
        raise PointFileError(f"{path}: {len(xyz)} points, more than the {MAX_POINTS} a point file may hold")
    bad = ~finite_rows(xyz)
    if bad.any():
        raise PointFileError(f"{path}: point {int(np.argmax(bad))} has a NaN, infinite or beyond-float32 coordinate")
    if np.ptp(xyz, axis=0).max() == 0:
        raise PointFileError(f"{path}: all {len(xyz)} points are identical")
    return xyz.astype(np.float32, copy=False)


def _read_txt(path: Path) -> np.ndarray:
    """Through the shard reader's point-line functions, so the same size and row limits hold before parsing."""
    try:
        rows = read_point_lines(path, MAX_POINTS, "", lenient=True)
        if not rows:
            return np.empty((0, 3))
        width = len(rows[0][1].split())
        if width not in (3, POINT_COLUMNS):
            raise PointFileError(
                f"{path} line {rows[0][0]}: {width} columns; expected 3 (x y z) or {POINT_COLUMNS} "
                "(AGPIL/PIAD: shape_id object x y z and 17 affordance columns)"
            )
        _, xyz = parse_point_rows(rows, width, slice(2, 5) if width == POINT_COLUMNS else slice(0, 3), path, "")
    except BadRecord as e:
        raise PointFileError(e.detail.strip()) from None
    return xyz


def _read_npy(path: Path) -> np.ndarray:
    limit = MAX_POINTS * 3 * 8 + 4096  # float64 data and the header
    try:
        data = read_bytes(path, "", limit, f"a .npy of {MAX_POINTS} points")
    except BadRecord as e:
        raise PointFileError(e.detail.strip()) from None
    return npy_points(data, str(path), "a point file")


def npy_points(data: bytes, where: str, holder: str) -> np.ndarray:
    """xyz [N,3] float64 of the bytes of an .npy file, its header checked before anything is allocated: numbers
    (no objects: nothing is unpickled), shape [N,3] with N <= MAX_POINTS, and shape x itemsize equal to the bytes
    that follow (np.load allocates what a header claims, 10^12 points included, before it reads). `where` names
    the input in messages, `holder` what may hold MAX_POINTS ("a point file", "a request")."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):  # what np.save writes for an array of numbers
            raise ValueError(f".npy format {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream)  # headers over 10,000 bytes are refused by numpy
    except (ValueError, TypeError, SyntaxError, EOFError) as e:
        raise PointFileError(f"{where}: not a readable .npy array ({e})") from None
    if dtype.hasobject:
        raise PointFileError(f"{where}: not a readable .npy array (it holds Python objects, which are never unpickled)")
    if dtype.kind not in "iuf":
        raise PointFileError(f"{where}: expected numbers, got dtype {dtype}")
    if len(shape) != 2 or shape[1] != 3:
        raise PointFileError(f"{where}: expected an array [N,3] of x y z, got shape {shape}")
    if shape[0] > MAX_POINTS:
        raise PointFileError(f"{where}: {shape[0]} points, more than the {MAX_POINTS} {holder} may hold")
    offset = stream.tell()
    declared = math.prod(shape) * dtype.itemsize
    if declared != len(data) - offset:
        raise PointFileError(
            f"{where}: header claims shape {shape} {dtype}: {declared} bytes, the data holds {len(data) - offset}"
        )
    array = np.frombuffer(data, dtype, math.prod(shape), offset).reshape(shape, order="F" if fortran else "C")
    return array.astype(np.float64)


def _read_ply(path: Path) -> np.ndarray:
    try:
        data = read_bytes(path, "", _PLY_MAX_BYTES, f"a PLY of {MAX_POINTS} points")
    except BadRecord as e:
        raise PointFileError(e.detail.strip()) from None
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise PointFileError(f"{path}: not a PLY file (no 'ply' magic or no end_header)")
    body_start = data.index(b"\n", end) + 1 if b"\n" in data[end:] else len(data)
    try:
        header = data[:end].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise PointFileError(f"{path}: PLY header is not ASCII") from None
    fmt, elements = None, []  # elements: [name, count, [(property, type) | (property, "list")]]
    for n, line in enumerate(header, 1):
        words = line.split()
        if not words or words[0] in ("ply", "comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append([words[1], int(words[2]), []])
        elif words[0] == "property" and elements and len(words) >= 3:
            kind = "list" if words[1] == "list" else _PLY_TYPES.get(words[1])
            if kind is None:
                raise PointFileError(f"{path} header line {n}: unknown PLY property type {words[1]!r}")
            elements[-1][2].append((words[-1], kind))
        else:
            raise PointFileError(f"{path} header line {n}: cannot parse {line!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise PointFileError(f"{path}: unsupported PLY format {fmt!r}")
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise PointFileError(f"{path}: PLY has no vertex element")
    index = names.index("vertex")
    _, count, props = elements[index]
    prop_names = [p for p, _ in props]
    missing = [c for c in "xyz" if c not in prop_names]
    if missing:
        raise PointFileError(f"{path}: PLY vertex element lacks propert{'ies' if len(missing) > 1 else 'y'} {missing}")
    if any(kind == "list" for _, kind in props):
        raise PointFileError(f"{path}: PLY vertex element has list properties (unsupported)")
    if fmt == "ascii":
        return _ply_ascii(path, data[body_start:], elements[:index], count, prop_names)
    if any(e[1] and any(kind == "list" for _, kind in e[2]) for e in elements[:index]):
        raise PointFileError(f"{path}: binary PLY with a list element before the vertices (unsupported)")
    order = "<" if fmt == "binary_little_endian" else ">"
    skip = sum(e[1] * sum(np.dtype(kind).itemsize for _, kind in e[2]) for e in elements[:index])
    dtype = np.dtype([(p, order + kind) for p, kind in props])
    body = data[body_start + skip :]
    if len(body) < count * dtype.itemsize:
        got = len(body) // dtype.itemsize
        raise PointFileError(f"{path}: PLY is truncated: {got} of {count} vertices present")
    vertices = np.frombuffer(body, dtype=dtype, count=count)
    return np.stack([vertices[c].astype(np.float64) for c in "xyz"], axis=1)


def _ply_ascii(path: Path, body: bytes, before: list, count: int, prop_names: list[str]) -> np.ndarray:
    lines = body.decode("ascii", errors="replace").splitlines()
    start = sum(e[1] for e in before)
    rows = lines[start : start + count]
    if len(rows) < count:
        raise PointFileError(f"{path}: PLY is truncated: {len(rows)} of {count} vertices present")
    columns = [prop_names.index(c) for c in "xyz"]
    out = np.empty((count, 3), dtype=np.float64)
    for i, line in enumerate(rows):
        tokens = line.split()
        if len(tokens) != len(prop_names):
            raise PointFileError(f"{path}: PLY vertex {i}: {len(tokens)} values, expected {len(prop_names)}")
        try:
            out[i] = [float(tokens[c]) for c in columns]
        except ValueError:
            raise PointFileError(f"{path}: PLY vertex {i}: {line.strip()!r} is not numeric") from None
    return out


def resample(xyz: np.ndarray, n: int, seed: int = 0) -> Resampled:
    """Exactly `n` points of `xyz` (FPS when more, all plus seeded repeats when fewer) and the map back."""
    count = len(xyz)
    if count == n:
        return Resampled(xyz.astype(np.float32), np.arange(n, dtype=np.int64))
    if count > n:
        index = farthest_point_indices(xyz.astype(np.float64), n)
    else:
        extra = np.random.default_rng(seed).choice(count, n - count, replace=True)
        index = np.concatenate([np.arange(count), extra])
    sampled = xyz[index]
    return Resampled(sampled.astype(np.float32), nearest_indices(xyz, sampled))


def nearest_indices(points: np.ndarray, references: np.ndarray) -> np.ndarray:
    """For each of `points` [N,3], the index of its nearest row of `references` [M,3] (chunked, numpy only)."""
    refs = references.astype(np.float64)
    ref_sq = (refs**2).sum(1)
    out = np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), _NEAREST_CHUNK):
        chunk = points[start : start + _NEAREST_CHUNK].astype(np.float64)
        d2 = (chunk**2).sum(1, keepdims=True) - 2 * chunk @ refs.T + ref_sq
        out[start : start + len(chunk)] = d2.argmin(1)
    return out
