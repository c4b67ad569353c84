"""AGPIL (LMAffordance3D): list files of images, point files and description JSONs (docs/original.md §2.3-2.5).

Train: line i of Img_Train.txt and Description_Train.txt -> one image Record; each Point_Train.txt
line -> one point Record (labels [N,17]). Test: line i of Img_Test, Point_Test and Description_Test
-> one triplet Record. PIAD shares everything but the annotation file (pipeline/formats/piad.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.formats import RawItem
from pipeline.formats.common import (
    IMAGE_MAX_BYTES,
    BadRecord,
    ImageName,
    PointName,
    check_image,
    check_image_name,
    check_point_name,
    fallback_key,
    match_image_name,
    match_point_name,
    read_aligned,
    read_bytes,
    read_json,
    read_list,
    resolve,
    where,
)
from pipeline.formats.point_text import read_labelled_points
from pipeline.names import image_key, point_key
from pipeline.record import Record

FORMAT = "agpil"
ANNOTATION = "Description"  # the list/folder name of the per-image annotation file

# (path, origin, image name) -> (instruction, extra fields): reads the annotation file of an image.
Annotate = Callable[[Path, str, ImageName], tuple[str, dict[str, Any]]]


def list_files(annotation: str) -> tuple[str, ...]:
    return tuple(f"{kind}_{split}.txt" for split in ("Train", "Test") for kind in ("Img", annotation, "Point"))


def list_items(root: Path) -> list[RawItem]:
    return list_image_point_items(root, FORMAT, ANNOTATION)


def list_image_point_items(root: Path, fmt: str, annotation: str) -> list[RawItem]:
    """Train image items (Img + annotation lists aligned), train point items, test triplet items."""
    train_lists = ("Img_Train.txt", f"{annotation}_Train.txt")
    test_lists = ("Img_Test.txt", "Point_Test.txt", f"{annotation}_Test.txt")
    for name in list_files(annotation):  # every list must exist before any work starts
        if not (root / name).is_file():
            raise FileNotFoundError(f"list file {root / name} is missing")
    items: list[RawItem] = []
    for entries in zip(*read_aligned(root, train_lists)):
        items.append(_item(fmt, "train", "image", train_lists, entries))
    for entry in read_list(root, "Point_Train.txt"):
        items.append(_item(fmt, "train", "points", ("Point_Train.txt",), (entry,)))
    for entries in zip(*read_aligned(root, test_lists)):
        items.append(_item(fmt, "test", "triplet", test_lists, entries))
    return items


def _item(fmt: str, split: str, kind: str, lists: tuple[str, ...], entries: tuple[tuple[int, str], ...]) -> RawItem:
    lines = tuple(line for line, _ in entries)
    paths = tuple(path for _, path in entries)
    return RawItem(fmt, split, kind, lines[0], paths, {"lists": lists, "lines": lines})


def item_key(root: Path, item: RawItem) -> str:
    """The record key from the first file's name, or `<Split>_<List>_line<n>` when the name is broken."""
    first = Path(item.paths[0])
    if item.kind == "points":
        point = match_point_name(first)
        if point is not None:
            return point_key(item.split, point.object, point.n)
    else:
        image = match_image_name(first)
        if image is not None:
            return image_key(item.split, image.object, image.affordance, image.n)
    return fallback_key(item.split, item.payload["lists"][0], item.line)


def parse_item(root: Path, item: RawItem, num_points: int) -> Record:
    return parse_image_point_item(root, item, num_points, read_description)


def parse_image_point_item(root: Path, item: RawItem, num_points: int, annotate: Annotate) -> Record:
    """One image / points / triplet item of AGPIL or PIAD; raises BadRecord on the first failed check."""
    key = item_key(root, item)
    origins = [where(name, line) for name, line in zip(item.payload["lists"], item.payload["lines"])]
    paths = [resolve(root, listed, origin) for listed, origin in zip(item.paths, origins)]
    sources = tuple(str(p) for p in paths)
    if item.kind == "points":
        point = check_point_name(match_point_name(paths[0]), paths[0], item.split, origins[0])
        shape_id, xyz, labels = _load_cloud(paths[0], point, num_points, origins[0])
        return Record(key, item.split, point.object, None, None, xyz, labels, None, sources, shape_id=shape_id)
    image = check_image_name(match_image_name(paths[0]), paths[0], item.split, origins[0])
    if item.kind == "image":
        data, info = _load_image(paths[0], origins[0])
        instruction, extra = annotate(paths[1], origins[1], image)
        return Record(
            key, item.split, image.object, image.affordance, data, None, None, instruction, sources,
            extra={"image": info, **extra},
        )  # fmt: skip
    point = check_point_name(match_point_name(paths[1]), paths[1], item.split, origins[1])
    if point.object != image.object:
        raise BadRecord(
            "mismatch", f"test image {paths[0].name} shows {image.object} but point file {paths[1].name} is "
            f"{point.object} {origins[0]}",
        )  # fmt: skip
    data, info = _load_image(paths[0], origins[0])
    shape_id, xyz, labels = _load_cloud(paths[1], point, num_points, origins[1])
    instruction, extra = annotate(paths[2], origins[2], image)
    return Record(
        key, item.split, image.object, image.affordance, data, xyz, labels, instruction, sources,
        shape_id=shape_id, extra={"image": info, **extra},
    )  # fmt: skip


def _load_image(path: Path, origin: str) -> tuple[bytes, dict[str, Any]]:
    data = read_bytes(path, origin, IMAGE_MAX_BYTES, "an image")
    return data, check_image(data, path, origin)


def _load_cloud(path: Path, name: PointName, num_points: int, origin: str) -> tuple[str, np.ndarray, np.ndarray]:
    shape_id, obj, xyz, labels = read_labelled_points(path, num_points, origin)
    if obj != name.object:
        detail = f"{path} line 1: object column {obj!r} but the file name says {name.object!r} {origin}"
        raise BadRecord("mismatch", detail)
    return shape_id, xyz, labels


def read_description(path: Path, origin: str, image: ImageName) -> tuple[str, dict[str, Any]]:
    """`{"Description": "..."}`: the instruction. The listed path is trusted as is (docs/data-formats.md)."""
    content = read_json(path, origin)
    if not isinstance(content, dict):
        raise BadRecord("bad_json", f"{path} holds a JSON {type(content).__name__}, expected an object {origin}")
    text = content.get("Description")
    if not isinstance(text, str) or not text.strip():
        problem = "has no 'Description' key" if "Description" not in content else "has an empty 'Description'"
        raise BadRecord("empty_instruction", f"{path} {problem} {origin}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON can spell lone surrogates (\ud800), which no UTF-8 writer accepts
        raise BadRecord("bad_json", f"{path}: 'Description' holds {e.object[e.start]!r}, not text {origin}") from None
    return text.strip(), {}
