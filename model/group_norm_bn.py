"""BatchNorm that can take its batch statistics per group of samples, so one batched call behaves like several
separate calls (docs/original.md §1.5: the original runs one forward per point cloud).

The original's training step runs the model K times (one forward per point cloud of an image) on batches of B.
The project runs the K clouds as one batch of B·K, sample i = b·K + k. Inside `batchnorm_groups(K)`, every
`GroupedBatchNorm` in training mode normalises each cloud group {b·K + k : b} with that group's own mean and
variance, and updates its running statistics once per group, group 0 first, with the momentum applied
sequentially: exactly the K calls the original makes, with one batched kernel. `repeats=K` instead makes a call on
B samples stand for K identical calls (the image branch, encoded once per image where the original encodes it per
cloud): normalised once, running statistics updated K times with the same batch statistics.

A module called more than once per forward (the fusion's shared MLP sees the point features, then the image
features) updates, in the original, call 1 of cloud 1, call 2 of cloud 1, call 1 of cloud 2, ... Inside
`deferred_batchnorm_updates()` every call records its per-group statistics and the updates are applied on exit in
that order (training-mode outputs never read the running statistics, so deferring them changes nothing else).

Outside these contexts, and in eval mode, the module is `nn.BatchNorm{1,2}d`: same parameters, buffers and
state-dict keys, so checkpoints and exports load unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class _Scope:
    """The innermost `batchnorm_groups` split and `deferred_batchnorm_updates` list. Plain module state, not
    ContextVars: torch.compile traces a global's attributes (and guards on them) but breaks its graph at
    `ContextVar.get`. A training step runs in one thread; eval-mode calls never read it."""

    split: tuple[int, int] = (1, 1)
    pending: list | None = None


_SCOPE = _Scope()


@contextlib.contextmanager
def batchnorm_groups(groups: int, repeats: int = 1) -> Iterator[None]:
    """Inside: training-mode `GroupedBatchNorm` calls take statistics per group of `groups` interleaved samples
    (sample i in group i % groups) and update their running statistics once per group; `repeats` > 1 (with
    groups == 1) makes each call count as that many identical calls."""
    if groups < 1 or repeats < 1 or (groups > 1 and repeats > 1):
        raise ValueError(f"batchnorm_groups: need groups >= 1 and repeats >= 1, not both > 1 (got {groups}, {repeats})")
    outer, _SCOPE.split = _SCOPE.split, (groups, repeats)
    try:
        yield
    finally:
        _SCOPE.split = outer


@dataclass
class _Statistics:
    module: GroupedBatchNorm
    mean: torch.Tensor  # [R, C]: batch mean of each of the R calls this one stands for
    var: torch.Tensor  # [R, C]: their unbiased batch variance


@contextlib.contextmanager
def deferred_batchnorm_updates() -> Iterator[None]:
    """Collect the running-statistic updates of every `GroupedBatchNorm` call inside and apply them on exit,
    per module round by round: (call 1, group 1), (call 2, group 1), ..., (call 1, group 2), ... as separate
    per-group forwards would. Nothing is applied if the body raises."""
    pending: list[_Statistics] = []
    outer, _SCOPE.pending = _SCOPE.pending, pending
    try:
        yield
    finally:
        _SCOPE.pending = outer
    by_module: dict[int, list[_Statistics]] = {}
    for stats in pending:
        by_module.setdefault(id(stats.module), []).append(stats)
    for calls in by_module.values():
        for r in range(max(s.mean.shape[0] for s in calls)):
            for s in calls:
                if r < s.mean.shape[0]:
                    s.module._update_running(s.mean[r], s.var[r])


def batch_split(n: int) -> tuple[int, int]:
    """The innermost `batchnorm_groups` (groups, repeats), checked against a batch of `n` samples."""
    groups, repeats = _SCOPE.split
    if n % groups:
        raise ValueError(f"GroupedBatchNorm: batch of {n} samples does not split into {groups} groups")
    return groups, repeats


class GroupedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """`nn.BatchNorm1d`/`2d` (any input [N, C, *]) with per-group statistics under `batchnorm_groups`.

    With groups > 1 in training, the output is a view of the kernel's [B, G·C, *] result: an in-place op on it
    (`nn.ReLU(inplace=True)`) makes autograd route the whole gradient through a CopySlices copy, which cost the
    paper-size point encoder 2.5 s of its 11 s forward + backward. The point, fusion and decoder stacks therefore
    follow it with an out-of-place ReLU (as the original's `F.relu`)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GroupedBatchNorm: expected an input [N, C, ...], got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        batch_stats = self.training or self.running_mean is None
        if not batch_stats or (_SCOPE.split == (1, 1) and _SCOPE.pending is None):
            # contiguous: the CPU channels-last kernel takes the variance as E[x²] − E[x]² in fp32, which loses
            # up to 1e-4 of the output when a channel's mean is large against its spread (docs/fidelity.md)
            return super().forward(x.contiguous() if batch_stats else x)
        n, c = x.shape[0], x.shape[1]
        groups, _ = batch_split(n)
        tracking = self.training and self.track_running_stats
        # [B·G, C, *] -> [B, G·C, *]: channel g·C + c holds channel c of group g, so one kernel normalises
        # every group over its own B samples (a view for contiguous inputs)
        grouped = x.reshape(n // groups, groups * c, *x.shape[2:]).contiguous()
        stat_dtype = self.running_mean.dtype if self.running_mean is not None else x.dtype
        mean = torch.zeros(groups * c, dtype=stat_dtype, device=x.device) if tracking else None
        var = torch.zeros(groups * c, dtype=stat_dtype, device=x.device) if tracking else None
        weight = self.weight.repeat(groups) if self.weight is not None else None
        bias = self.bias.repeat(groups) if self.bias is not None else None
        # momentum 1.0 into zeroed buffers: the kernel hands back each group's mean and unbiased variance
        out = F.batch_norm(grouped, mean, var, weight, bias, True, 1.0, self.eps)
        if groups > 1:
            out = out.view(x.shape)
        if tracking:
            self.record_statistics(mean.view(groups, c), var.view(groups, c))
        return out

    def record_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Running-statistic updates from one training-mode call: mean and unbiased variance [G, C] of each
        group, repeated under `batchnorm_groups(1, repeats)`, deferred under `deferred_batchnorm_updates`."""
        repeats = _SCOPE.split[1]
        if repeats > 1:
            mean, var = mean.expand(repeats, -1), var.expand(repeats, -1)
        if _SCOPE.pending is not None:
            _SCOPE.pending.append(_Statistics(self, mean, var))
            return
        for r in range(mean.shape[0]):
            self._update_running(mean[r], var[r])

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """One update as `nn.BatchNorm` makes it: count the batch, then move by the momentum (or 1/count)."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(var, alpha=factor)
