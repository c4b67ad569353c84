"""EvalConfig: the Ray Data evaluation job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    batch_size: int = 6
    num_actors: int = 1
    """Model replicas in the Ray Data actor pool (one GPU each on a cluster)."""
    votes: int = 1
    """Average this many seeded forward passes per sample (LASO's evaluation uses 3)."""
    viz_samples: int = 4
    """Fixed test keys rendered as GT/prediction PLY + PNG each evaluation."""
    seed: int = 0
