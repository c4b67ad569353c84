"""Test helpers: write tiny valid AGPIL / PIAD / LASO raw trees in a folder, and break them on purpose.

    tree = write_agpil(tmp_path / "raw", objects=("Bag", "Chair"), n_train_images=4, num_points=32)
    corrupt(tree.files["points_train"][0], "nan")          # -> a non_finite rejection
    tree.expected_keys["points"]                             # keys the reader must produce

Every tree is deterministic for a given seed. Point labels are in [0, 1] and every cloud has points
with label >= 0.5 in its object's affordance columns, so test GT is never empty.
"""

from __future__ import annotations

import csv
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.names import AFFORDANCE_INDEX, image_key, point_key

# Affordances each test object is drawn with (the first ones are used first).
AFFORDANCES_OF: dict[str, tuple[str, ...]] = {
    "Bag": ("grasp", "lift", "contain", "open"),
    "Chair": ("sit", "move", "support"),
    "Mug": ("wrapgrasp", "grasp", "contain", "pour"),
    "Knife": ("grasp", "cut", "stab"),
}
DEFAULT_OBJECTS = ("Bag", "Chair", "Mug")


@dataclass
class RawTree:
    """What a writer produced: where, which list files, which data files, which keys a reader must yield."""

    root: Path
    format: str
    num_points: int
    lists: dict[str, Path] = field(default_factory=dict)  # "Img_Train" -> list file (LASO: "anno_train" -> pickle)
    # image_train / annotation_train / points_train / image_test / points_test / annotation_test (LASO: none)
    files: dict[str, list[Path]] = field(default_factory=dict)
    expected_keys: dict[str, list[str]] = field(default_factory=dict)  # kind -> keys, in list order

    @property
    def n_records(self) -> int:
        return sum(len(keys) for keys in self.expected_keys.values())


def affordances_for(obj: str) -> tuple[str, ...]:
    return AFFORDANCES_OF.get(obj, ("grasp",))


def write_jpeg(path: Path, size: tuple[int, int] = (32, 24), seed: int = 0) -> Path:
    """A small valid RGB JPEG (a colour gradient, so it is not trivially compressible)."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random(3) * 200 + np.linspace(0, 55, size[0])[None, :, None]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.broadcast_to(pixels, (size[1], size[0], 3)).copy()).save(path, "JPEG", quality=90)
    return path


def point_cloud(obj: str, num_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """xyz [N,3] in [-1,1] and labels [N,17]: the object's affordance columns get a blob of high values."""
    xyz = rng.uniform(-1, 1, size=(num_points, 3)).astype(np.float32)
    labels = np.zeros((num_points, 17), np.float32)
    for affordance in affordances_for(obj):
        centre = xyz[rng.integers(num_points)]
        labels[:, AFFORDANCE_INDEX[affordance]] = np.exp(-np.sum((xyz - centre) ** 2, axis=1) / 0.5)
    return xyz, labels


def write_point_file(path: Path, obj: str, num_points: int, rng: np.random.Generator) -> Path:
    """`shape_id Object x y z a0..a16`, one point per line."""
    xyz, labels = point_cloud(obj, num_points, rng)
    shape_id = f"{rng.integers(2**63):016x}"
    lines = [f"{shape_id} {obj} " + " ".join(f"{v:.6f}" for v in row) for row in np.hstack([xyz, labels])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_agpil(root: Path, **kwargs) -> RawTree:
    """AGPIL tree: Img/Point/Description folders and the six list files. See write_image_point_tree."""
    return write_image_point_tree(root, "agpil", **kwargs)


def write_piad(root: Path, **kwargs) -> RawTree:
    """PIAD tree: Img/Point/Box (LabelMe JSON) folders and the six list files. See write_image_point_tree."""
    return write_image_point_tree(root, "piad", **kwargs)


def write_image_point_tree(
    root: Path,
    fmt: str,
    objects: tuple[str, ...] = DEFAULT_OBJECTS,
    n_train_images: int = 6,
    points_per_object: int = 3,
    n_test: int = 4,
    num_points: int = 2048,
    seed: int = 0,
    absolute: bool = False,
) -> RawTree:
    """Train images i = 0.. cycle through `objects` (affordances from AFFORDANCES_OF), `points_per_object`
    train clouds per object (grouped in `objects` order, numbered 1..), `n_test` test triplets; list
    entries relative to root unless `absolute`. Image sizes are 32x24, test images 40x30."""
    annotation = {"agpil": "Description", "piad": "Box"}[fmt]
    rng = np.random.default_rng(seed)
    tree = RawTree(Path(root), fmt, num_points)
    entries: dict[str, list[Path]] = {}

    def add(list_name: str, kind: str, path: Path) -> None:
        entries.setdefault(list_name, []).append(path)
        tree.files.setdefault(kind, []).append(path)

    for split, count in (("Train", n_train_images), ("Test", n_test)):
        for i in range(count):
            obj = objects[i % len(objects)]
            affordance = affordances_for(obj)[(i // len(objects)) % len(affordances_for(obj))]
            n = i + 1
            folder = f"{split}/{obj}/{affordance}"
            stem = f"{split}_{obj}_{affordance}_{n}"
            size = (32, 24) if split == "Train" else (40, 30)
            add(f"Img_{split}", f"image_{split.lower()}", write_jpeg(root / f"Img/{folder}/Img_{stem}.jpg", size, i))
            ann_path = root / f"{annotation}/{folder}/{annotation}_{stem}.json"
            if fmt == "piad":
                ann_path = root / f"Box/{folder}/Img_{stem}.json"  # PIAD names boxes after their image
            _write_annotation(ann_path, fmt, obj, affordance, size)
            add(f"{annotation}_{split}", f"annotation_{split.lower()}", ann_path)
            if split == "Test":
                cloud = root / f"Point/Test/{obj}/Point_Test_{obj}_{n}.txt"
                add("Point_Test", "points_test", write_point_file(cloud, obj, num_points, rng))
                tree.expected_keys.setdefault("triplet", []).append(image_key("test", obj, affordance, n))
            else:
                tree.expected_keys.setdefault("image", []).append(image_key("train", obj, affordance, n))
    for obj in objects:
        for n in range(1, points_per_object + 1):
            cloud = root / f"Point/Train/{obj}/Point_Train_{obj}_{n}.txt"
            add("Point_Train", "points_train", write_point_file(cloud, obj, num_points, rng))
            tree.expected_keys.setdefault("points", []).append(point_key("train", obj, n))
    for list_name in (f"{kind}_{split}" for split in ("Train", "Test") for kind in ("Img", annotation, "Point")):
        paths = entries.get(list_name, [])
        text = "".join(f"{p if absolute else p.relative_to(root)}\n" for p in paths)
        tree.lists[list_name] = root / f"{list_name}.txt"
        tree.lists[list_name].write_text(text)
    return tree


def _write_annotation(path: Path, fmt: str, obj: str, affordance: str, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "agpil":
        content: dict = {"Description": f"Show me where to {affordance} the {obj.lower()}."}
    else:
        w, h = size
        content = {
            "shapes": [
                {"label": "subject", "points": [[w * 0.6, h * 0.5], [w * 0.1, h * 0.1]], "shape_type": "rectangle"},
                {"label": "object", "points": [[w * 0.2, h * 0.3], [w * 0.9, h * 0.9]], "shape_type": "rectangle"},
            ],
            "imageWidth": w,
            "imageHeight": h,
        }
    path.write_text(json.dumps(content))


def write_laso(
    root: Path,
    objects: tuple[str, ...] = DEFAULT_OBJECTS,
    per_split: dict[str, int] | None = None,
    num_points: int = 2048,
    seed: int = 0,
    protocol: int = 4,
) -> RawTree:
    """LASO tree: anno_/objects_{train,val,test}.pkl and Affordance-Question.csv. Classes are spelled in
    lower case and wrapgrasp as `wrap_grasp`, as LASO does. Annotation i of a split uses object
    objects[i % len] and shape `<split>-<object>-<i // (2 * len(objects))>`: annotations i and
    i + len(objects) share a shape (with different affordances), as LASO annotates one shape many times."""
    per_split = per_split or {"train": 4, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tree = RawTree(root, "laso", num_points)
    tree.expected_keys["triplet"] = []
    for split in ("train", "val", "test"):
        annotations, shapes, shape_labels = [], {}, {}
        for i in range(per_split.get(split, 0)):
            obj = objects[i % len(objects)]
            affordance = affordances_for(obj)[(i // len(objects)) % len(affordances_for(obj))]
            shape_id = f"{split}-{obj.lower()}-{i // (2 * len(objects))}"
            if shape_id not in shapes:
                shapes[shape_id], shape_labels[shape_id] = point_cloud(obj, num_points, rng)
            mask = shape_labels[shape_id][:, AFFORDANCE_INDEX[affordance]].copy()
            spelled = "wrap_grasp" if affordance == "wrapgrasp" else affordance
            annotations.append({"shape_id": shape_id, "class": obj.lower(), "affordance": spelled, "mask": mask})
            tree.expected_keys["triplet"].append(image_key(split, obj, affordance, i))
        for kind, content in (("anno", annotations), ("objects", shapes)):
            tree.lists[f"{kind}_{split}"] = root / f"{kind}_{split}.pkl"
            tree.lists[f"{kind}_{split}"].write_bytes(pickle.dumps(content, protocol=protocol))
    tree.lists["questions"] = root / "Affordance-Question.csv"
    with open(tree.lists["questions"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Object", "Affordance", *(f"Question{i}" for i in range(15))])
        for obj in objects:
            for affordance in affordances_for(obj):
                spelled = "wrap_grasp" if affordance == "wrapgrasp" else affordance
                writer.writerow([obj.lower(), spelled, *(f"Q{i}: where to {spelled} the {obj}?" for i in range(15))])
    return tree


# ---------------------------------------------------------------- breaking trees on purpose

CORRUPTIONS = (
    "delete",  # missing_file
    "directory",  # the file becomes a folder: unreadable_file
    "binary",  # non-UTF-8 bytes: unreadable_file for text files, bad_image for images
    "truncate",  # first half of the bytes: bad_image (JPEG), bad_point_count (point file)
    "truncate_tail",  # all but the last 20 bytes: a JPEG that opens and verifies but does not decode (bad_image)
    "drop_column",  # point file line `line` loses its last value: bad_columns
    "non_numeric",  # point file line `line` x = "abc": bad_columns
    "nan",  # point file line `line` x = nan: non_finite
    "label_range",  # point file line `line` first label = 1.5: label_range
    "extra_line",  # point file gets one more point: bad_point_count
    "object_column",  # every line's object column says Knife: mismatch
    "bad_json",  # unparsable JSON: bad_json
    "no_description",  # {"text": ...}: empty_instruction
    "empty_description",  # {"Description": "  "}: empty_instruction
    "no_object_box",  # LabelMe JSON with a subject box only: bad_json
)


def corrupt(path: Path, how: str, line: int = 5) -> None:
    """Break one raw file in place; `how` is one of CORRUPTIONS (the comment says what a reader reports)."""
    path = Path(path)
    if how == "delete":
        path.unlink()
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    elif how in ("truncate", "truncate_tail"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if how == "truncate" else data[:-20])
    elif how in ("drop_column", "non_numeric", "nan", "label_range", "extra_line", "object_column"):
        lines = path.read_text().splitlines()
        tokens = lines[line - 1].split()
        if how == "drop_column":
            tokens = tokens[:-1]
        elif how in ("non_numeric", "nan"):
            tokens[2] = "abc" if how == "non_numeric" else "nan"
        elif how == "label_range":
            tokens[5] = "1.5"
        lines[line - 1] = " ".join(tokens)
        if how == "extra_line":
            lines.append(lines[0])
        if how == "object_column":
            lines = [" ".join([t[0], "Knife", *t[2:]]) for t in (ln.split() for ln in lines)]
        path.write_text("\n".join(lines) + "\n")
    elif how == "bad_json":
        path.write_text('{"Description": "unterminated')
    elif how == "no_description":
        path.write_text(json.dumps({"text": "grasp the bag"}))
    elif how == "empty_description":
        path.write_text(json.dumps({"Description": "  "}))
    elif how == "no_object_box":
        path.write_text(json.dumps({"shapes": [{"label": "subject", "points": [[1, 2], [3, 4]]}]}))
    else:
        raise ValueError(f"unknown corruption {how!r}; choose from {', '.join(CORRUPTIONS)}")


def set_list_entry(list_file: Path, index: int, text: str) -> None:
    """Replace the `index`-th (0-based) entry of a list file by `text` (e.g. a renamed or escaping path)."""
    lines = Path(list_file).read_text().splitlines()
    lines[index] = text
    Path(list_file).write_text("\n".join(lines) + "\n")


def move_listed(tree: RawTree, list_name: str, index: int, new_relative: str) -> Path:
    """Move the file of entry `index` of a list to `new_relative` (under root) and update the list."""
    old = Path(tree.root / Path(tree.lists[list_name].read_text().splitlines()[index]))
    new = tree.root / new_relative
    new.parent.mkdir(parents=True, exist_ok=True)
    old.rename(new)
    set_list_entry(tree.lists[list_name], index, new_relative)
    return new


def edit_laso(tree: RawTree, split: str, index: int, drop: tuple[str, ...] = (), **fields: object) -> None:
    """Change (or drop) fields of annotation `index` of anno_{split}.pkl: edit_laso(t, "train", 0, class_="sofa")."""
    path = tree.lists[f"anno_{split}"]
    annotations = pickle.loads(path.read_bytes())  # our own file, written above
    entry = annotations[index]
    entry.update({k.rstrip("_"): v for k, v in fields.items()})
    for name in drop:
        entry.pop(name)
    path.write_bytes(pickle.dumps(annotations, protocol=4))


def edit_laso_shape(tree: RawTree, split: str, shape_id: str, xyz: np.ndarray | None) -> None:
    """Replace a shape's xyz in objects_{split}.pkl, or delete the shape when xyz is None."""
    path = tree.lists[f"objects_{split}"]
    shapes = pickle.loads(path.read_bytes())
    if xyz is None:
        del shapes[shape_id]
    else:
        shapes[shape_id] = xyz
    path.write_bytes(pickle.dumps(shapes, protocol=4))
