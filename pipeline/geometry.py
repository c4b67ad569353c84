"""Point-cloud geometry on numpy arrays, shared by the synthetic data, the training loader and predict-time
input reading (pipeline/ never imports model/, whose torch versions run inside the network)."""

from __future__ import annotations

import numpy as np


def random_rotation(rng: np.random.Generator, dtype: type = np.float32) -> np.ndarray:
    """Uniform SO(3) rotation [3,3] (Shoemake's quaternion method, as the original's Rotation_view)."""
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
        dtype,
    )


def farthest_point_indices(xyz: np.ndarray, n: int) -> np.ndarray:
    """`n` indices by farthest-point sampling from point 0 (deterministic), n <= len(xyz): the numpy mirror of
    model.point_ops.farthest_point_sample(start="first") for one cloud (tests/test_pointfiles.py holds them equal)."""
    chosen = np.empty(n, dtype=np.int64)
    distance = np.full(len(xyz), np.inf)
    current = 0
    for i in range(n):
        chosen[i] = current
        distance = np.minimum(distance, ((xyz - xyz[current]) ** 2).sum(1))
        current = int(np.argmax(distance))
    return chosen
