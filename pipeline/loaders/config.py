"""DataConfig: how the loaders read shards for training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DataConfig:
    shards: str = "work/shards"
    """Output folder of `lma3d shard` (train/, test/, points.arrow, manifest.json)."""
    view: Literal["full", "partial", "rotation"] = "full"
    """`rotation` gives each train point cloud a fresh random SO(3) rotation per draw."""
    setting: Literal["seen", "unseen"] = "seen"
    """The benchmark setting the shards hold (`unseen`: test objects or affordances absent from training); names
    the run and the MLflow experiment, the loaders do not read it."""
    batch_size: int = 6
    """Images per batch per rank (each with `pairs` point clouds)."""
    eval_batch_size: int = 6
    """Test samples per batch per rank when validating during training."""
    pairs: int = 3
    """Point clouds of the image's object drawn per image, without replacement."""
    num_workers: int = 2
    """Loader processes per rank."""
    shuffle_buffer: int = 500
    """Train samples each loader stream holds and draws from at random (0 or 1: the shards' order, shuffled per
    epoch by shard only)."""
    seed: int = 42
    """Seeds the epoch's shard order, the shuffle buffers and the point clouds drawn for each image."""
    max_bad_fraction: float = 0.01
    """Stop with an error when more than this fraction of samples read does not decode (in verified shards)."""
    on_corrupt_shard: Literal["fail", "skip"] = "fail"
    """A shard or points.arrow whose sha256, sample count, keys or values differ from the manifest: `fail` stops
    the job with one line naming it; `skip` drops its samples, logs it and counts it (MLflow
    `data/corrupt_shards` in training)."""

    def __post_init__(self) -> None:
        if self.pairs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("data.pairs, data.batch_size and data.eval_batch_size must be >= 1")
        if self.num_workers < 0 or self.shuffle_buffer < 0:
            raise ValueError("data.num_workers and data.shuffle_buffer must be >= 0")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"data.seed must be in [0, 2**32), got {self.seed}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:  # also refuses NaN
            raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction!r}")
