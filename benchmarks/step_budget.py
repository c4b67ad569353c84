"""What a training step's time is spent on, for bench_model.py's demo-step row: its counted FLOPs against this
machine's dense matmul, and the share of the point geometry, which has no counted FLOPs at all.

The geometry of one step, on the coordinates the model's own encoder produces: per set-abstraction level the
farthest-point sampling, the centre-to-point distance matrix and the ball queries of all its radii; per
feature-propagation level the point-to-centre distance matrix and its 3-nearest search. These are the project's
functions (model/point_ops.py), run as the step runs them, without autograd.
"""

from __future__ import annotations

import time

import torch

import model.pointnet2
from model.point_ops import ball_queries, farthest_point_sample, index_points, square_distance
from model.pointnet2 import PointNet2Encoder


def matmul_gflops(dtype: torch.dtype, rounds: int) -> float:
    """This machine's dense 2048² matmul rate, median of at least 3 runs after a warm-up."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    times = []
    for _ in range(max(rounds, 3)):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / sorted(times)[len(times) // 2] / 1e9


def useful_flops(step, gathered_interpolation) -> int:
    """FLOPs of one call of `step`, counted with `gathered_interpolation` in place of the dense 3-NN
    interpolation matrix, whose multiplications by zeros are not useful work."""
    from torch.utils.flop_counter import FlopCounterMode

    dense, model.pointnet2.three_nn_interpolate = model.pointnet2.three_nn_interpolate, gathered_interpolation
    try:
        with FlopCounterMode(display=False) as counter:
            step()
    finally:
        model.pointnet2.three_nn_interpolate = dense
    return counter.get_total_flops()


def geometry(encoder: PointNet2Encoder, xyz: torch.Tensor):
    """A function running the step's point geometry on clouds `xyz` [B,3,N] (see the module docstring); the
    level coordinates come from one forward of `encoder`, so every level sees the sizes the step sees."""
    with torch.no_grad():
        coords = [level.transpose(1, 2).contiguous() for level, _ in encoder(xyz)]  # [B,N_l,3], l = 0..3
    levels = (encoder.sa1, encoder.sa2, encoder.sa3)

    @torch.no_grad()
    def run() -> None:
        for sa, source in zip(levels, coords):
            centres = index_points(source, farthest_point_sample(source, sa.npoint, sa.fps_start, sa.fps_impl))
            ball_queries(sa.radii, sa.nsamples, square_distance(centres, source))
        for fine, coarse in zip(coords[:3], coords[1:]):
            if coarse.shape[1] > 1:
                square_distance(fine, coarse).topk(3, dim=-1, largest=False)

    return run
