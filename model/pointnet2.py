"""PointNet++ MSG point encoder (three set-abstraction levels) and the feature-propagation layer.

Channels follow the original (docs/original.md §1.2 b): SA1 reuses xyz as its input features (3 + 3 relative xyz),
each branch is Conv2d 1x1 (computed as a matmul: model/pointwise.py) + BN2d + ReLU layers then a max over the
neighbourhood.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.config import ModelConfig
from model.group_norm_bn import GroupedBatchNorm
from model.point_ops import (
    ball_queries,
    farthest_point_sample,
    group_points,
    index_points,
    square_distance,
    three_nn_interpolate,
)
from model.pointwise import PointwiseConv1d, PointwiseConv2d, pointwise
from model.pooled_norm import conv_norm_relu_max


def _pooled_branch(branch: nn.Sequential, grouped: torch.Tensor, first: int, pooled: bool) -> torch.Tensor:
    """[B,C,S,K] neighbourhoods -> [B,C',S]: the branch's layers from `first` on, then the max over each
    neighbourhood; if `pooled`, the last conv-BN-ReLU and the max as one `conv_norm_relu_max`, in the weights'
    precision: fp32 under autocast too (its statistics are sums over the whole batch; on CPU also faster than the
    bf16 layers: paper encoder under bf16 autocast 8.9 s -> 7.1 s), layer by layer for bf16 / fp16 weights."""
    layers = list(branch)[first:]
    for layer in layers[:-3]:
        grouped = layer(grouped)
    conv, norm = layers[-3:-1] if len(layers) >= 3 else (None, None)
    if pooled and conv is not None and norm.affine and conv.weight.dtype in (torch.float32, torch.float64):
        with torch.autocast(grouped.device.type, enabled=False):  # under autocast: in fp32, for the statistics
            return conv_norm_relu_max(conv, norm, grouped.to(conv.weight.dtype))
    for layer in layers[-3:]:
        grouped = layer(grouped)
    return grouped.max(dim=3).values


def _first_conv_on_points(
    conv: nn.Conv2d, feats: torch.Tensor, xyz: torch.Tensor, centres: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """A branch's first 1x1 conv over the neighbourhoods [feats; xyz - centre], computed as
    gather(W_f·feats + b) + W_xyz·(gather(xyz) - centre): the conv is linear and grouping is a gather, so the
    feature part runs once per source point [B,C,N] instead of once per neighbour [B,C,S,K] (K up to 128 times
    fewer products, and no C-channel grouped tensor or its gradient's scatter). The relative coordinates are the
    original's, so every product is the original's; only the order of the sums differs (fp32 rounding)."""
    c = feats.shape[1]
    weight = conv.weight.flatten(1)  # [C1, C+3]: feature columns, then xyz
    gathered = group_points(pointwise(feats, weight[:, :c], conv.bias), idx)  # [B,C1,S,K]
    relative = group_points(xyz, idx)
    relative -= centres.unsqueeze(3)
    flat = torch.baddbmm(gathered.flatten(2), weight[:, c:].expand(idx.shape[0], -1, -1), relative.flatten(2))
    return flat.view_as(gathered)


def _conv_stack(conv: type[nn.Module], norm: type[nn.Module], in_channel: int, widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        # out of place: an in-place ReLU on GroupedBatchNorm's per-cloud output costs a CopySlices copy backward
        layers += [conv(in_channel, width, 1), norm(width), nn.ReLU()]
        in_channel = width
    return nn.Sequential(*layers)


class SetAbstractionMSG(nn.Module):
    def __init__(
        self,
        npoint: int,
        radii: Sequence[float],
        nsamples: Sequence[int],
        in_channel: int,
        mlps: Sequence[Sequence[int]],
        fps_start: str,
    ) -> None:
        super().__init__()
        self.npoint, self.radii, self.nsamples, self.fps_start = npoint, tuple(radii), tuple(nsamples), fps_start
        self.branches = nn.ModuleList(_conv_stack(PointwiseConv2d, GroupedBatchNorm, in_channel + 3, m) for m in mlps)
        self.out_channels = sum(m[-1] for m in mlps)
        # `_first_conv_on_points` where the branch's input is wider than its first layer (SA2, SA3; paper SA2's
        # widest branch, 18 clouds: 1.16 s -> 0.19 s forward + backward for that layer); SA1's 6 input channels
        # are cheaper to group than its 32-64 outputs (0.27 s vs 0.36 s), so it groups its input as the original.
        self.convolve_points_first = tuple(in_channel + 3 > m[0] for m in mlps)
        # each branch's last layer and max as `conv_norm_relu_max` (paper encoder: 8.0 s -> 7.1 s forward +
        # backward); False: layer by layer, as the original (bench_model.py's lever rows, tests). Both rewrites read
        # the branches' weights outside their modules' forwards, so ZeRO-3 turns them off (jobs/training/engine.py).
        self.pool_last_layer = True
        self.fps_impl = "loop"  # set from ModelConfig.fps_impl by PointNet2Encoder

    def layer_by_layer(self) -> None:
        """Both rewrites off: every layer through its own module's forward, as the original (ZeRO-3 needs it)."""
        self.convolve_points_first = (False,) * len(self.convolve_points_first)
        self.pool_last_layer = False

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xyz [B,3,N], feats [B,C,N] -> centres [B,3,S], features [B,C_out,S]."""
        xyz_t = xyz.transpose(1, 2)
        picks = farthest_point_sample(xyz_t, self.npoint, self.fps_start, self.fps_impl)
        centres = index_points(xyz_t, picks)  # [B,S,3]
        sqdist = square_distance(centres, xyz_t)  # [B,S,N], one for all radii
        centres = centres.transpose(1, 2)  # [B,3,S]
        source = None
        outputs = []
        neighbourhoods = ball_queries(self.radii, self.nsamples, sqdist)  # [B,S,K] per radius
        for idx, branch, early in zip(neighbourhoods, self.branches, self.convolve_points_first):
            if early:
                h = _first_conv_on_points(branch[0], feats, xyz, centres, idx)
                outputs.append(_pooled_branch(branch, h, 1, self.pool_last_layer))
                continue
            if source is None:
                source = torch.cat([feats, xyz], dim=1)  # [B,C+3,N]: one gather per branch
            # Gathered straight into [B,C+3,S,K] (contiguous, channels first): BatchNorm's CPU kernel for
            # channels-last inputs loses precision (docs/fidelity.md), and no transposing copy is needed.
            grouped = group_points(source, idx)
            grouped[:, -3:] -= centres.unsqueeze(3)  # xyz relative to the centre, as the original
            outputs.append(_pooled_branch(branch, grouped, 0, self.pool_last_layer))  # [B,C',S]
        return centres, torch.cat(outputs, dim=1)


def all_layer_by_layer(model: nn.Module) -> None:
    """Every set-abstraction level of `model` layer by layer (`SetAbstractionMSG.layer_by_layer`)."""
    for level in model.modules():
        if isinstance(level, SetAbstractionMSG):
            level.layer_by_layer()


class PointNet2Encoder(nn.Module):
    """xyz [B,3,N] -> [(xyz_l, feats_l)] for l = 0..3; level 0 is the input with xyz as its features."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.sa1 = SetAbstractionMSG(cfg.sa1_npoint, cfg.sa1_radii, cfg.sa1_nsample, 3, cfg.sa1_mlps, cfg.fps_start)
        self.sa2 = SetAbstractionMSG(
            cfg.sa2_npoint, cfg.sa2_radii, cfg.sa2_nsample, self.sa1.out_channels, cfg.sa2_mlps, cfg.fps_start
        )
        self.sa3 = SetAbstractionMSG(
            cfg.sa3_npoint, cfg.sa3_radii, cfg.sa3_nsample, self.sa2.out_channels, cfg.sa3_mlps, cfg.fps_start
        )
        self.channels = (3, self.sa1.out_channels, self.sa2.out_channels, self.sa3.out_channels)
        for sa in (self.sa1, self.sa2, self.sa3):
            sa.fps_impl = cfg.fps_impl

    def forward(self, xyz: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        levels = [(xyz, xyz)]
        for sa in (self.sa1, self.sa2, self.sa3):
            levels.append(sa(*levels[-1]))
        return levels


class FeaturePropagation(nn.Module):
    """Upsample features from `xyz_from` to `xyz_to` (3-NN inverse distance) and fuse with the skip features."""

    def __init__(self, in_channel: int, mlp: Sequence[int], eps: float = 0.01) -> None:
        super().__init__()
        self.mlp = _conv_stack(PointwiseConv1d, GroupedBatchNorm, in_channel, mlp)
        self.eps = eps

    def forward(
        self, xyz_to: torch.Tensor, xyz_from: torch.Tensor, skip: torch.Tensor | None, feats_from: torch.Tensor
    ) -> torch.Tensor:
        """xyz_to [B,3,N], xyz_from [B,3,S], skip [B,C1,N] | None, feats_from [B,C2,S] -> [B,mlp[-1],N]."""
        up = three_nn_interpolate(
            xyz_to.transpose(1, 2), xyz_from.transpose(1, 2), feats_from.transpose(1, 2), self.eps
        )
        up = up.transpose(1, 2)
        return self.mlp(up if skip is None else torch.cat([skip, up], dim=1))
