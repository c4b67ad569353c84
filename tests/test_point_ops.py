"""Point ops against brute-force references written here (numpy, float64, loops)."""

import numpy as np
import pytest
import torch

from model import point_ops
from model.point_ops import (
    ball_queries,
    ball_query,
    farthest_point_sample,
    index_points,
    square_distance,
    three_nn_interpolate,
)


def _fps_reference(points: np.ndarray, npoint: int) -> list[int]:
    chosen, nearest = [0], ((points - points[0]) ** 2).sum(1)
    for _ in range(npoint - 1):
        chosen.append(int(nearest.argmax()))
        nearest = np.minimum(nearest, ((points - points[chosen[-1]]) ** 2).sum(1))
    return chosen


def test_farthest_point_sample_matches_brute_force_from_the_first_point():
    xyz = torch.randn(3, 300, 3, generator=torch.Generator().manual_seed(0))
    picked = farthest_point_sample(xyz, 25, "first")
    for b in range(3):
        assert picked[b].tolist() == _fps_reference(xyz[b].double().numpy(), 25)


def test_farthest_point_sample_random_start_varies_and_first_is_deterministic():
    xyz = torch.randn(2, 200, 3)
    torch.manual_seed(1)
    a = farthest_point_sample(xyz, 10, "random")
    torch.manual_seed(2)
    b = farthest_point_sample(xyz, 10, "random")
    assert not torch.equal(a, b)
    assert torch.equal(farthest_point_sample(xyz, 10, "first"), farthest_point_sample(xyz, 10, "first"))


def test_ball_query_takes_first_indices_in_radius_padded_with_the_first():
    xyz = torch.randn(2, 150, 3, generator=torch.Generator().manual_seed(3))
    centres = xyz[:, :12]
    got = ball_query(0.7, 6, square_distance(centres, xyz))
    for b in range(2):
        for s in range(12):
            d = ((xyz[b].double() - centres[b, s].double()) ** 2).sum(1)
            inside = torch.nonzero(d <= 0.49).flatten()[:6].tolist()
            assert got[b, s].tolist() == inside + [inside[0]] * (6 - len(inside))


def test_ball_queries_of_a_level_take_each_radius_first_indices_and_zeros_when_none_is_inside():
    """All radii of a level from one pass: each equals the brute-force first-in-radius list of its own radius
    (narrower radii listed before and after the widest), and a centre with no point inside gets index 0."""
    xyz = torch.randn(2, 300, 3, generator=torch.Generator().manual_seed(4))
    centres = torch.cat([xyz[:, :9], torch.full((2, 1, 3), 50.0)], dim=1)  # the last centre is far from all
    radii, nsamples = (0.5, 1.1, 0.8), (4, 40, 7)
    found = ball_queries(radii, nsamples, square_distance(centres, xyz))
    for radius, nsample, got in zip(radii, nsamples, found):
        assert got.shape == (2, 10, nsample)
        for b in range(2):
            for s in range(10):
                d = ((xyz[b].double() - centres[b, s].double()) ** 2).sum(1)
                inside = torch.nonzero(d <= radius**2).flatten()[:nsample].tolist() or [0]
                assert got[b, s].tolist() == inside + [inside[0]] * (nsample - len(inside)), (radius, b, s)


def test_square_distance_equals_pairwise_differences():
    a, b = torch.randn(2, 40, 3), torch.randn(2, 30, 3)
    expected = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)
    assert torch.allclose(square_distance(a, b), expected, atol=1e-5)


def test_three_nn_interpolation_of_a_hand_computed_case():
    to = torch.tensor([[[0.0, 0.0, 0.0]]])
    src = torch.tensor([[[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [9.0, 9, 9]]])
    feats = torch.tensor([[[1.0], [2.0], [3.0], [100.0]]])
    # squared distances 1, 4, 9 -> weights 1/(d+eps), normalised; the far point is not among the 3 nearest
    w = np.array([1 / 1.01, 1 / 4.01, 1 / 9.01])
    expected = float((w / w.sum()) @ np.array([1.0, 2.0, 3.0]))
    assert three_nn_interpolate(to, src, feats, eps=0.01).item() == pytest.approx(expected, rel=1e-6)


def test_index_points_gathers_per_batch():
    points = torch.arange(24.0).view(2, 4, 3)
    idx = torch.tensor([[3, 0], [1, 1]])
    assert index_points(points, idx).tolist() == [[[9, 10, 11], [0, 1, 2]], [[15, 16, 17], [15, 16, 17]]]


def _fps_clouds() -> list[torch.Tensor]:
    """Random clouds, one with every point twice (every distance ties: the first index must win), one with a
    batch of 1 and a pick count that is not a multiple of the compiled path's chunk."""
    g = torch.Generator().manual_seed(4)
    half = torch.randn(2, 150, 3, generator=g)
    return [torch.randn(3, 300, 3, generator=g), torch.cat([half, half], 1), torch.randn(1, 64, 3, generator=g)]


def test_farthest_point_sample_chunked_steps_equal_the_loop():
    for xyz, npoint in zip(_fps_clouds(), (37, 40, 64)):
        start = torch.randint(0, xyz.shape[1], (xyz.shape[0],), generator=torch.Generator().manual_seed(1))
        planes = xyz.permute(2, 0, 1).contiguous()
        chunked = point_ops._fps_chunked(planes, npoint, start, point_ops._eager_chunk)
        assert torch.equal(chunked, point_ops._fps_loop(planes, npoint, start))


@pytest.mark.slow  # inductor compiles two C++ graphs (a minute or more on a loaded 2-core machine)
def test_farthest_point_sample_compiled_returns_the_loops_indices_on_cpu():
    for i, (xyz, npoint) in enumerate(zip(_fps_clouds(), (37, 40, 64))):
        torch.manual_seed(i)
        loop = farthest_point_sample(xyz, npoint, "random", impl="loop")
        torch.manual_seed(i)
        assert torch.equal(farthest_point_sample(xyz, npoint, "random", impl="compiled"), loop)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_farthest_point_sample_compiled_on_gpu_returns_the_cpu_loops_indices():
    for xyz, npoint in zip(_fps_clouds(), (37, 40, 64)):
        cpu = farthest_point_sample(xyz, npoint, "first", impl="loop")
        assert torch.equal(farthest_point_sample(xyz.cuda(), npoint, "first", impl="compiled").cpu(), cpu)


def test_farthest_point_sample_refuses_an_unknown_impl():
    with pytest.raises(ValueError, match="impl must be 'loop' or 'compiled'"):
        farthest_point_sample(torch.zeros(1, 4, 3), 2, "first", impl="kernel")


@pytest.mark.slow  # compiles the FPS chunk (shared with the test above when run in the same process)
def test_model_fps_impl_compiled_reaches_the_point_encoder_with_the_loops_result(monkeypatch):
    from tiny import tiny_model_config

    from model.pointnet2 import PointNet2Encoder

    torch.manual_seed(0)
    loop = PointNet2Encoder(tiny_model_config(fps_impl="loop")).eval()
    compiled = PointNet2Encoder(tiny_model_config(fps_impl="compiled")).eval()
    compiled.load_state_dict(loop.state_dict())
    assert {sa.fps_impl for sa in (compiled.sa1, compiled.sa2, compiled.sa3)} == {"compiled"}
    xyz = torch.randn(2, 3, 256, generator=torch.Generator().manual_seed(8))
    makers, chunked = [], point_ops._fps_chunked
    monkeypatch.setattr(point_ops, "_fps_chunked", lambda *a: makers.append(a[-1]) or chunked(*a))
    with torch.no_grad():
        expected = loop(xyz)
        assert makers == []
        for (xyz_a, feats_a), (xyz_b, feats_b) in zip(expected, compiled(xyz)):
            assert torch.equal(xyz_a, xyz_b) and torch.equal(feats_a, feats_b)
    assert makers == [point_ops._compiled_chunk] * 3  # one compiled FPS per set-abstraction level
