"""The original's `linear_warmup_cosine_lr` (docs/original.md §3.1) as a resumable torch LR scheduler.

LAVIS steps its scheduler with (epoch, iteration) before every iteration; here the state is the global
optimizer step only, and epoch / iteration come from `steps_per_epoch`, so a resumed run that restores
`last_epoch` (= optimizer steps taken) continues with exactly the LR it would have used.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def original_lr(
    step: int, *, lr: float, min_lr: float, warmup_lr: float, warmup_steps: int, epochs: int, steps_per_epoch: int
) -> float:
    """LR of optimizer step `step` (0-based).

    Epoch 0: per-step linear warm-up warmup_lr → lr over warmup_steps, capped at lr (never reached if
    epoch 0 is shorter). Epoch e ≥ 1: constant min_lr + ½(lr − min_lr)(1 + cos(π e / epochs)).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    epoch, iteration = divmod(step, steps_per_epoch)
    if epoch == 0:
        return min(lr, warmup_lr + (lr - warmup_lr) * iteration / max(warmup_steps, 1))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * epoch / epochs))


class OriginalLRSchedule(LRScheduler):
    """`last_epoch` counts optimizer steps; DeepSpeed calls `step()` once per applied optimizer step."""

    RECIPE = ("lr", "min_lr", "warmup_lr", "warmup_steps", "epochs", "steps_per_epoch")

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        lr: float,
        min_lr: float,
        warmup_lr: float,
        warmup_steps: int,
        epochs: int,
        steps_per_epoch: int,
    ) -> None:
        if epochs < 1 or steps_per_epoch < 1:
            raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
        self.lr, self.min_lr, self.warmup_lr = lr, min_lr, warmup_lr
        self.warmup_steps, self.epochs, self.steps_per_epoch = warmup_steps, epochs, steps_per_epoch
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        return original_lr(step, **{k: getattr(self, k) for k in self.RECIPE})

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch)] * len(self.optimizer.param_groups)

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            **{k: getattr(self, k) for k in self.RECIPE},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step count; the recipe stays the one this run was built with (a changed
        steps_per_epoch, e.g. a different worker count, re-maps the step to (epoch, iteration))."""
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        value = self.lr_at(self.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = value
        self._last_lr = [value] * len(self.optimizer.param_groups)
