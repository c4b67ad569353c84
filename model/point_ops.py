"""PointNet++ point operations, vectorised over the batch and the points.

Only farthest-point sampling keeps a loop, over the `npoint` picks (each pick depends on the previous);
ball query and 3-NN interpolation are single tensor expressions.
"""

from __future__ import annotations

from typing import Literal

import torch


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points [B,N,C], idx [B,...] -> [B,...,C]."""
    batch, channels = points.shape[0], points.shape[-1]
    flat = idx.reshape(batch, -1, 1).expand(-1, -1, channels)
    return torch.gather(points, 1, flat).reshape(*idx.shape, channels)


def _coordinate_dtype(xyz: torch.Tensor) -> torch.dtype:
    """Coordinates are compared in fp32 whatever the compute precision (fp64 stays fp64, for exact checks)."""
    return torch.float64 if xyz.dtype == torch.float64 else torch.float32


def group_points(feats: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """feats [B,C,N], idx [B,...] -> [B,C,...], channels first (the layout the 1x1 convs and BatchNorm take)."""
    batch, channels = feats.shape[:2]
    flat = idx.reshape(batch, 1, -1).expand(-1, channels, -1)
    return torch.gather(feats, 2, flat).reshape(batch, channels, *idx.shape[1:])


def square_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [B,N,3], b [B,M,3] -> squared distances [B,N,M] as |a|^2 + |b|^2 - 2ab (one batched matmul instead of
    a [B,N,M,3] difference tensor), clamped at 0 against rounding."""
    a, b = a.to(_coordinate_dtype(a)), b.to(_coordinate_dtype(a))
    with torch.autocast(a.device.type, enabled=False):  # coordinates stay fp32 under bf16 autocast
        ab = torch.baddbmm(a.pow(2).sum(-1).unsqueeze(2), a, b.transpose(1, 2), alpha=-2.0)
    return (ab + b.pow(2).sum(-1).unsqueeze(1)).clamp_min_(0.0)


@torch.no_grad()
@torch.autocast("cpu", enabled=False)
@torch.autocast("cuda", enabled=False)
def farthest_point_sample(xyz: torch.Tensor, npoint: int, start: Literal["random", "first"] = "random") -> torch.Tensor:
    """xyz [B,N,3] -> indices [B,npoint]; `random` starts at a random point as the original, `first` at 0.
    Coordinates are held as three [B,N] planes so each pick is a few in-place elementwise ops on contiguous
    rows (2x faster than a batched mat-vec with an inner dimension of 3) with the original's exact differences."""
    batch, n, _ = xyz.shape
    planes = xyz.to(_coordinate_dtype(xyz)).permute(2, 0, 1).contiguous()  # [3,B,N]
    flat = planes.view(3, batch * n)
    row_start = torch.arange(batch, device=xyz.device) * n
    picked = torch.empty(batch, npoint, dtype=torch.long, device=xyz.device)
    nearest = torch.full((batch, n), float("inf"), dtype=planes.dtype, device=xyz.device)
    if start == "random":
        farthest = torch.randint(0, n, (batch,), device=xyz.device)
    else:
        farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    diff, distance = torch.empty_like(planes), torch.empty_like(nearest)
    for i in range(npoint):
        picked[:, i] = farthest
        torch.sub(planes, flat[:, row_start + farthest].unsqueeze(2), out=diff)
        torch.sum(diff.mul_(diff), 0, out=distance)
        torch.minimum(nearest, distance, out=nearest)
        farthest = nearest.argmax(-1)
    return picked


@torch.no_grad()
def ball_query(radius: float, nsample: int, sqdist: torch.Tensor) -> torch.Tensor:
    """The original's semantics without its full sort: for each centre, the first `nsample` point indices (in
    index order) within `radius`, padded with the first one found. sqdist [B,S,N] (centres to points, from
    `square_distance`, shared by a level's radii) -> [B,S,nsample]. Points outside the radius get key index + N,
    so a partial top-k of the keys finds the first in-radius ones."""
    inside = sqdist <= radius * radius
    n = sqdist.shape[-1]
    order = torch.arange(n, dtype=torch.float32, device=sqdist.device)  # exact: N < 2^24
    idx = torch.where(inside, order, order + n).topk(nsample, dim=-1, largest=False, sorted=True).indices
    return torch.where(torch.gather(inside, -1, idx), idx, idx[..., :1])


def three_nn_interpolate(
    xyz_to: torch.Tensor, xyz_from: torch.Tensor, feats_from: torch.Tensor, eps: float
) -> torch.Tensor:
    """Inverse squared-distance weights over the 3 nearest points: xyz_to [B,N,3], xyz_from [B,S,3],
    feats_from [B,S,C] -> [B,N,C]. `eps` is 0.01 in the released model, 1e-8 in IAGNet/LASO.
    The weights are scattered into a dense [B,N,S] interpolation matrix and applied with one bmm: a [B,N,3,C]
    gathered product costs 1.5x more time forward and backward at N=2048, S=256."""
    if xyz_from.shape[1] == 1:
        return feats_from.expand(-1, xyz_to.shape[1], -1)
    dist, idx = square_distance(xyz_to, xyz_from).topk(3, dim=-1, largest=False)
    weight = 1.0 / (dist + eps)
    weight = (weight / weight.sum(-1, keepdim=True)).to(feats_from.dtype)
    matrix = feats_from.new_zeros(*idx.shape[:2], xyz_from.shape[1]).scatter_(-1, idx, weight)
    return torch.bmm(matrix, feats_from)
