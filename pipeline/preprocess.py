"""What a model input is made of, independent of where it comes from (shards, `lma3d predict`, the served
model, the registered pyfunc): the original's image and point-cloud normalisation (original.md §1.2). PIL resize to a
square (bicubic, no crop, no augmentation), ImageNet normalisation; point clouds centred and scaled into the unit
sphere. Imports nothing but numpy and PIL, so a served or registered model does not need the shard readers."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """JPEG/PNG bytes -> float32 [3,S,S], ImageNet-normalised."""
    with Image.open(io.BytesIO(data)) as image:
        return image_input(image.convert("RGB"), image_size)


def image_input(rgb: Image.Image, image_size: int) -> np.ndarray:
    """A decoded RGB image -> float32 [3,S,S], ImageNet-normalised (what decode_image makes of its bytes)."""
    pixels = rgb.resize((image_size, image_size), Image.BICUBIC)
    array = np.asarray(pixels, np.float32) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1).copy()


def normalize_points(xyz: np.ndarray) -> np.ndarray:
    """[N,3] -> float32 [3,N]: centred at the centroid, divided by the largest radius."""
    centred = xyz.astype(np.float32) - xyz.mean(0, dtype=np.float64).astype(np.float32)
    radius = float(np.sqrt((centred**2).sum(1)).max())
    return (centred / max(radius, 1e-12)).T.copy()
