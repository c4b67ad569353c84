"""benchmarks/reference_original.py (the original's point code) against a transcription of original.md §1.2 written here
(numpy / per-sample loops, float64), and the project's point encoder against the reference in eval mode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_model_config

from model.pointnet2 import FeaturePropagation, PointNet2Encoder, SetAbstractionMSG

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "reference_original.py"
_spec = importlib.util.spec_from_file_location("reference_original", _PATH)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

B, N = 2, 160


def _cloud(seed: int, b: int = B, n: int = N) -> torch.Tensor:
    """[b,n,3] float64 points in the unit ball (as the data: centred, divided by the max radius)."""
    xyz = torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return xyz / xyz.norm(dim=-1, keepdim=True).amax(1, keepdim=True)


def _starts(seed: int, b: int, n: int) -> list[int]:
    """Spec: FPS starts at `torch.randint(0, N, (B,))` drawn from the default generator."""
    torch.manual_seed(seed)
    return torch.randint(0, n, (b,)).tolist()


# ---- transcription of docs/original.md §1.2 (b) and (h) ---------------------------------------------------


def spec_fps(points: np.ndarray, npoint: int, start: int) -> list[int]:
    """Pick the start, then repeatedly the point farthest from everything picked so far."""
    picked, nearest = [], np.full(len(points), np.inf)
    current = start
    for _ in range(npoint):
        picked.append(current)
        nearest = np.minimum(nearest, ((points - points[current]) ** 2).sum(1))
        current = int(np.argmax(nearest))
    return picked


def spec_ball_query(points: np.ndarray, centre: np.ndarray, radius: float, k: int) -> list[int]:
    """The first k indices (in index order) within the radius, padded with the first one found."""
    d = ((points - centre) ** 2).sum(1)
    inside = [j for j in range(len(points)) if d[j] <= radius * radius][:k]
    return inside + [inside[0]] * (k - len(inside))


def spec_layers(stack: torch.nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """(W [out,in], bias, gamma, beta, eps) of each Conv 1x1 + BN layer of a conv stack."""
    mods = list(stack.children())
    convs = [m for m in mods if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    norms = [m for m in mods if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return [(c.weight.flatten(1), c.bias, n.weight, n.bias, n.eps) for c, n in zip(convs, norms)]


def spec_mlp(x: torch.Tensor, layers) -> torch.Tensor:
    """x [..., C]: per-position linear, BatchNorm with the batch's biased statistics over all positions, ReLU."""
    for w, bias, gamma, beta, eps in layers:
        y = x @ w.T + bias
        dims = tuple(range(y.dim() - 1))
        mean, var = y.mean(dims), y.var(dims, unbiased=False)
        x = torch.clamp((y - mean) / torch.sqrt(var + eps) * gamma + beta, min=0)
    return x


def spec_set_abstraction(sa: SetAbstractionMSG, xyz: torch.Tensor, feats: torch.Tensor, starts: list[int]):
    """xyz [B,N,3], feats [B,N,C] -> centres [B,S,3], features [B,S,C']: FPS, then per radius the ball query,
    [features, xyz - centre] per neighbour, the branch MLP, a max over the neighbours; branches concatenated."""
    pts = xyz.detach().numpy()
    picks = [spec_fps(pts[b], sa.npoint, starts[b]) for b in range(len(pts))]
    centres = torch.stack([xyz[b, picks[b]] for b in range(len(pts))])
    outputs = []
    for radius, k, branch in zip(sa.radii, sa.nsamples, sa.branches):
        clouds = []
        for b in range(len(pts)):
            rows = []
            for centre in centres[b]:
                nb = spec_ball_query(pts[b], centre.detach().numpy(), radius, k)
                rows.append(torch.cat([feats[b, nb], xyz[b, nb] - centre], dim=1))  # [K,C+3]
            clouds.append(torch.stack(rows))
        outputs.append(spec_mlp(torch.stack(clouds), spec_layers(branch)).amax(dim=2))  # [B,S,C']
    return centres, torch.cat(outputs, dim=-1), picks


def spec_feature_propagation(fp: FeaturePropagation, xyz_to, xyz_from, skip, feats_from, eps: float = 0.01):
    """xyz_to [B,N,3], xyz_from [B,S,3], skip [B,N,C1], feats_from [B,S,C2] -> [B,N,C']: inverse squared
    distance weights 1/(d²+eps) over the 3 nearest, normalised; [skip, interpolated]; the MLP."""
    out = []
    for b in range(len(xyz_to)):
        rows = []
        for n in range(len(xyz_to[b])):
            d = ((xyz_from[b] - xyz_to[b, n]) ** 2).sum(1)
            near = np.argsort(d.detach().numpy(), kind="stable")[:3].tolist()
            w = 1.0 / (d[near] + eps)
            rows.append((w / w.sum()) @ feats_from[b, near])
        out.append(torch.cat([skip[b], torch.stack(rows)], dim=1))
    return spec_mlp(torch.stack(out), spec_layers(fp.mlp))


# ---- the reference against the transcription ------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7])
def test_reference_fps_is_masked_update_from_the_seeded_random_start(seed):
    xyz = _cloud(seed)
    starts = _starts(seed, B, N)
    assert any(starts), "the seed should give a non-zero start"
    torch.manual_seed(seed)
    got = ref.farthest_point_sample(xyz, 40)
    for b in range(B):
        assert got[b].tolist() == spec_fps(xyz[b].numpy(), 40, starts[b])


def test_reference_ball_query_takes_first_in_radius_padded_with_the_first():
    xyz = _cloud(1)
    centres = xyz[:, ::7]
    got = ref.query_ball_point(0.35, 10, xyz, centres)
    for b in range(B):
        for s in range(centres.shape[1]):
            assert got[b, s].tolist() == spec_ball_query(xyz[b].numpy(), centres[b, s].numpy(), 0.35, 10)


def test_reference_grouping_gathers_each_clouds_points():
    feats = torch.arange(2 * 5 * 3, dtype=torch.float64).view(2, 5, 3)
    idx = torch.tensor([[[4, 0], [1, 1]], [[2, 3], [0, 4]]])
    got = ref.index_points(feats, idx)
    for b in range(2):
        for s in range(2):
            for k in range(2):
                assert got[b, s, k].tolist() == feats[b, idx[b, s, k]].tolist()


def _grads(out: torch.Tensor, probe: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return torch.autograd.grad((out * probe).sum(), inputs)


def test_reference_set_abstraction_forward_and_backward_match_the_spec_in_training_mode():
    torch.manual_seed(0)
    sa = SetAbstractionMSG(24, (0.3, 0.6), (8, 16), 5, ((8, 16), (8, 12)), "random").double().train()
    xyz = _cloud(2).requires_grad_()
    feats = torch.randn(B, N, 5, dtype=torch.float64, requires_grad=True)
    params = [p for p in sa.parameters()]
    starts = _starts(11, B, N)

    torch.manual_seed(11)
    new_xyz, out = ref.set_abstraction_forward(sa, xyz.transpose(1, 2), feats.transpose(1, 2))
    centres, expected, _ = spec_set_abstraction(sa, xyz, feats, starts)
    assert torch.equal(new_xyz.transpose(1, 2), centres)
    assert out.shape == (B, 28, 24)
    torch.testing.assert_close(out.transpose(1, 2), expected, rtol=0, atol=1e-10)

    probe = torch.randn(B, 24, 28, dtype=torch.float64)
    got = _grads(out.transpose(1, 2), probe, [xyz, feats, *params])
    want = _grads(expected, probe, [xyz, feats, *params])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-9)


def test_reference_feature_propagation_forward_and_backward_match_the_spec_in_training_mode():
    torch.manual_seed(0)
    fp = FeaturePropagation(6 + 7, (16, 8), eps=123.0).double().train()  # the reference's epsilon is 0.01
    xyz_to, xyz_from = _cloud(3, n=50).requires_grad_(), _cloud(4, n=12).requires_grad_()
    skip = torch.randn(B, 50, 6, dtype=torch.float64, requires_grad=True)
    feats_from = torch.randn(B, 12, 7, dtype=torch.float64, requires_grad=True)
    inputs = [xyz_to, xyz_from, skip, feats_from, *fp.parameters()]

    out = ref.feature_propagation_forward(
        fp, xyz_to.transpose(1, 2), xyz_from.transpose(1, 2), skip.transpose(1, 2), feats_from.transpose(1, 2)
    ).transpose(1, 2)
    expected = spec_feature_propagation(fp, xyz_to, xyz_from, skip, feats_from, eps=0.01)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)

    probe = torch.randn(B, 50, 8, dtype=torch.float64)
    for g, w in zip(_grads(out, probe, inputs), _grads(expected, probe, inputs)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-9)


# ---- the project against the reference ------------------------------------------------------------------------


def _random_statistics(module: torch.nn.Module) -> None:
    """Eval-mode BatchNorm with non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(5)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_project_point_encoder_matches_the_reference_in_eval_mode_given_the_same_fps_start():
    torch.manual_seed(0)
    encoder = PointNet2Encoder(tiny_model_config(fps_start="random")).double().eval()
    _random_statistics(encoder)
    xyz = _cloud(6, b=3, n=256).transpose(1, 2).contiguous()
    torch.manual_seed(21)
    ours = encoder(xyz)
    torch.manual_seed(21)
    with ref.original_ops():
        theirs = encoder(xyz)
    for (xyz_a, feats_a), (xyz_b, feats_b) in zip(ours, theirs):
        assert torch.equal(xyz_a, xyz_b)  # the same FPS picks at every level
        torch.testing.assert_close(feats_a, feats_b, rtol=0, atol=1e-10)


def test_project_feature_propagation_matches_the_reference_in_eval_mode():
    torch.manual_seed(0)
    fp = FeaturePropagation(6 + 7, (16, 8), eps=ref.ORIGINAL_FP_EPS).double().eval()
    _random_statistics(fp)
    xyz_to, xyz_from = _cloud(3, n=50).transpose(1, 2), _cloud(4, n=12).transpose(1, 2)
    skip, feats_from = torch.randn(B, 6, 50, dtype=torch.float64), torch.randn(B, 7, 12, dtype=torch.float64)
    ours = fp(xyz_to, xyz_from, skip, feats_from)
    with ref.original_ops():
        theirs = fp(xyz_to, xyz_from, skip, feats_from)
    # the project computes squared distances in float32 whatever the input dtype (so do the 3-NN weights)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
