"""LASO (PointRefer): annotation pickles, object point pickles and a question table (docs/original.md §2.6).

anno_{train,val,test}.pkl: list of {'shape_id', 'class', 'affordance', 'mask' (N,) float32};
objects_{split}.pkl: {shape_id: (N, 3) xyz}; Affordance-Question.csv: Object, Affordance,
Question0..Question14. One triplet Record (no image, labels = mask [N]) per annotation, keyed
`<Split>_<Object>_<affordance>_<annotation index>`. Pickles are loaded by a restricted unpickler
that admits only builtin containers/scalars and numpy arrays/dtypes/scalars, with a byte cap and an
allocation budget (pipeline/formats/safe_pickle.py).
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.formats import RawItem
from pipeline.formats.common import BadRecord, check_inside_root, check_values, fallback_key, require_root
from pipeline.formats.safe_pickle import UnsafePickleError, safe_load_pickle, safe_loads
from pipeline.names import LASO_AFFORDANCES, LASO_ALIASES, OBJECTS, image_key
from pipeline.record import Record

FORMAT = "laso"
SPLITS = ("train", "val", "test")
QUESTIONS = "Affordance-Question.csv"
QUESTION_COLUMNS = tuple(f"Question{i}" for i in range(15))
FIELDS = ("shape_id", "class", "affordance", "mask")
_OBJECT_BY_LOWER = {obj.lower(): obj for obj in OBJECTS}  # LASO spells classes in lower case ('door')
_SCALARS = (str, int, float, np.str_, np.integer, np.floating)

__all__ = ["UnsafePickleError", "item_key", "list_items", "parse_item", "safe_load_pickle", "safe_loads"]


def list_items(root: Path) -> list[RawItem]:
    """One item per annotation; the pickles and the question table are read once, here."""
    root = require_root(root)
    for name in (QUESTIONS, *(f"{kind}_{split}.pkl" for split in SPLITS for kind in ("anno", "objects"))):
        if not (root / name).is_file():
            raise FileNotFoundError(f"LASO file {root / name} is missing")
        try:
            check_inside_root(root, root / name, name, "")
        except BadRecord as e:  # the file holds every record of its split: an error, not a quarantine line
            raise ValueError(str(e).strip()) from None
    questions = read_questions(root / QUESTIONS)
    items: list[RawItem] = []
    for split in SPLITS:
        anno_name, objects_name = f"anno_{split}.pkl", f"objects_{split}.pkl"
        annotations = safe_load_pickle(root / anno_name)
        objects = safe_load_pickle(root / objects_name)
        if not isinstance(annotations, list):
            raise ValueError(f"{root / anno_name} holds a {type(annotations).__name__}, expected a list")
        if not isinstance(objects, dict):
            raise ValueError(f"{root / objects_name} holds a {type(objects).__name__}, expected a dict")
        arrays: dict[str, tuple[np.ndarray | None, str | None]] = {}
        for index, entry in enumerate(annotations):
            fields = {f: entry.get(f) for f in FIELDS} if isinstance(entry, dict) else dict.fromkeys(FIELDS)
            invalid = [f"{f} is a {type(v).__name__}" for f, v in fields.items() if f != "mask" and not _scalar(v)]
            for f in FIELDS[:3]:  # str() of a deeply nested structure recurses: keep only what is a scalar
                fields[f] = fields[f] if _scalar(fields[f]) else f"<{type(fields[f]).__name__}>"
            fields["mask"], problem = _as_array(fields["mask"], f"{anno_name} entry {index} mask")
            shape_id = str(fields["shape_id"])
            if shape_id not in arrays:
                arrays[shape_id] = _as_array(objects.get(shape_id), f"{objects_name}[{shape_id!r}]")
            xyz, xyz_problem = arrays[shape_id]
            payload = {
                **fields,
                "missing": [f for f in FIELDS if not isinstance(entry, dict) or f not in entry],
                "invalid": "; ".join(invalid + [x for x in (problem, xyz_problem) if x]),
                "xyz": xyz,
                "questions": questions.get((str(fields["class"]).lower(), _affordance(fields["affordance"]))),
                "lists": (anno_name, objects_name, QUESTIONS),
            }
            items.append(RawItem(FORMAT, split, "triplet", index, (anno_name, objects_name, QUESTIONS), payload))
    return items


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, _SCALARS)


def _as_array(value: Any, what: str) -> tuple[np.ndarray | None, str | None]:
    """(float32 array, None), (None, None) for a missing value, or (None, problem) when it is no numeric array.

    Converted here, once per value, so a hostile structure (nested 100,000 deep) never travels further."""
    if value is None:
        return None, None
    try:
        with np.errstate(over="ignore"):  # 1e39 becomes inf here and non_finite in parse_item
            return np.asarray(value, dtype=np.float32), None
    except Exception:  # noqa: BLE001 - TypeError, ValueError, RecursionError, OverflowError...
        return None, f"{what} is not a numeric array"


def read_questions(path: Path) -> dict[tuple[str, str], list[str]]:
    """(object lower-cased, affordance) -> the 15 questions."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("Object", "Affordance", *QUESTION_COLUMNS) if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}")
            return {
                (row["Object"].strip().lower(), _affordance(row["Affordance"].strip())): [
                    (row[c] or "").strip() for c in QUESTION_COLUMNS
                ]
                for row in reader
            }
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} cannot be read as a CSV table: {e}") from None


def _affordance(name: Any) -> str:
    return LASO_ALIASES.get(str(name), str(name))


def item_key(root: Path, item: RawItem) -> str:
    if item.payload["missing"]:
        return fallback_key(item.split, item.paths[0], item.line)
    obj = _OBJECT_BY_LOWER.get(str(item.payload["class"]).lower(), str(item.payload["class"]))
    try:
        return image_key(item.split, obj, _affordance(item.payload["affordance"]), item.line)
    except ValueError:  # a class/affordance that cannot be a key part
        return fallback_key(item.split, item.paths[0], item.line)


def question_index(split: str, key: str) -> int:
    """Question0 for val/test; for train a fixed pick among Question1..14 (the original draws at random)."""
    return 0 if split != "train" else 1 + zlib.crc32(key.encode()) % 14


def parse_item(root: Path, item: RawItem, num_points: int) -> Record:
    p = item.payload
    anno_name, objects_name = item.paths[0], item.paths[1]
    origin = f"({anno_name} entry {item.line})"
    if p["missing"]:
        raise BadRecord("bad_columns", f"{anno_name} entry {item.line} lacks {', '.join(p['missing'])}")
    if p["invalid"]:
        raise BadRecord("bad_columns", f"{anno_name} entry {item.line}: {p['invalid']} {origin}")
    obj = _OBJECT_BY_LOWER.get(str(p["class"]).lower())
    if obj is None:
        raise BadRecord("unknown_object", f"class {p['class']!r} is not one of the 23 objects {origin}")
    affordance = _affordance(p["affordance"])
    if affordance not in LASO_AFFORDANCES:
        raise BadRecord("unknown_affordance", f"{p['affordance']!r} is not one of the 18 LASO affordances {origin}")
    if p["xyz"] is None:
        raise BadRecord("mismatch", f"shape_id {p['shape_id']!r} is not in {objects_name} {origin}")
    xyz = _array(p["xyz"], f"{objects_name}[{p['shape_id']!r}]", origin)
    mask = _array(p["mask"], f"{anno_name} entry {item.line} mask", origin)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise BadRecord("bad_columns", f"{objects_name}[{p['shape_id']!r}] has shape {xyz.shape}, expected (N, 3)")
    if mask.ndim != 1:
        raise BadRecord("bad_columns", f"mask has shape {mask.shape}, expected ({num_points},) {origin}")
    for what, values in (("points", xyz), ("mask values", mask)):
        if len(values) != num_points:
            raise BadRecord("bad_point_count", f"{len(values)} {what}, expected {num_points} {origin}")
    check_values(xyz, 3, lambda i: f"{objects_name}[{p['shape_id']!r}] point {i}", origin)
    check_values(mask, 0, lambda i: f"mask point {i}", origin)
    key = image_key(item.split, obj, affordance, item.line)
    questions = p["questions"]
    if questions is None:
        detail = f"{QUESTIONS} has no row for {p['class']!r} / {p['affordance']!r} {origin}"
        raise BadRecord("empty_instruction", detail)
    chosen = question_index(item.split, key)
    if not questions[chosen]:
        raise BadRecord("empty_instruction", f"{QUESTIONS} Question{chosen} of {obj} / {affordance} is empty {origin}")
    sources = tuple(str(root / name) for name in item.paths)
    return Record(
        key, item.split, obj, affordance, None, xyz, mask, questions[chosen], sources,
        shape_id=str(p["shape_id"]), extra={"questions": list(questions), "question_index": chosen},
    )  # fmt: skip


def _array(value: Any, what: str, origin: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadRecord("bad_columns", f"{what} is not a numeric array {origin}") from None
