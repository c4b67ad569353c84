"""ShardConfig: how `lma3d shard` cuts raw records into WebDataset tars."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ShardConfig:
    samples_per_shard: int = 256
    """Samples per tar; choose so a split has >= train workers × loader processes shards."""
    max_bad_fraction: float = 0.01
    """Exit non-zero when more than this fraction of raw records is quarantined."""
    min_shards: int = 4
    """Warn when a split has fewer shards (train workers × loader processes)."""

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError("shard.samples_per_shard must be >= 1")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError("shard.max_bad_fraction must be in [0, 1]")
