"""SynthConfig: what `lma3d synth` generates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class SynthConfig:
    out: str = "work/raw/Full_view/Seen"
    """The AGPIL root to write (one view × setting folder)."""
    view: Literal["full", "partial", "rotation"] = "full"
    setting: Literal["seen", "unseen"] = "seen"
    seed: int = 0
    train_images: int = 400
    """Train image samples (spread over the split's object/affordance pairs)."""
    test_samples: int = 100
    """Aligned test triplets (image, point cloud, description)."""
    points_per_object: int = 6
    """Train point clouds per object class (the pairing pool; ≥ 3, as the original needs)."""
    num_points: int = 2048
    image_size: int = 224
    jpeg_quality: int = 90
    cue_prob: float = 0.5
    """Probability that an image shows the interaction glyph at the used part (else a neutral pose):
    below 1 the instruction is needed to disambiguate, so the language branch matters."""

    def __post_init__(self) -> None:
        if self.points_per_object < 3:
            raise ValueError("synth.points_per_object must be >= 3 (3 pairs are drawn per image)")
        if not 0.0 <= self.cue_prob <= 1.0:
            raise ValueError(f"synth.cue_prob must be in [0, 1], got {self.cue_prob}")
