"""Interaction images: the object's points splatted from a random viewpoint onto a random background, coloured
by part, with a hand glyph at the part being used (with probability `cue_prob`, else somewhere off the object)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

SKIN = ((224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172))


def _view(rng: np.random.Generator) -> np.ndarray:
    azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.7)
    ca, sa, ce, se = np.cos(azimuth), np.sin(azimuth), np.cos(elevation), np.sin(elevation)
    yaw = np.array([[ca, 0, sa], [0, 1, 0], [-sa, 0, ca]])
    pitch = np.array([[1, 0, 0], [0, ce, -se], [0, se, ce]])
    return pitch @ yaw


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    top, bottom = rng.uniform(40, 230, 3), rng.uniform(40, 230, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    image = top * (1 - ramp) + bottom * ramp + rng.normal(0, 8, (size, size, 3))
    return np.broadcast_to(image, (size, size, 3)).copy()


def _hand(draw: ImageDraw.ImageDraw, x: float, y: float, scale: float, rng: np.random.Generator) -> None:
    colour = SKIN[rng.integers(len(SKIN))]
    angle = rng.uniform(0, 2 * np.pi)
    r = scale
    draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(60, 40, 30))
    for k in range(4):  # four fingers fanning out from the palm
        a = angle + (k - 1.5) * 0.35
        draw.line([x, y, x + 2.2 * r * np.cos(a), y + 2.2 * r * np.sin(a)], fill=colour, width=max(2, int(r / 2.5)))
    a = angle + 1.6  # thumb
    draw.line([x, y, x + 1.6 * r * np.cos(a), y + 1.6 * r * np.sin(a)], fill=colour, width=max(2, int(r / 2.5)))


def render(
    xyz: np.ndarray,
    part_of: np.ndarray,
    used: np.ndarray,
    size: int,
    cue: bool,
    rng: np.random.Generator,
    quality: int = 90,
) -> bytes:
    """JPEG bytes of one interaction image. `used` marks the points of the part the hand interacts with."""
    projected = (xyz - xyz.mean(0)) @ _view(rng).T
    extent = np.abs(projected[:, :2]).max() + 1e-6
    scale = size * rng.uniform(0.3, 0.4) / extent
    centre = size / 2 + rng.uniform(-0.08, 0.08, 2) * size
    px = np.clip((projected[:, 0] * scale + centre[0]).astype(int), 0, size - 3)
    py = np.clip((-projected[:, 1] * scale + centre[1]).astype(int), 0, size - 3)
    palette = rng.uniform(30, 255, (int(part_of.max()) + 1, 3))
    shade = 0.75 + 0.25 * (projected[:, 2] - projected[:, 2].min()) / (np.ptp(projected[:, 2]) + 1e-6)
    colours = palette[part_of] * shade[:, None]
    image = _background(size, rng)
    order = np.argsort(projected[:, 2])  # far to near: nearer points paint over
    for dy in range(3):
        for dx in range(3):
            image[py[order] + dy, px[order] + dx] = colours[order]
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    if cue:
        target = np.flatnonzero(used)
        x, y = px[target].mean() + 1, py[target].mean() + 1
    else:  # the same glyph, placed where it tells nothing: a corner of the image
        x, y = rng.choice([0.1, 0.9]) * size, rng.choice([0.1, 0.9]) * size
    _hand(draw, x, y, size * 0.035, rng)
    out = io.BytesIO()
    pil.save(out, "JPEG", quality=quality)
    return out.getvalue()
