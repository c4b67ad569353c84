"""PIAD (IAGNet): AGPIL's layout with LabelMe box JSONs in place of descriptions (docs/original.md §2.6).

Lists Img/Point/Box_{Train,Test}.txt. Boxes go to Record.extra["boxes"] as
{"subject": [x0, y0, x1, y1], "object": [x0, y0, x1, y1]} in image pixels (corners sorted). As in
IAGNet, a missing subject box is [0, 0, 0, 0] and the last rectangle of a label wins; an image
without an object box is rejected (bad_json). PIAD has no text, so the instruction is a template:
"Where would you <verb> this <object>?" (wrapgrasp reads "wrap your hand around").
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from pipeline.formats import RawItem
from pipeline.formats.agpil import item_key, list_image_point_items, parse_image_point_item
from pipeline.formats.common import FLOAT32_MAX, BadRecord, ImageName, read_json
from pipeline.record import Record

FORMAT = "piad"
ANNOTATION = "Box"
BOX_LABELS = ("subject", "object")
VERBS: dict[str, str] = {"wrapgrasp": "wrap your hand around"}

__all__ = ["FORMAT", "instruction", "item_key", "list_items", "parse_item", "read_boxes"]


def list_items(root: Path) -> list[RawItem]:
    return list_image_point_items(root, FORMAT, ANNOTATION)


def parse_item(root: Path, item: RawItem, num_points: int) -> Record:
    return parse_image_point_item(root, item, num_points, read_boxes)


def instruction(obj: str, affordance: str) -> str:
    """The fixed PIAD instruction, e.g. "Where would you wrap your hand around this trash can?"."""
    noun = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", obj).lower()
    return f"Where would you {VERBS.get(affordance, affordance)} this {noun}?"


def read_boxes(path: Path, origin: str, image: ImageName) -> tuple[str, dict[str, Any]]:
    """A LabelMe JSON's subject/object rectangles, and the template instruction."""
    content = read_json(path, origin)
    shapes = content.get("shapes") if isinstance(content, dict) else None
    if not isinstance(shapes, list):
        raise BadRecord("bad_json", f"{path} is not a LabelMe JSON (no 'shapes' list) {origin}")
    boxes: dict[str, list[float]] = {}
    for i, shape in enumerate(shapes):
        label = shape.get("label") if isinstance(shape, dict) else None
        if label in BOX_LABELS:
            boxes[label] = _rectangle(shape.get("points"), path, i, origin)
    if "object" not in boxes:
        raise BadRecord("bad_json", f"{path} has no 'object' rectangle {origin}")
    boxes.setdefault("subject", [0.0, 0.0, 0.0, 0.0])
    return instruction(image.object, image.affordance), {"boxes": {label: boxes[label] for label in BOX_LABELS}}


def _rectangle(points: Any, path: Path, index: int, origin: str) -> list[float]:
    where = f"{path} shapes[{index}]"
    if not (isinstance(points, list) and len(points) == 2 and all(isinstance(p, list) and len(p) == 2 for p in points)):
        raise BadRecord("bad_json", f"{where}: 'points' must be two [x, y] corners {origin}")
    try:
        (xa, ya), (xb, yb) = ((float(x), float(y)) for x, y in points)
    except (TypeError, ValueError):
        raise BadRecord("bad_json", f"{where}: corner coordinates must be numbers {origin}") from None
    if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in (xa, ya, xb, yb)):
        raise BadRecord("non_finite", f"{where}: NaN, inf or beyond float32's range corner coordinate {origin}")
    return [min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)]
