"""TrainConfig and TrackingConfig: the recipe (docs/original.md §3.1), DeepSpeed, Ray Train and MLflow knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TrainConfig:
    epochs: int = 20
    """Passes over the train shards (each rank takes the same number of batches per epoch)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs)."""
    lr: float = 1e-4
    """Peak learning rate of AdamW, reached at the end of the warm-up; a cosine decay per epoch follows."""
    min_lr: float = 1e-5
    """The learning rate the cosine decay ends at after the last epoch."""
    warmup_lr: float = 1e-6
    """The learning rate of the first optimizer step (see warmup_steps)."""
    warmup_steps: int = 2000
    """Linear warm-up from warmup_lr to lr, per iteration, in epoch 0 only (capped)."""
    weight_decay: float = 0.06
    """Applied only to parameters with ndim > 1."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's betas."""
    grad_clip: float = 0.0
    """Gradient-norm clipping (0 = off, as the original)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (DeepSpeed's gradient_accumulation_steps)."""
    precision: Literal["bf16", "fp16", "fp32", "bf16-autocast", "fp16-autocast"] = "bf16"
    """`bf16`/`fp16` cast the whole module; `*-autocast` keep fp32 weights and BatchNorm and compute under
    torch.autocast (the original: fp16-autocast). Evaluation replays it (jobs/precision.py)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0 none, 1 shards the optimizer state over workers, 2 also the gradients, 3 also the
    parameters."""
    offload_optimizer: bool = False
    """Keep the optimizer state in CPU memory and step it there (DeepSpeed's CPU Adam; zero_stage 1, 2 or 3)."""
    offload_params: bool = False
    """ZeRO-3 only: keep parameters in CPU memory."""
    num_workers: int = 1
    """Ray Train workers (one GPU each when use_gpu)."""
    use_gpu: bool = False
    """One GPU per worker (CUDA, NCCL); false: CPU workers with gloo."""
    gpu_wait_s: float = 900.0
    """With use_gpu on a cluster: how long to wait for GPUs for every worker (the autoscaler is asked for them)
    before giving up with an error, instead of retrying forever."""
    cpus_per_worker: int = 1
    """Ray CPUs reserved per worker (its loader processes and torch threads run in them)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Ray places the workers over nodes (Ray's placement-group strategies): STRICT_SPREAD puts every worker
    on its own node."""
    max_failures: int = 0
    """Worker-group failures (a dead worker, an out-of-memory kill, a lost node) retried from the latest
    checkpoint, counted over the whole job."""
    keep_checkpoints: int = 2
    """Checkpoints kept per run: the best ones by val/auc, and always the latest."""
    checkpoint_every: int = 0
    """Checkpoint every N optimizer steps (0: at each epoch end)."""
    val_every: int = 1
    """Validate on the test shards every N epochs (0: never)."""
    log_every: int = 20
    """Log the training metrics (train/loss, train/lr, perf/*) every N optimizer steps."""
    storage_path: str = ""
    """Ray Train storage (default <workdir>/runs); on a cluster a shared absolute path or URI (s3://, gs://,
    file:///), required there unless workdir is absolute (jobs/cluster_storage.py)."""
    run_name: str = ""
    """The run's folder under storage_path and its MLflow run name (empty: <date>-<view>-<setting>-lr<lr>-bs<bs>;
    --run-name overrides it)."""
    seed: int = 42
    """Seeds torch, NumPy and random in every worker (model initialisation, dropout, sampling starts)."""
    threads_per_worker: int = 0
    """torch intra-op threads per worker (0: cpus_per_worker)."""
    norm_eval: bool = False
    """Keep BatchNorm layers in eval mode while training (running statistics instead of per-batch ones;
    their affine weights still train): results then do not depend on how a batch is split over workers."""
    step_callbacks: list[str] = field(default_factory=list)
    """Importable names (`package.module:function`) called on every rank after each optimizer step with a
    jobs.training.callbacks.StepEvent (rank, step, run folder, last checkpoint, last metrics)."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"train.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("train.offload_params needs train.zero_stage: 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError(f"train.offload_optimizer needs train.zero_stage 1, 2 or 3, got {self.zero_stage}")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError(
                "train.precision fp16 needs a GPU (train.use_gpu: true); on CPU use bf16, bf16-autocast or fp32"
            )
        if self.num_workers < 1 or self.grad_accum < 1:
            raise ValueError("train.num_workers and train.grad_accum must be >= 1")
        # Written `not (low <= x <= high)` so that NaN (every comparison false) is refused too.
        for name in ("lr", "min_lr", "warmup_lr", "weight_decay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0 or (name == "lr" and value == 0.0):
                raise ValueError(f"train.{name} must be in {'(0' if name == 'lr' else '[0'}, 1], got {value!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas must both be in [0, 1), got {list(self.betas)}")
        if not 0.0 <= self.grad_clip < float("inf"):
            raise ValueError(f"train.grad_clip must be a finite number >= 0, got {self.grad_clip!r}")
        at_least = {"epochs": 1, "log_every": 1, "keep_checkpoints": 1, "cpus_per_worker": 1, "max_steps": 0,
                    "warmup_steps": 0, "checkpoint_every": 0, "val_every": 0, "threads_per_worker": 0,
                    "max_failures": -1, "gpu_wait_s": 0}  # fmt: skip
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"train.{name} must be >= {low}, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"train.seed must be in [0, 2**32), got {self.seed}")


@dataclass
class TrackingConfig:
    tracking_uri: str = ""
    """MLflow tracking URI; empty: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db."""
    experiment: str = ""
    """Empty: lma3d/<dataset>-<view>-<setting>."""
    system_metrics: bool = True
    """Log MLflow's system metrics (CPU, memory, GPU) to the training run."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra tags set on the training run."""
