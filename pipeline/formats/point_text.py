"""Point clouds as text: one point a line, `shape_id object x y z` and 17 affordance columns (AGPIL, PIAD), or
`x y z` (predict's plain files).

Every line is checked (column count, numbers, finite values) and a bad one is named by its line and column. A
clean file is parsed in one vectorised pass (`np.loadtxt` over the number columns, ~2x faster than a Python
`float()` per token); anything that pass does not accept — a character outside plain ASCII numbers and
spaces, a line with the wrong number of columns — is parsed again line by line, which finds the bad token or
reads what `float()` alone reads (`1_000`, non-ASCII digits). Either way the values are `float()`'s: loadtxt
converts a token with the same correctly rounded conversion (tests/test_point_text.py checks the bits).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipeline.formats.common import POINT_COLUMNS, POINT_LINE_BYTES, BadRecord, check_values, read_text

_HEAD_COLUMNS = 2
"""Shape id and object class: the text columns before the numbers of a POINT_COLUMNS line."""
_NUMBER_BYTES = b"0123456789.+-eEnNaAiIfFtTyY \t\n"
"""Every byte the vectorised pass accepts in the number columns: digits, sign, point, exponent, the letters of
nan / inf / infinity, and the two separators (space, tab) on which np.loadtxt and str.split agree."""


def read_point_lines(path: Path, max_points: int, origin: str, lenient: bool = False) -> list[tuple[int, str]]:
    """The non-blank lines of a point file as (1-based line, text), within limits checked before parsing.

    A file over `max_points` lines of POINT_LINE_BYTES is refused (too_large) from its size, unread; one with
    more than `max_points` non-blank lines (bad_point_count) before any line is split into tokens. So the
    memory and time a point file costs are bounded by `max_points`, whatever its size. `lenient` (predict's
    plain files) drops `#` comments and reads commas as spaces.
    """
    limit = max_points * POINT_LINE_BYTES
    text = read_text(path, origin, limit, f"{max_points} points of at most {POINT_LINE_BYTES} bytes a line")
    lines = enumerate(text.splitlines(), 1)
    if lenient:
        lines = ((n, line.split("#", 1)[0].replace(",", " ")) for n, line in lines)
    rows = [(n, line) for n, line in lines if line.strip()]
    if len(rows) > max_points:
        raise BadRecord("bad_point_count", f"{path} has {len(rows)} points, more than {max_points} {origin}")
    return rows


def parse_point_rows(
    rows: list[tuple[int, str]], width: int, numbers: slice, path: Path, origin: str
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Point lines of `width` columns (bad_columns otherwise) -> (first two tokens of each line when width is
    POINT_COLUMNS: shape id and object, else []; float64 [N, C] of the `numbers` columns). A non-number is
    bad_columns naming its line and column."""
    parsed = _parse_vectorised(rows, width, numbers)
    return parsed if parsed is not None else _parse_by_line(rows, width, numbers, path, origin)


def _parse_vectorised(
    rows: list[tuple[int, str]], width: int, numbers: slice
) -> tuple[list[tuple[str, str]], np.ndarray] | None:
    """parse_point_rows of a file whose number columns are all plain ASCII numbers, `width` columns on every
    line; None for any other file (and for a `numbers` slice reaching into the text columns)."""
    heads = _HEAD_COLUMNS if width == POINT_COLUMNS else 0
    columns = np.arange(width)[numbers]
    if not rows or (len(columns) and columns.min() < heads):
        return None
    names: list[tuple[str, str]] = []
    if heads:
        try:
            names, rests = _split_heads(rows)
        except ValueError:  # a line of two tokens or fewer
            return None
        text = "\n".join(rests)
    else:
        text = "\n".join([line for _, line in rows])
    if not text.isascii() or text.encode().translate(None, _NUMBER_BYTES):
        return None
    try:
        block = np.loadtxt(io.StringIO(text), dtype=np.float64, comments=None, ndmin=2)
    except ValueError:  # a token that is not a number, or a line with another number of columns
        return None
    if block.shape != (len(rows), width - heads):
        return None
    return names, block[:, columns - heads]


def _split_heads(rows: list[tuple[int, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """(shape id, object) of each line and the rest of it; ValueError for a line without a rest."""
    names, rests = [], []
    for _, line in rows:
        shape_id, obj, rest = line.split(None, _HEAD_COLUMNS)
        names.append((shape_id, obj))
        rests.append(rest)
    return names, rests


def _parse_by_line(
    rows: list[tuple[int, str]], width: int, numbers: slice, path: Path, origin: str
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """parse_point_rows one line at a time (no token list of the whole file): the first bad line or token raises
    bad_columns naming it."""
    heads: list[tuple[str, str]] = []
    count = len(range(width)[numbers])
    values = np.empty((len(rows), count), dtype=np.float64)
    for i, (n, line) in enumerate(rows):
        tokens = line.split()
        if len(tokens) != width:
            raise BadRecord("bad_columns", f"{path} line {n}: {len(tokens)} columns, expected {width} {origin}")
        if width == POINT_COLUMNS:
            heads.append((tokens[0], tokens[1]))
        try:
            values[i] = [float(t) for t in tokens[numbers]]
        except ValueError:
            first = numbers.start or 0
            for c, t in enumerate(tokens[numbers], first + 1):
                _number(t, path, n, c, origin)
    return heads, values


def read_labelled_points(path: Path, num_points: int, origin: str) -> tuple[str, str, np.ndarray, np.ndarray]:
    """A point file: (shape id, object column, xyz [N,3] float32, labels [N,17] float32), all lines checked."""
    rows = read_point_lines(path, num_points, origin)
    if len(rows) != num_points:
        raise BadRecord("bad_point_count", f"{path} has {len(rows)} points, expected {num_points} {origin}")
    heads, values = parse_point_rows(rows, POINT_COLUMNS, slice(2, None), path, origin)
    check_values(values, 3, lambda i: f"{path} line {rows[i][0]}", origin)
    shape_id, obj = heads[0]
    if len({column for _, column in heads}) > 1:
        n, column = next((n, column) for (n, _), (_, column) in zip(rows, heads) if column != obj)
        raise BadRecord("mismatch", f"{path} line {n}: object column {column!r} != {obj!r} of line 1 {origin}")
    return shape_id, obj, values[:, :3].astype(np.float32), values[:, 3:].astype(np.float32)


def _number(token: str, path: Path, line: int, column: int, origin: str) -> float:
    try:
        return float(token)
    except ValueError:
        detail = f"{path} line {line}: {token!r} is not a number (column {column}) {origin}"
        raise BadRecord("bad_columns", detail) from None
