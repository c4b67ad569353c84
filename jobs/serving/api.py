"""The HTTP API's request bodies -> PredictRequest, or BadRequest with one line saying what is wrong.

POST /predict takes either JSON
    {"image": "<base64 image bytes>", "points": [[x, y, z], ...] | "<base64 .npy>", "instruction": "..."}
or multipart/form-data with an `image` file, a `points` file (.txt / .npy / .ply, read by pipeline.pointfiles)
and an `instruction` field. Either may add `return_points` (true / 1) to get the parsed points back (the page
plots them). Every size is bounded before it is paid for (jobs/serving/bounds.py): nothing here unpickles, an .npy
is read from its checked header. No Ray or web framework here.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs.serving.batch_predict import BadInput, read_points
from jobs.serving.bounds import OutOfBounds, check_json_outline, json_points
from pipeline.pointfiles import MAX_POINTS, SUFFIXES, PointFileError, npy_points, read_point_file

FIELDS = ("image", "points", "instruction")
TRUE = ("1", "true", "yes", "on")


class BadRequest(ValueError):
    """A request the server refuses with 400; str() is the one-line reason."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


@dataclass
class Upload:
    """A file part of a multipart body."""

    filename: str
    data: bytes


@dataclass
class PredictRequest:
    image: bytes
    points: np.ndarray
    """[M,3] float32, finite."""
    instruction: str
    return_points: bool = False


def one_line(message: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", str(message)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_json(body: bytes, max_points: int = MAX_POINTS) -> PredictRequest:
    """A JSON body; its depth, rows and values are counted before it is parsed (jobs.serving.bounds) and its
    points checked to be numbers before they are converted."""
    try:
        check_json_outline(body, max_points)
        data = json.loads(body)
    except OutOfBounds as e:
        raise BadRequest(str(e)) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, an int over 4300 digits
        raise BadRequest(f"body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body must be a JSON object with {', '.join(FIELDS)}, got {type(data).__name__}")
    missing = [k for k in FIELDS if k not in data]
    if missing:
        raise BadRequest(f"missing key(s) {', '.join(missing)} (expected {', '.join(FIELDS)})")
    if not isinstance(data["image"], str):
        raise BadRequest("image: expected a base64 string of the image file's bytes")
    image = _base64(data["image"], "image")
    points = data["points"]
    try:
        if isinstance(points, str):
            xyz = npy_points(_base64(points, "points"), "points", "a request")
        elif isinstance(points, list):
            xyz = json_points(points)
        else:
            raise BadRequest("points: expected a list of [x, y, z] or a base64 .npy string")
    except (OutOfBounds, PointFileError) as e:
        raise BadRequest(str(e)) from None
    return PredictRequest(image, _checked(xyz), _instruction(data["instruction"]), _flag(data.get("return_points")))


def parse_form(fields: Mapping[str, Any]) -> PredictRequest:
    """`fields`: name -> Upload (file part) or str (plain field), as the app reads them from the form."""
    missing = [k for k in FIELDS if k not in fields]
    if missing:
        raise BadRequest(f"missing form field(s) {', '.join(missing)} (expected {', '.join(FIELDS)})")
    image, points = fields["image"], fields["points"]
    if not isinstance(image, Upload):
        raise BadRequest("image: expected a file part")
    if not isinstance(points, Upload):
        raise BadRequest(f"points: expected a file part ({', '.join(SUFFIXES)})")
    instruction = fields["instruction"]
    if isinstance(instruction, Upload):
        instruction = instruction.data.decode("utf-8", "replace")
    flag = fields.get("return_points")
    return PredictRequest(image.data, _point_file(points), _instruction(instruction), _flag(flag))


def _instruction(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest("instruction: expected a string")
    if not value.strip():
        raise BadRequest("instruction: empty")
    return value  # as given: `lma3d predict` does not strip it either


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str | int) and str(value).lower() in TRUE)


def _base64(text: str, key: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{key}: not valid base64 ({e})") from None


def _point_file(upload: Upload) -> np.ndarray:
    name = Path(upload.filename or "points").name
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise BadRequest(f"points file {name!r}: unsupported type {suffix or '(none)'}; use {', '.join(SUFFIXES)}")
    with tempfile.TemporaryDirectory(prefix="lma3d-serve-") as tmp:
        path = Path(tmp) / re.sub(r"[^A-Za-z0-9._-]", "_", name)
        path.write_bytes(upload.data)
        try:
            xyz = read_point_file(path)
        except PointFileError as e:
            raise BadRequest(str(e).replace(str(path), f"points file {name!r}")) from None
    return _checked(xyz)


def _checked(xyz: np.ndarray) -> np.ndarray:
    try:
        return read_points(xyz)  # shape [N,3], every value finite
    except BadInput as e:
        raise BadRequest(str(e)) from None
