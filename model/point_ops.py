"""PointNet++ point operations, vectorised over the batch and the points.

Only farthest-point sampling keeps a loop, over the `npoint` picks (each pick depends on the previous);
ball query and 3-NN interpolation are tensor expressions over the whole batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
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
    # in place: the same sums in the same order, without a fresh [B,N,M] buffer (SA1 of the demo: 25 -> 14 ms)
    return ab.add_(b.pow(2).sum(-1).unsqueeze(1)).clamp_min_(0.0)


FpsImpl = Literal["loop", "compiled"]
FPS_CHUNK = 8
"""Picks per call of the compiled FPS function: one Python call and guard check per 8 picks, and a graph small
enough to compile in seconds."""


@torch.no_grad()
@torch.autocast("cpu", enabled=False)
@torch.autocast("cuda", enabled=False)
def farthest_point_sample(
    xyz: torch.Tensor, npoint: int, start: Literal["random", "first"] = "random", impl: FpsImpl = "loop"
) -> torch.Tensor:
    """xyz [B,N,3] -> indices [B,npoint]; `random` starts at a random point as the original, `first` at 0.
    `impl="loop"`: eager ops per pick (the CPU path). `impl="compiled"`: the same arithmetic through
    torch.compile, `FPS_CHUNK` picks per call, for GPUs where the loop's small kernels are launch-bound; it returns
    the same indices (tests/test_point_ops.py checks it on CPU with inductor)."""
    batch, n, _ = xyz.shape
    if start == "random":
        farthest = torch.randint(0, n, (batch,), device=xyz.device)
    else:
        farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    planes = xyz.to(_coordinate_dtype(xyz)).permute(2, 0, 1).contiguous()  # [3,B,N]
    if impl == "loop":
        return _fps_loop(planes, npoint, farthest)
    if impl == "compiled":
        return _fps_chunked(planes, npoint, farthest, _compiled_chunk)
    raise ValueError(f"farthest_point_sample: impl must be 'loop' or 'compiled', got {impl!r}")


def _fps_loop(planes: torch.Tensor, npoint: int, farthest: torch.Tensor) -> torch.Tensor:
    """Coordinates as three [B,N] planes so each pick is a few in-place elementwise ops on contiguous rows (2x
    faster than a batched mat-vec with an inner dimension of 3) with the original's exact differences."""
    _, batch, n = planes.shape
    flat = planes.view(3, batch * n)
    row_start = torch.arange(batch, device=planes.device) * n
    picked = torch.empty(batch, npoint, dtype=torch.long, device=planes.device)
    nearest = torch.full((batch, n), float("inf"), dtype=planes.dtype, device=planes.device)
    diff, distance = torch.empty_like(planes), torch.empty_like(nearest)
    for i in range(npoint):
        picked[:, i] = farthest
        torch.sub(planes, flat[:, row_start + farthest].unsqueeze(2), out=diff)
        torch.sum(diff.mul_(diff), 0, out=distance)
        torch.minimum(nearest, distance, out=nearest)
        farthest = nearest.argmax(-1)
    return picked


def fps_chunk(
    planes: torch.Tensor, nearest: torch.Tensor, farthest: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`steps` picks from `farthest` on: planes [3,B,N], nearest [B,N] (squared distance to the picked set),
    farthest [B] -> (nearest, next pick, picks [B,steps]). The arithmetic of `_fps_loop`: per coordinate
    difference, square, the three squares summed in x, y, z order, minimum, first index of the maximum."""
    picks = []
    for _ in range(steps):
        picks.append(farthest)
        centre = torch.gather(planes, 2, farthest.view(1, -1, 1).expand(3, -1, 1))  # [3,B,1]
        diff = planes - centre
        nearest = torch.minimum(nearest, (diff * diff).sum(0))
        farthest = nearest.argmax(-1)
    return nearest, farthest, torch.stack(picks, 1)


@functools.cache
def _compiled_chunk(steps: int):
    def chunk(planes: torch.Tensor, nearest: torch.Tensor, farthest: torch.Tensor):
        return fps_chunk(planes, nearest, farthest, steps)

    # dynamic: one compilation serves every level's and batch's shapes; emulate_precision_casts turns off
    # Triton's multiply-add fusion, which would round the squared distances differently from the eager path
    # (inductor's C++ backend already compiles with -ffp-contract=off).
    return torch.compile(chunk, fullgraph=True, dynamic=True, options={"emulate_precision_casts": True})


def _eager_chunk(steps: int):
    return functools.partial(fps_chunk, steps=steps)


def _fps_chunked(planes: torch.Tensor, npoint: int, farthest: torch.Tensor, make_chunk) -> torch.Tensor:
    """`npoint` picks in calls of `make_chunk(FPS_CHUNK)` (and one of the remainder)."""
    _, batch, n = planes.shape
    nearest = torch.full((batch, n), float("inf"), dtype=planes.dtype, device=planes.device)
    picked = []
    for done in range(0, npoint, FPS_CHUNK):
        nearest, farthest, picks = make_chunk(min(FPS_CHUNK, npoint - done))(planes, nearest, farthest)
        picked.append(picks)
    return torch.cat(picked, 1)


@torch.no_grad()
def ball_query(radius: float, nsample: int, sqdist: torch.Tensor) -> torch.Tensor:
    """One radius of `ball_queries`: sqdist [B,S,N] -> [B,S,nsample]."""
    return ball_queries((radius,), (nsample,), sqdist)[0]


@torch.no_grad()
def ball_queries(radii: Sequence[float], nsamples: Sequence[int], sqdist: torch.Tensor) -> list[torch.Tensor]:
    """The original's ball query for each radius of a level, without its full sort: for each centre, the first
    `nsample` point indices (in index order) within `radius`, padded with the first one found (all 0 if none).
    sqdist [B,S,N] (centres to points, from `square_distance`) -> one [B,S,nsample] per radius.

    Sparse, not a top-k over every row: one pass lists the (centre, point) pairs inside the widest radius in
    row-major order (so each centre's points come in index order), a narrower radius keeps the pairs whose
    distance is inside it, and a pair's rank within its row is its position minus the row's start (demo SA1,
    18 clouds x 256 centres x 2048 points, radii 0.1 and 0.2: 65 ms -> 22 ms; paper SA1 270 -> 190 ms)."""
    rows, n = sqdist.shape[0] * sqdist.shape[1], sqdist.shape[2]
    flat = sqdist.reshape(-1)
    widest = max(radii)
    pairs = (flat <= widest * widest).nonzero().squeeze(1)  # linear indices into [B·S, N], ascending
    pair_sqdist = flat[pairs]
    found = []
    for radius, nsample in zip(radii, nsamples):
        inside = pairs if radius == widest else pairs[pair_sqdist <= radius * radius]
        row = inside // n
        counts = torch.bincount(row, minlength=rows)
        rank = torch.arange(inside.shape[0], device=inside.device) - (counts.cumsum(0) - counts)[row]
        # ranks past nsample all land in a spare last column, dropped after
        idx = torch.zeros(rows, nsample + 1, dtype=torch.long, device=sqdist.device)
        idx.view(-1)[row * (nsample + 1) + rank.clamp_max_(nsample)] = inside - row * n
        idx = idx[:, :nsample]
        slot = torch.arange(nsample, device=sqdist.device)
        idx = torch.where(slot < counts.unsqueeze(1), idx, idx[:, :1])
        found.append(idx.view(*sqdist.shape[:2], nsample))
    return found


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
