"""Decode and normalise exactly as the original (spec §1.2): PIL resize to a square (bicubic, no crop, no
augmentation), ImageNet normalisation; point clouds centred and scaled into the unit sphere."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """JPEG/PNG bytes -> float32 [3,S,S], ImageNet-normalised."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = image.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
    array = np.asarray(pixels, np.float32) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1).copy()


def normalize_points(xyz: np.ndarray) -> np.ndarray:
    """[N,3] -> float32 [3,N]: centred at the centroid, divided by the largest radius."""
    centred = xyz.astype(np.float32) - xyz.mean(0, dtype=np.float64).astype(np.float32)
    radius = float(np.sqrt((centred**2).sum(1)).max())
    return (centred / max(radius, 1e-12)).T.copy()


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform SO(3) rotation (Shoemake's quaternion method, as the original's Rotation_view)."""
    u1, u2, u3 = rng.random(3)
    x = np.sqrt(1 - u1) * np.sin(2 * np.pi * u2)
    y = np.sqrt(1 - u1) * np.cos(2 * np.pi * u2)
    z = np.sqrt(u1) * np.sin(2 * np.pi * u3)
    w = np.sqrt(u1) * np.cos(2 * np.pi * u3)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        np.float32,
    )
