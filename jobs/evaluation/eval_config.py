"""EvalConfig: the Ray Data evaluation job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class EvalConfig:
    batch_size: int = 6
    """Test samples per forward in each model actor."""
    num_actors: int | Literal["auto"] = "auto"
    """Model replicas in the Ray Data actor pool (one GPU each with use_gpu). auto: one per GPU of the cluster
    with use_gpu, else as many as its CPUs hold at cpus_per_actor each after one CPU for reading shards."""
    votes: int = 1
    """Average this many seeded forward passes per sample (LASO's evaluation uses 3)."""
    viz_samples: int = 4
    """Fixed test keys rendered as GT/prediction PLY + PNG each evaluation."""
    seed: int = 0
    """Seeds the forward passes (with votes > 1, where each extra vote starts farthest-point sampling), so scores
    repeat."""
    cpus_per_actor: float = 1.0
    """Ray CPUs reserved per model actor; below 1 locally leaves room for the shard-reading tasks."""
    threads_per_actor: int = 0
    """torch intra-op threads per actor (0: max(1, cpus_per_actor))."""
    use_gpu: bool = False
    """One GPU per actor (the AGPIL configs set it: evaluation runs on the training cluster's GPUs)."""
    shuffle_instructions: bool = False
    """Ablation: give each sample another sample's instruction (rotated by one within each batch) to measure
    how much the language branch matters."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.votes < 1 or (self.num_actors != "auto" and self.num_actors < 1):
            raise ValueError("eval.batch_size, eval.num_actors and eval.votes must be >= 1 (eval.num_actors or auto)")
        if self.viz_samples < 0 or not 0 < self.cpus_per_actor < float("inf"):
            raise ValueError("eval.viz_samples must be >= 0 and eval.cpus_per_actor a finite number > 0")
        if self.threads_per_actor < 0 or not 0 <= self.seed < 2**32:
            raise ValueError("eval.threads_per_actor must be >= 0 and eval.seed in [0, 2**32)")
