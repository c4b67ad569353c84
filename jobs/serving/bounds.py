"""What one request to `lma3d serve` (or one image of `lma3d predict`) may cost, each bound decided before the cost
is paid (issue 32). No Ray, no web framework: the registered pyfunc's prediction path imports this too.

- A JSON body is outlined before it is parsed: with its strings blanked (one linear regex pass), the nesting depth,
  the [x, y, z] rows and the values json.loads would build are counted with numpy, a megabyte at a time. A body
  nested deeper than the API (3 levels), with more rows than MAX_POINTS or more values than MAX_POINTS rows can
  hold is refused unparsed, so parsing costs at most a fixed multiple of MAX_POINTS.
- Points given as JSON are numbers: a string, a boolean, null or a list where a coordinate belongs is refused
  (np.asarray would turn "0.5" and true into numbers), and so is a value beyond float32's range.
- An image is refused from its header when the bytes it decodes to (pixels x the bytes a pixel of its mode takes as
  PIL holds it, for each copy made of it) are over IMAGE_MAX_DECODED_BYTES: a 13000^2 1-bit PNG is a few KB and
  decodes to 169 MB a copy. A JPEG cut short and closed with an end marker, which libjpeg fills with grey without
  a word, is found by decoding it once more with filler bytes before the marker: the decoder only reads them when
  its picture data ran out.
"""

from __future__ import annotations

import io
import re
import reprlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.formats.common import finite_rows
from pipeline.pointfiles import MAX_POINTS

if TYPE_CHECKING:
    from PIL.Image import Image

JSON_MAX_DEPTH = 3
"""{"points": [[x, y, z], ...]}: the deepest value of the API."""
ROW_DEPTH = 3
"""The depth of the containers that are rows of points."""
IMAGE_MAX_DECODED_BYTES = 512 << 20
"""A 40-megapixel RGB JPEG (the shard reader's pixel limit) takes 320 MB as decoded and checked."""
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
"""What `lma3d predict` reads (its image suffixes); PIL is not asked to guess among its other formats."""
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
"""Bytes a pixel takes as PIL holds it decoded; every other mode (RGB included) takes 4."""
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?')  # possessive: linear, an unterminated string included
_CHUNK = 1 << 20
_EOI = b"\xff\xd9"
_FILLER = b"\x55" * 16  # not what libjpeg fills a cut with (zeros), and no marker byte (0xFF)
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlist = 40, 40, 40, 4


class OutOfBounds(ValueError):
    """An input past a bound; str() is one line naming the field and the bound."""


def short(value: Any) -> str:
    """repr(value) cut to a few dozen characters (a 5000-digit integer or a long string stays one short line)."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an int too long for str()
        return f"<an integer of about {value.bit_length() * 0.30103:.0f} digits>"


@dataclass(frozen=True)
class Outline:
    depth: int
    """The deepest nesting of the document."""
    rows: int
    """Containers at ROW_DEPTH: the [x, y, z] rows of `points`, the only value of the API that deep."""
    values: int
    """Commas and containers: at least the number of values json.loads would build, less one."""


def json_outline(body: bytes) -> Outline:
    """Count what `body` would build if parsed, without parsing it. Exact for valid JSON; for invalid JSON exact up
    to the first error, which is as far as json.loads gets, so a bound that holds here holds for the parse."""
    text = _STRING.sub(b'""', body)  # brackets, commas and quotes inside strings are text, not structure
    depth = rows = values = level = 0
    for start in range(0, len(text), _CHUNK):
        chunk = np.frombuffer(text, np.uint8, min(_CHUNK, len(text) - start), start)
        opens = (chunk == ord("[")) | (chunk == ord("{"))
        closes = (chunk == ord("]")) | (chunk == ord("}"))
        levels = np.cumsum(opens.astype(np.int64) - closes, dtype=np.int64) + level
        if len(levels):
            depth, level = max(depth, int(levels.max())), int(levels[-1])
        rows += int(np.count_nonzero(opens & (levels == ROW_DEPTH)))
        values += int(np.count_nonzero(opens)) + int(np.count_nonzero(chunk == ord(",")))
    return Outline(depth, rows, values)


def check_json_outline(body: bytes, max_points: int = MAX_POINTS) -> None:
    """OutOfBounds when `body` nests deeper than the API or holds more points or values than `max_points` allow."""
    outline = json_outline(body)
    if outline.depth > JSON_MAX_DEPTH:
        raise OutOfBounds(f"body: JSON nested {outline.depth} deep, deeper than the {JSON_MAX_DEPTH} levels of the API")
    if outline.rows > max_points:
        raise OutOfBounds(
            f"points: {outline.rows} points, more than the {max_points} a request may hold (counted before parsing)"
        )
    budget = 4 * max_points + 64  # a row is a list, three numbers and its comma; 64 for the other fields
    if outline.values > budget:
        raise OutOfBounds(
            f"body: {outline.values} JSON values, more than the {budget} a request of at most {max_points} points holds"
        )


def json_points(points: list) -> np.ndarray:
    """[N,3] float64 of parsed JSON rows; OutOfBounds naming the first row that is not three numbers in float32's
    range. Types are checked one by one, as np.asarray would convert strings and booleans."""
    if set(map(type, points)) - {list}:
        index = next(i for i, row in enumerate(points) if type(row) is not list)
        row = points[index]
        raise OutOfBounds(
            f"points: expected an array [N,3]: row {index} is {short(row)} ({type(row).__name__}), not [x, y, z]"
        )
    if any(len(row) != 3 for row in points):
        index = next(i for i, row in enumerate(points) if len(row) != 3)
        raise OutOfBounds(f"points: expected an array [N,3]: row {index} holds {len(points[index])} values")
    if set(map(type, (value for row in points for value in row))) - {int, float}:
        index, value = next((i, v) for i, row in enumerate(points) for v in row if type(v) not in (int, float))
        raise OutOfBounds(f"points: row {index} holds {short(value)} ({type(value).__name__}), not a number")
    try:
        xyz = np.array(points, dtype=np.float64).reshape(-1, 3)
    except OverflowError:  # an integer beyond float64
        index, value = next((i, v) for i, row in enumerate(points) for v in row if type(v) is int and abs(v) > 1e308)
        raise OutOfBounds(f"points: row {index} has a NaN or infinite value or one beyond float32's range "
                          f"({short(value)})") from None  # fmt: skip
    bad = ~finite_rows(xyz)
    if bad.any():
        index = int(np.argmax(bad))
        raise OutOfBounds(f"points: row {index} has a NaN or infinite value or one beyond float32's range "
                          f"({short(points[index])})")  # fmt: skip
    return xyz


def decoded_image(data: bytes, keep_shown: bool, limit: int = IMAGE_MAX_DECODED_BYTES) -> Image:
    """The RGB PIL image of image file bytes, decoded only when what its decoding costs (`keep_shown`: with a uint8
    copy of it kept) is within `limit` bytes; OutOfBounds when over a bound, cut short or undecodable."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise OutOfBounds(f"{e}") from None
    except Image.UnidentifiedImageError:
        raise OutOfBounds(f"not an image PIL can decode (none of {', '.join(IMAGE_FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise OutOfBounds(f"not an image PIL can decode ({type(e).__name__}: {e})") from None
    width, height = image.size
    mode_bytes = _MODE_BYTES.get(image.mode, 4)
    per_pixel = mode_bytes * (2 if image.format == "JPEG" else 1)  # a JPEG is decoded twice (the cut check)
    per_pixel += (4 if image.mode != "RGB" else 0) + (3 if keep_shown else 0)  # its RGB copy, the uint8 array
    cost = width * height * per_pixel
    if cost > limit:
        raise OutOfBounds(
            f"{width}x{height} {image.format} of mode {image.mode} decodes to {cost} bytes ({per_pixel} a pixel "
            f"with its copies), over the {limit}-byte limit"
        )
    try:
        image.load()
    except Exception as e:  # noqa: BLE001 - OSError("image file is truncated"), SyntaxError, ValueError, ...
        raise OutOfBounds(f"not an image PIL can decode ({type(e).__name__}: {e})") from None
    if image.format == "JPEG" and _jpeg_cut_short(data, image):
        raise OutOfBounds(
            "truncated JPEG: its picture data ends before the picture does (closed early by an end marker)"
        )
    # Not closed: closing a PIL image frees its pixels, and nothing here holds a file.
    return image if image.mode == "RGB" else image.convert("RGB")


def _jpeg_cut_short(data: bytes, decoded: Image) -> bool:
    """True when the decoder ran out of picture data: decoded with filler bytes before its end marker, the picture
    changes (libjpeg reads bytes before a marker only while MCUs remain, and fills what it lacks with zeros)."""
    from PIL import Image

    end = data.rfind(_EOI)
    if end < 0:
        return False  # PIL refuses a JPEG without its end marker as truncated itself
    try:
        with Image.open(io.BytesIO(data[:end] + _FILLER + data[end:]), formats=("JPEG",)) as probe:
            probe.load()
            if probe.size != decoded.size or probe.mode != decoded.mode:
                return True
            strip = max(1, (1 << 20) // max(1, decoded.width * 4))  # compare a megabyte at a time
            return any(
                probe.crop((0, y, probe.width, y + strip)).tobytes()
                != decoded.crop((0, y, decoded.width, y + strip)).tobytes()
                for y in range(0, decoded.height, strip)
            )
    except Exception:  # noqa: BLE001 - the filler made it undecodable: it was read as picture data
        return True
