"""The loaders' transforms: decoding and normalisation live in pipeline/preprocess.py (shared with prediction and
serving, which must not import the shard readers); the training-time augmentation lives here."""

from __future__ import annotations

import numpy as np

from pipeline.preprocess import MEAN, STD, decode_image, normalize_points  # noqa: F401 - re-exported


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
