"""`lma3d predict` and the registered model's predict: image file + point file + instruction -> heat map files.

Inputs are checked one by one and every problem is a `BadInput` naming the file and what is wrong; batch mode
reports each bad item on one line and goes on with the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.inference import predict_batch
from jobs.viz import render_png, write_ply
from model.config import ModelConfig
from pipeline.formats.common import IMAGE_MAX_BYTES, BadRecord, finite_rows, read_bytes
from pipeline.pointfiles import MAX_POINTS, PointFileError, read_point_file, resample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
POINT_SUFFIXES = (".txt", ".npy", ".ply")
INSTRUCTION_SUFFIX = ".instruction.txt"


class BadInput(ValueError):
    """An input that cannot be predicted; the message names the file or line."""


@dataclass
class Item:
    name: str
    image: str | Path | bytes
    points: str | Path | np.ndarray
    instruction: str


@dataclass
class HeatMap:
    name: str
    xyz: np.ndarray
    """[M,3] the input points."""
    values: np.ndarray
    """[M] float32 affordance per input point."""
    sampled_xyz: np.ndarray
    """[N,3] the points the model saw."""
    sampled_values: np.ndarray
    image: np.ndarray
    """uint8 [H,W,3] as given (for the render)."""
    instruction: str


def read_image(image: str | Path | bytes, image_size: int, shown: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(model input [3,S,S], displayable uint8 [H,W,3], or an empty array without `shown`) of an image file or
    bytes, decoded once and only within the bounds of jobs.serving.bounds; BadInput when out of them or undecodable."""
    from jobs.serving.bounds import OutOfBounds, decoded_image
    from pipeline.preprocess import image_input

    where = "image bytes" if isinstance(image, bytes) else str(image)
    try:
        data = image if isinstance(image, bytes) else read_bytes(Path(image), "", IMAGE_MAX_BYTES, "an image")
    except BadRecord as e:
        raise BadInput(e.detail.strip()) from None
    try:
        rgb = decoded_image(data, shown)
    except OutOfBounds as e:
        raise BadInput(f"{where}: {e}") from None
    return image_input(rgb, image_size), np.asarray(rgb) if shown else np.empty((0, 0, 3), np.uint8)


def read_points(points: str | Path | np.ndarray) -> np.ndarray:
    if isinstance(points, str | Path):
        try:
            return read_point_file(points)
        except PointFileError as e:
            raise BadInput(str(e)) from None
    xyz = np.asarray(points, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise BadInput(f"points: expected an array [N,3], got shape {xyz.shape}")
    if len(xyz) > MAX_POINTS:
        raise BadInput(f"points: {len(xyz)} points, more than the {MAX_POINTS} a request may hold")
    bad = ~finite_rows(xyz)
    if bad.any():
        raise BadInput(f"points: row {int(np.argmax(bad))} has a NaN or infinite value or one beyond float32's range")
    return xyz.astype(np.float32)


@dataclass
class Prepared:
    """One input made ready for the model: what `predict_prepared` stacks into a batch."""

    name: str
    image: np.ndarray
    """float32 [3,S,S], normalised."""
    points: np.ndarray
    """float32 [3,N], the resampled cloud, normalised."""
    instruction: str
    xyz: np.ndarray
    """[M,3] the input points."""
    sampled_xyz: np.ndarray
    nearest: np.ndarray
    """[M] index of each input point's nearest sampled point."""
    shown: np.ndarray


def prepare(cfg: ModelConfig, item: Item, shown: bool = True) -> Prepared:
    """Read, check, resample and normalise one input for a model of config `cfg`; BadInput names the problem.
    Without `shown` the uint8 copy of the image (for renders) is not kept: a server holds prepared requests."""
    from pipeline.preprocess import normalize_points

    if not item.instruction.strip():
        raise BadInput(f"{item.name}: empty instruction")
    image, shown_image = read_image(item.image, cfg.image_size, shown)
    xyz = read_points(item.points)
    sampled = resample(xyz, cfg.num_points)
    normalized = normalize_points(sampled.xyz)  # [3,N]
    return Prepared(item.name, image, normalized, item.instruction, xyz, sampled.xyz, sampled.nearest, shown_image)


def predict_prepared(model: torch.nn.Module, inputs: list[Prepared]) -> list[HeatMap]:
    """One forward over all `inputs` (deterministic); values mapped back to every input point."""
    images = np.stack([p.image for p in inputs])
    points = np.stack([p.points for p in inputs])
    preds = predict_batch(model, images, points, [p.instruction for p in inputs], [p.name for p in inputs])
    return [
        HeatMap(p.name, p.xyz, pred[p.nearest], p.sampled_xyz, pred, p.shown, p.instruction)
        for p, pred in zip(inputs, preds)
    ]


def predict_item(model: torch.nn.Module, item: Item) -> HeatMap:
    """One prediction, deterministic; values are mapped back to every input point (nearest sampled point)."""
    return predict_prepared(model, [prepare(model.cfg, item)])[0]


def write_heatmap(out_dir: str | Path, heat: HeatMap) -> list[Path]:
    """<name>.npy (per input point), <name>_Pred.ply (input points, grey -> red) and <name>.png (render)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    npy = out / f"{heat.name}.npy"
    np.save(npy, heat.values.astype(np.float32))
    ply = write_ply(out / f"{heat.name}_Pred.ply", heat.xyz, heat.values)
    # The render shows the points the model saw: as many as it saw, whatever the size of the input cloud.
    png = render_png(
        out / f"{heat.name}.png", heat.sampled_xyz, heat.sampled_values, None, heat.image, heat.instruction, heat.name
    )
    return [npy, ply, png]


def items_from(path: str | Path, default_instruction: str | None) -> list[Item]:
    """Batch inputs: a list file (`image<TAB>points<TAB>instruction` or JSON lines with those keys; paths
    relative to the file) or a folder (every image `X.jpg|png|…` with a point file `X.txt|npy|ply` and an
    instruction in `X.instruction.txt`, else `default_instruction`)."""
    path = Path(path)
    if path.is_dir():
        return _folder_items(path, default_instruction)
    if not path.is_file():
        raise BadInput(f"{path}: no such list file or folder")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.lstrip().startswith("{"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInput(f"{path} line {n}: invalid JSON ({e.msg})") from None
            fields = [entry.get("image"), entry.get("points"), entry.get("instruction", default_instruction)]
        else:
            fields = line.split("\t") + [default_instruction] * (3 - len(line.split("\t")))
        if len(fields) != 3 or not all(isinstance(f, str) and f for f in fields):
            raise BadInput(f"{path} line {n}: expected image<TAB>points<TAB>instruction")
        image, points = (Path(f) if Path(f).is_absolute() else path.parent / f for f in fields[:2])
        items.append(Item(f"{n:04d}_{image.stem}", image, points, fields[2]))
    return items


def _folder_items(folder: Path, default_instruction: str | None) -> list[Item]:
    items = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        points = [image.with_suffix(s) for s in POINT_SUFFIXES if image.with_suffix(s).is_file()]
        instruction_file = image.with_name(image.stem + INSTRUCTION_SUFFIX)
        instruction = instruction_file.read_text().strip() if instruction_file.is_file() else default_instruction
        if not points or not instruction:
            missing = "a point file (.txt/.npy/.ply)" if not points else f"{instruction_file.name} or --instruction"
            raise BadInput(f"{image}: no {missing} beside it")
        items.append(Item(image.stem, image, points[0], instruction))
    if not items:
        raise BadInput(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return items


def rows_from(model_input: Any) -> list[dict[str, Any]]:
    """pyfunc input: a pandas DataFrame, a dict or a list of dicts with image, points, instruction."""
    if hasattr(model_input, "to_dict"):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, dict):
        return [model_input]
    return list(model_input)
