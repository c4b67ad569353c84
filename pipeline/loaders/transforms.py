"""The loaders' transforms: decoding and normalisation live in pipeline/preprocess.py (shared with prediction and
serving, which must not import the shard readers), the training-time rotation in pipeline/geometry.py (shared with
the synthetic data)."""

from __future__ import annotations

from pipeline.geometry import random_rotation  # noqa: F401 - re-exported
from pipeline.preprocess import MEAN, STD, decode_image, normalize_points  # noqa: F401 - re-exported

