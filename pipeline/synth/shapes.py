"""Procedural objects for the 23 classes: parts (boxes, cylinders, ellipsoids) sampled to surface points,
and per-affordance ground truth that falls off smoothly from the part the affordance belongs to.

Part placement is consistent per class (the mug's handle is on its side) and varied per instance (size,
proportions, offsets), so the part a heat map should light up is learnable from the geometry, and objects
with several affordances have a different part, hence a different GT, per affordance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.names import AFFORDANCE_INDEX


@dataclass(frozen=True)
class Part:
    name: str
    kind: str  # "box" | "cyl" | "ell"
    centre: tuple[float, float, float]
    size: tuple[float, ...]  # box: half extents; cyl: (radius, half height); ell: radii
    axis: int = 1  # cylinder axis (0 x, 1 y, 2 z)


def _box(name, c, h):
    return Part(name, "box", c, h)


def _cyl(name, c, r, hh, axis=1):
    return Part(name, "cyl", c, (r, hh), axis)


def _ell(name, c, radii):
    return Part(name, "ell", c, radii)


def _legs(name, xs, y, zs, r, hh):
    return [_cyl(f"{name}{i}", (x, y, z), r, hh) for i, (x, z) in enumerate((x, z) for x in xs for z in zs)]


# class -> (parts, affordance -> names of the parts it belongs to)
TEMPLATES: dict[str, tuple[list[Part], dict[str, tuple[str, ...]]]] = {
    "Earphone": ([_box("band", (0, 0.55, 0), (0.45, 0.06, 0.08)), _cyl("cupl", (-0.5, 0, 0), 0.22, 0.08, 0),
                  _cyl("cupr", (0.5, 0, 0), 0.22, 0.08, 0)],
                 {"grasp": ("band",), "listen": ("cupl", "cupr")}),
    "Bag": ([_box("body", (0, -0.2, 0), (0.6, 0.45, 0.25)), _box("handle", (0, 0.55, 0), (0.3, 0.05, 0.04)),
             _box("strapl", (-0.45, 0.35, 0), (0.04, 0.12, 0.04)), _box("strapr", (0.45, 0.35, 0), (0.04, 0.12, 0.04)),
             _box("opening", (0, 0.27, 0), (0.5, 0.02, 0.2))],
            {"grasp": ("handle",), "lift": ("strapl", "strapr"), "contain": ("body",), "open": ("opening",)}),
    "Chair": ([_box("seat", (0, 0, 0), (0.45, 0.05, 0.45)), _box("back", (0, 0.5, -0.42), (0.45, 0.45, 0.04)),
               *_legs("leg", (-0.38, 0.38), -0.45, (-0.38, 0.38), 0.04, 0.42)],
              {"sit": ("seat",), "support": ("back",), "move": ("leg0", "leg1", "leg2", "leg3")}),
    "Refrigerator": ([_box("body", (0, 0, 0), (0.45, 0.9, 0.4)), _cyl("handle", (0.35, 0.3, 0.44), 0.03, 0.25)],
                     {"contain": ("body",), "open": ("handle",)}),
    "Knife": ([_box("handle", (-0.5, 0, 0), (0.3, 0.06, 0.03)), _box("blade", (0.25, 0.02, 0), (0.45, 0.1, 0.01)),
               _box("tip", (0.78, 0.02, 0), (0.08, 0.05, 0.01))],
              {"grasp": ("handle",), "cut": ("blade",), "stab": ("tip",)}),
    "Dishwasher": ([_box("body", (0, 0, 0), (0.45, 0.45, 0.45)), _cyl("handle", (0, 0.35, 0.47), 0.03, 0.3, 0)],
                   {"open": ("handle",), "contain": ("body",)}),
    "Keyboard": ([_box("base", (0, 0, 0), (0.9, 0.04, 0.3)), _box("keys", (0, 0.06, 0.02), (0.8, 0.02, 0.22))],
                 {"press": ("keys",)}),
    "Scissors": ([_cyl("ringl", (-0.55, 0, 0.14), 0.15, 0.02), _cyl("ringr", (-0.55, 0, -0.14), 0.15, 0.02),
                  _box("blades", (0.15, 0, 0), (0.45, 0.02, 0.06)), _box("tip", (0.66, 0, 0), (0.08, 0.02, 0.03))],
                 {"grasp": ("ringl", "ringr"), "cut": ("blades",), "stab": ("tip",)}),
    "Table": ([_box("top", (0, 0.4, 0), (0.8, 0.04, 0.5)), *_legs("leg", (-0.7, 0.7), -0.1, (-0.4, 0.4), 0.04, 0.48)],
              {"support": ("top",), "move": ("leg0", "leg1", "leg2", "leg3")}),
    "StorageFurniture": ([_box("body", (0, 0, 0), (0.5, 0.8, 0.35)),
                          *[_box(f"knob{i}", (0, y, 0.37), (0.12, 0.02, 0.02)) for i, y in enumerate((0.5, 0, -0.5))]],
                         {"contain": ("body",), "open": ("knob0", "knob1", "knob2")}),
    "Bottle": ([_cyl("lower", (0, -0.45, 0), 0.3, 0.3), _cyl("upper", (0, 0.1, 0), 0.3, 0.25),
                _cyl("neck", (0, 0.5, 0), 0.1, 0.15), _cyl("cap", (0, 0.7, 0), 0.11, 0.06)],
               {"contain": ("lower",), "wrapgrasp": ("upper",), "open": ("cap",), "pour": ("neck",)}),
    "Bowl": ([_cyl("wall", (0, 0, 0), 0.6, 0.2), _cyl("bottom", (0, -0.2, 0), 0.5, 0.01),
              _cyl("rim", (0, 0.21, 0), 0.62, 0.02)],
             {"contain": ("bottom",), "wrapgrasp": ("wall",), "pour": ("rim",)}),
    "Microwave": ([_box("body", (0, 0, 0), (0.6, 0.35, 0.4)), _box("handle", (0.45, 0, 0.42), (0.03, 0.25, 0.03))],
                  {"contain": ("body",), "open": ("handle",)}),
    "Display": ([_box("screen", (0, 0.3, 0), (0.7, 0.4, 0.03)), _cyl("stand", (0, -0.3, 0), 0.05, 0.25),
                 _box("base", (0, -0.55, 0), (0.25, 0.02, 0.15))],
                {"display": ("screen",)}),
    "TrashCan": ([_cyl("body", (0, -0.05, 0), 0.4, 0.55), _cyl("lid", (0, 0.62, 0), 0.42, 0.04),
                  _box("pedal", (0, -0.55, 0.45), (0.1, 0.02, 0.06))],
                 {"contain": ("body",), "open": ("lid",), "pour": ("pedal",)}),
    "Hat": ([_ell("crown", (0, 0.15, 0), (0.4, 0.3, 0.4)), _cyl("brim", (0, 0, 0), 0.7, 0.015)],
            {"wear": ("crown",), "grasp": ("brim",)}),
    "Clock": ([_cyl("frame", (0, 0, 0), 0.65, 0.08, 2), _cyl("face", (0, 0, 0.09), 0.5, 0.005, 2),
               _box("stand", (0, -0.7, 0), (0.3, 0.04, 0.15))],
              {"display": ("face",)}),
    "Door": ([_box("panel", (0, 0, 0), (0.45, 0.9, 0.04)), _cyl("handle", (0.33, 0, 0.1), 0.03, 0.1, 0)],
             {"open": ("handle",), "push": ("panel",)}),
    "Mug": ([_cyl("body", (0, 0, 0), 0.35, 0.45), _box("handle", (0.5, 0, 0), (0.1, 0.25, 0.04)),
             _cyl("rim", (0, 0.46, 0), 0.36, 0.02), _cyl("inside", (0, -0.3, 0), 0.3, 0.01)],
            {"contain": ("inside",), "grasp": ("handle",), "wrapgrasp": ("body",), "pour": ("rim",)}),
    "Faucet": ([_cyl("base", (0, -0.5, 0), 0.12, 0.1), _cyl("column", (0, -0.1, 0), 0.07, 0.35),
                _box("spout", (0.3, 0.2, 0), (0.35, 0.05, 0.05)), _box("lever", (-0.15, 0.35, 0), (0.15, 0.03, 0.03))],
               {"grasp": ("column",), "open": ("lever",)}),
    "Vase": ([_ell("body", (0, -0.2, 0), (0.4, 0.5, 0.4)), _cyl("neck", (0, 0.45, 0), 0.15, 0.2),
              _cyl("lip", (0, 0.66, 0), 0.2, 0.02)],
             {"contain": ("lip",), "wrapgrasp": ("body",), "pour": ("neck",)}),
    "Laptop": ([_box("deck", (0, -0.3, 0.2), (0.6, 0.03, 0.4)), _box("screen", (0, 0.1, -0.2), (0.6, 0.4, 0.02))],
               {"display": ("screen",), "press": ("deck",)}),
    "Bed": ([_box("frame", (0, -0.35, 0), (0.6, 0.08, 1.0)), _box("mattress", (-0.1, -0.15, 0.05), (0.48, 0.1, 0.9)),
             _box("edge", (0.5, -0.15, 0.05), (0.1, 0.1, 0.9)), _box("headboard", (0, 0.2, -0.97), (0.6, 0.35, 0.04))],
            {"lay": ("mattress",), "sit": ("edge",)}),
}  # fmt: skip
SIGMA = 0.1  # GT falloff (object units, ~[-1, 1]): the value is exp(-d^2 / 2 sigma^2), d = distance to the part


def affordances_of(obj: str) -> tuple[str, ...]:
    return tuple(TEMPLATES[obj][1])


def _area(part: Part) -> float:
    s = part.size
    if part.kind == "box":
        return 8 * (s[0] * s[1] + s[1] * s[2] + s[0] * s[2])
    if part.kind == "cyl":
        return 2 * np.pi * s[0] * (2 * s[1]) + 2 * np.pi * s[0] ** 2
    a, b, c = s
    return 4 * np.pi * ((a * b) ** 1.6 + (a * c) ** 1.6 + (b * c) ** 1.6) ** (1 / 1.6) / 3


def _sample(part: Part, n: int, rng: np.random.Generator) -> np.ndarray:
    s = np.asarray(part.size)
    if part.kind == "box":
        faces = np.array([s[1] * s[2], s[1] * s[2], s[0] * s[2], s[0] * s[2], s[0] * s[1], s[0] * s[1]])
        face = rng.choice(6, size=n, p=faces / faces.sum())
        pts = rng.uniform(-1, 1, size=(n, 3)) * s
        axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
        pts[np.arange(n), axis] = sign * s[axis]
    elif part.kind == "cyl":
        r, hh = s
        side = rng.random(n) < (2 * hh) / (2 * hh + r)
        angle = rng.uniform(0, 2 * np.pi, n)
        radius = np.where(side, r, r * np.sqrt(rng.random(n)))
        height = np.where(side, rng.uniform(-hh, hh, n), np.where(rng.random(n) < 0.5, hh, -hh))
        local = np.stack([radius * np.cos(angle), height, radius * np.sin(angle)], axis=1)
        order = {0: [1, 0, 2], 1: [0, 1, 2], 2: [0, 2, 1]}[part.axis]
        pts = local[:, order]
    else:
        direction = rng.normal(size=(n, 3))
        pts = direction / np.linalg.norm(direction, axis=1, keepdims=True) * s
    return pts + np.asarray(part.centre)


def _vary(part: Part, scale: np.ndarray, rng: np.random.Generator) -> Part:
    centre = tuple(np.asarray(part.centre) * scale + rng.uniform(-0.03, 0.03, 3))
    size = tuple(np.asarray(part.size) * rng.uniform(0.85, 1.15, len(part.size)))
    return Part(part.name, part.kind, centre, size, part.axis)


def build_object(
    obj: str, num_points: int, rng: np.random.Generator, with_labels: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """One instance: xyz [N,3] float32, labels [N,17] float32 (None unless `with_labels`), part index per point."""
    parts, affordances = TEMPLATES[obj]
    scale = rng.uniform(0.8, 1.2, 3)
    parts = [_vary(p, scale, rng) for p in parts]
    share = np.array([_area(p) for p in parts])
    share = np.maximum(share / share.sum(), 0.06)  # every part gets enough points to carry a GT region
    counts = np.floor(share / share.sum() * num_points).astype(int)
    counts[np.argmax(counts)] += num_points - counts.sum()
    xyz = np.concatenate([_sample(p, c, rng) for p, c in zip(parts, counts)])
    part_of = np.repeat(np.arange(len(parts)), counts)
    if not with_labels:
        return xyz.astype(np.float32), None, part_of
    labels = np.zeros((num_points, len(AFFORDANCE_INDEX)), np.float32)
    names = [p.name for p in parts]
    for affordance, owners in affordances.items():
        on_part = np.flatnonzero(np.isin(part_of, [names.index(o) for o in owners]))
        anchors = xyz[on_part[:: max(1, len(on_part) // 192)]]  # a dense enough subset of the part's surface
        distance = np.sqrt(((xyz[:, None, :] - anchors[None, :, :]) ** 2).sum(-1).min(1))
        distance[on_part] = 0.0
        labels[:, AFFORDANCE_INDEX[affordance]] = np.exp(-(distance**2) / (2 * SIGMA**2))
    return xyz.astype(np.float32), labels, part_of


def part_mask(obj: str, affordance: str, part_of: np.ndarray) -> np.ndarray:
    """Mask of the points on the part(s) an affordance belongs to: where the image's hand goes."""
    parts, affordances = TEMPLATES[obj]
    names = [p.name for p in parts]
    return np.isin(part_of, [names.index(o) for o in affordances[affordance]])


def partial_view(
    xyz: np.ndarray, labels: np.ndarray, num_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The points facing one random viewpoint (the half of the cloud nearest to it), resampled to num_points."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    depth = (xyz - xyz.mean(0)) @ direction
    visible = np.flatnonzero(depth >= np.median(depth))
    pick = rng.choice(visible, size=num_points, replace=len(visible) < num_points)
    jitter = rng.normal(scale=0.005, size=(num_points, 3)) * (np.bincount(pick, minlength=len(xyz))[pick] > 1)[:, None]
    return (xyz[pick] + jitter).astype(np.float32), labels[pick]
