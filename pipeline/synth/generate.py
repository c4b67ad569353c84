"""Write a complete AGPIL-format tree (docs/original.md §2.3-2.4) for one view x setting, sample by sample.

Each file is a pure function of (seed, kind, index): the output is byte-identical for any number of worker
processes, and nothing but the (tiny) sample plan is held in memory, so 30k images stream like 300.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.geometry import random_rotation
from pipeline.names import objects_for
from pipeline.progress import progress
from pipeline.synth.config import SynthConfig
from pipeline.synth.instructions import instruction
from pipeline.synth.render import render
from pipeline.synth.shapes import affordances_of, build_object, part_mask, partial_view

KIND_CODE = {"image": 1, "points": 2, "triplet": 3}
IMAGE_POINTS = 1024  # points splatted per rendered image


def plan(cfg: SynthConfig) -> dict[str, list[tuple]]:
    """(kind, index, object, affordance, n) per file group, in list-file order."""
    train_objects, test_objects = objects_for(cfg.setting, "train"), objects_for(cfg.setting, "test")
    train_pairs = [(o, a) for o in train_objects for a in affordances_of(o)]
    test_pairs = [(o, a) for o in test_objects for a in affordances_of(o)]
    images = [("image", i, *train_pairs[i % len(train_pairs)], i + 1) for i in range(cfg.train_images)]
    triplets = [("triplet", j, *test_pairs[j % len(test_pairs)], j + 1) for j in range(cfg.test_samples)]
    clouds, index = [], 0
    for obj in train_objects:  # grouped in number_dict order: the original's pairing ranges rely on it
        for n in range(1, cfg.points_per_object + 1):
            clouds.append(("points", index, obj, None, n))
            index += 1
    return {"image": images, "points": clouds, "triplet": triplets}


def _paths(kind: str, obj: str, affordance: str | None, n: int) -> dict[str, str]:
    split = "Test" if kind == "triplet" else "Train"
    paths = {}
    if kind in ("image", "triplet"):
        stem = f"{split}_{obj}_{affordance}_{n}"
        paths["Img"] = f"Img/{split}/{obj}/{affordance}/Img_{stem}.jpg"
        paths["Description"] = f"Description/{split}/{obj}/{affordance}/Description_{stem}.json"
    if kind in ("points", "triplet"):
        paths["Point"] = f"Point/{split}/{obj}/Point_{split}_{obj}_{n}.txt"
    return paths


def _point_text(obj: str, xyz: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> bytes:
    buffer = io.StringIO()
    np.savetxt(buffer, np.hstack([xyz, labels]), fmt="%.6f")
    prefix = f"{int(rng.integers(2**63)):016x} {obj} "
    return "".join(prefix + line + "\n" for line in buffer.getvalue().splitlines()).encode()


def _cloud(cfg: SynthConfig, obj: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    xyz, labels, _ = build_object(obj, cfg.num_points, rng)
    if cfg.view == "partial":
        xyz, labels = partial_view(xyz, labels, cfg.num_points, rng)
    elif cfg.view == "rotation":
        xyz = (xyz @ random_rotation(rng, np.float64).T).astype(np.float32)
    return xyz, labels


def write_sample(root: Path, cfg: SynthConfig, task: tuple) -> int:
    """Write one image sample, train cloud or test triplet; returns the bytes written."""
    kind, index, obj, affordance, n = task
    rng = np.random.default_rng([cfg.seed, KIND_CODE[kind], index])
    files: dict[str, bytes] = {}
    paths = _paths(kind, obj, affordance, n)
    if "Img" in paths:
        xyz, _, part_of = build_object(obj, IMAGE_POINTS, rng, with_labels=False)
        cue = bool(rng.random() < cfg.cue_prob)
        used = part_mask(obj, affordance, part_of)
        files["Img"] = render(xyz, part_of, used, cfg.image_size, cue, rng, cfg.jpeg_quality)
        files["Description"] = json.dumps({"Description": instruction(obj, affordance, rng)}).encode()
    if "Point" in paths:
        files["Point"] = _point_text(obj, *_cloud(cfg, obj, rng), rng)
    for folder, data in files.items():
        path = root / paths[folder]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return sum(len(d) for d in files.values())


def _write_chunk(args: tuple[str, SynthConfig, list[tuple]]) -> int:
    root, cfg, tasks = args
    return sum(write_sample(Path(root), cfg, t) for t in tasks)


def _chunks(tasks: list[tuple], size: int) -> Iterator[list[tuple]]:
    for start in range(0, len(tasks), size):
        yield tasks[start : start + size]


def generate(cfg: SynthConfig, workers: int = 1, overwrite: bool = False) -> dict:
    """Write the tree at cfg.out (refused if it exists, unless `overwrite`); returns a summary."""
    root = Path(cfg.out)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    groups = plan(cfg)
    tasks = [t for kind in ("image", "points", "triplet") for t in groups[kind]]
    chunks = list(_chunks(tasks, 32))
    jobs = ((str(root), cfg, c) for c in chunks)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            total = sum(progress(pool.map(_write_chunk, jobs), total=len(chunks), desc="synth (chunks of 32)"))
    else:
        total = sum(progress(map(_write_chunk, jobs), total=len(chunks), desc="synth (chunks of 32)"))
    for split, kinds in (("Train", ("image", "points")), ("Test", ("triplet",))):
        lines: dict[str, list[str]] = {"Img": [], "Description": [], "Point": []}
        for kind in kinds:
            for _, _, obj, affordance, n in groups[kind]:
                for folder, path in _paths(kind, obj, affordance, n).items():
                    lines[folder].append(path)
        for folder, entries in lines.items():
            (root / f"{folder}_{split}.txt").write_text("".join(f"{e}\n" for e in entries))
    seconds = time.perf_counter() - start
    samples = len(tasks)
    return {
        "root": str(root), "view": cfg.view, "setting": cfg.setting, "train_images": len(groups["image"]),
        "train_clouds": len(groups["points"]), "test_triplets": len(groups["triplet"]), "bytes": total,
        "seconds": round(seconds, 2), "samples_per_s": round(samples / max(seconds, 1e-9), 1),
        "workers": workers,
    }  # fmt: skip


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))
