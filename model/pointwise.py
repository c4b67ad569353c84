"""1x1 convolutions as one batched matmul: the PointNet++ MLPs of the set-abstraction branches and the
feature-propagation layers.

On CPU, oneDNN's convolution takes a 1x1 kernel over [B,C,S,K] at 1.5-3x the time of the same product as a matmul
forward and 2.5-10x backward (benchmarks/bench_model.py, `paper-encoder`). The modules keep `nn.Conv1d` /
`nn.Conv2d`'s parameters and state-dict keys (weight [C_out, C_in, 1(, 1)], bias), so checkpoints of either load
into the other; results differ from the convolution by fp32 summation order only.
"""

from __future__ import annotations

import torch
from torch import nn


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [B,C_in,*] -> [B,C_out,*] with weight [C_out,C_in,1,...]: one [C_out,C_in] x [C_in,L] product per sample
    (L = the product of the trailing sizes), the bias ([C_out], or [B,C_out]: one per sample) added by the same
    kernel."""
    batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    flat = x.reshape(batch, c_in, -1)
    matrix = weight.reshape(c_out, c_in).expand(batch, c_out, c_in)
    if bias is None:
        out = torch.bmm(matrix, flat)
    else:
        out = torch.baddbmm(bias.reshape(-1, c_out, 1).expand(batch, c_out, flat.shape[2]), matrix, flat)
    return out.view(batch, c_out, *x.shape[2:])


class PointwiseConv1d(nn.Conv1d):
    """`nn.Conv1d(c_in, c_out, 1)` computed by `pointwise`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise(x, self.weight, self.bias)


class PointwiseConv2d(nn.Conv2d):
    """`nn.Conv2d(c_in, c_out, 1)` computed by `pointwise`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise(x, self.weight, self.bias)
