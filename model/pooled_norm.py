"""A set-abstraction branch's last layer, Conv 1x1 -> BatchNorm -> ReLU -> max over the neighbourhood, without
writing the normalised tensor.

BatchNorm and ReLU act per channel as y = relu(a·z + b), increasing in z where a > 0 (BatchNorm's weight is
positive) and decreasing where a < 0, so max_k y = relu(a·ext_k z + b) with ext = max or min. The conv's weight
and bias are multiplied by the sign of BatchNorm's weight, which turns every channel's extreme into a max of
z' = sign·z; then only BatchNorm's statistics of z', its max and a few [N, C, S] tensors are computed, instead of
the normalised and the rectified [N, C, S, K] tensors and their gradients. Backward is one pass: BatchNorm's
gradient given an upstream gradient that is zero except at each neighbourhood's maximum (`_NormalisedMax`).
Exact in real arithmetic (ties in the max are duplicated neighbours: the same point, the same gradient wherever
it lands); float results differ from the layer-by-layer path by rounding. BatchNorm's running statistics and
per-cloud groups (`GroupedBatchNorm`) are kept: the same updates from the same statistics.

The statistics are two fast row reductions (sum, sum of squares: 0.05 s where `torch.var_mean` takes 0.49 s on
paper SA1's widest branch). E[z²] - E[z]² loses precision when a channel's mean is large against its spread, so
the conv's bias is shifted by each cloud group's mean of z first, computed exactly from the input's mean (the conv
is affine): the variance is then taken of centred values (8e-7 of the float64 variance at that size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.group_norm_bn import GroupedBatchNorm, batch_split
from model.pointwise import pointwise


def _rows(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B·G, C, S, K] -> [B, G·C, S·K]: row (b, g·C + c) holds channel c of sample b·G + g."""
    n, c = x.shape[:2]
    return x.reshape(n // groups, groups * c, -1)


class _NormalisedMax(torch.autograd.Function):
    """z [N,C,S,K] -> (xhat at each neighbourhood's max [N,C,S], batch mean [G·C], biased variance [G·C]) with
    the statistics of each channel of each group of N/G interleaved samples, as `GroupedBatchNorm`."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, groups: int, eps: float):
        n, c, s, k = z.shape
        rows = _rows(z, groups)
        count = rows.shape[0] * rows.shape[2]
        mean = rows.sum(dim=2).sum(dim=0) / count
        var = (torch.linalg.vector_norm(rows, dim=2).square().sum(dim=0) / count - mean.square()).clamp_min(0.0)
        rstd = (var + eps).rsqrt()
        top, where = z.max(dim=3)
        xhat = (top.view(n // groups, groups * c, s) - mean[:, None]) * rstd[:, None]
        ctx.save_for_backward(z, where, mean, rstd, xhat)
        ctx.groups = groups
        ctx.mark_non_differentiable(mean, var)
        return xhat.view(n, c, s), mean, var

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor):
        z, where, mean, rstd, xhat = ctx.saved_tensors
        n, c, s, k = z.shape
        groups = ctx.groups
        count = (n // groups) * s * k
        g = grad.reshape(n // groups, groups * c, s)
        # BatchNorm's backward, dz = rstd·(G - mean(G) - xhat·mean(G·xhat)) with G zero off the maxima:
        # an affine map of z per channel, plus rstd·g scattered onto the maxima
        mean_g = g.sum(dim=(0, 2)) / count
        mean_gx = (g * xhat).sum(dim=(0, 2)) / count
        slope = -rstd * rstd * mean_gx
        offset = -rstd * mean_g - slope * mean
        dz = torch.addcmul(offset[:, None], _rows(z, groups), slope[:, None]).view(n, c, s, k)
        dz.scatter_add_(3, where.unsqueeze(3), (g * rstd[:, None]).reshape(n, c, s, 1))
        return dz, None, None


def conv_norm_relu_max(conv: nn.Conv2d, norm: GroupedBatchNorm, h: torch.Tensor) -> torch.Tensor:
    """h [N,C_in,S,K] -> max_k relu(norm(conv(h))) [N,C,S], in training mode (batch statistics, running
    statistics updated as `norm` would) and in eval mode (running statistics)."""
    sign = torch.where(norm.weight.detach() >= 0, 1.0, -1.0).to(norm.weight.dtype)
    weight, bias = conv.weight * sign.view(-1, 1, 1, 1), conv.bias * sign  # z' = sign·conv(h)
    scale = norm.weight * sign  # |γ|, with the gradient sign(γ) = +1 also at γ = 0 (abs' is 0 there: γ would stick)
    if not (norm.training or norm.running_mean is None):
        top = pointwise(h, weight, bias).max(dim=3).values
        rstd = (norm.running_var + norm.eps).rsqrt()
        return F.relu(scale[:, None] * (top - (sign * norm.running_mean)[:, None]) * rstd[:, None] + norm.bias[:, None])
    groups, _ = batch_split(h.shape[0])
    count = h.shape[0] // groups * h.shape[2] * h.shape[3]
    if count < 2:  # as nn.BatchNorm: one value per channel has no variance
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(h.shape)}")
    with torch.no_grad():  # each group's mean of z', from the mean of h: the shift that centres z'
        inputs = _rows(h, groups)
        h_mean = (inputs.sum(dim=2).sum(dim=0) / (inputs.shape[0] * inputs.shape[2])).view(groups, -1)
        shift = h_mean @ weight.detach().flatten(1).T + bias.detach()  # [G, C]
    per_sample = bias - shift.repeat(h.shape[0] // groups, 1)  # sample b·G + g: bias - shift[g]
    xhat, mean, var = _NormalisedMax.apply(pointwise(h, weight, per_sample), groups, norm.eps)
    if norm.training and norm.track_running_stats:
        mean = (mean.view(groups, -1) + shift) * sign
        norm.record_statistics(mean, var.view(groups, -1) * (count / (count - 1)))
    return F.relu(scale[:, None] * xhat + norm.bias[:, None])
