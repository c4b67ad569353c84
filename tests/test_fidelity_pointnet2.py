"""Issue 16 §2: the project's PointNet++ layers in training mode (forward and gradients) against an independent
transcription of the original's `PointNet2_utils` layers, written here from docs/original.md §1.2 (b), (h).

The transcription keeps the original's way of computing: farthest-point sampling with a masked update, ball query
by sorting a full index row, grouping by advanced indexing with a repeated batch index, the branch MLP on a
[B, C, K, S] permuted tensor, max over K; 3-NN by sorting each distance row and a gathered weighted sum.

In fp64 both agree to 1e-9 (rounding only). In fp32 they agree to 1e-4 of the largest gradient: before the fix the
project handed BatchNorm a channels-last tensor, whose CPU kernel lost up to 2.4% of the conv-weight gradients.
"""

import pytest
import torch
from torch import nn

from model.point_ops import ball_query, farthest_point_sample, index_points, square_distance
from model.pointnet2 import FeaturePropagation, SetAbstractionMSG

# ---- the transcription ---------------------------------------------------------------------------------------


def _sq_dist(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """[B,N,3], [B,M,3] -> [B,N,M]: -2·src·dstᵀ, then + |src|², then + |dst|², in that order."""
    out = -2 * (src @ dst.transpose(1, 2))
    out = out + (src**2).sum(-1)[:, :, None]
    return out + (dst**2).sum(-1)[:, None, :]


def _gather(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points [B,N,C], idx [B,...] -> [B,...,C] by advanced indexing with an explicit batch index."""
    batch = torch.arange(points.shape[0]).view(-1, *([1] * (idx.dim() - 1))).expand_as(idx)
    return points[batch, idx]


def _fps(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    b, n, _ = xyz.shape
    picked = torch.zeros(b, npoint, dtype=torch.long)
    nearest = torch.full((b, n), 1e10, dtype=xyz.dtype)
    current = torch.randint(0, n, (b,), dtype=torch.long)  # random start, as the original
    rows = torch.arange(b)
    for i in range(npoint):
        picked[:, i] = current
        d = ((xyz - xyz[rows, current][:, None, :]) ** 2).sum(-1)
        closer = d < nearest
        nearest[closer] = d[closer]
        current = nearest.max(-1)[1]
    return picked


def _ball(radius: float, nsample: int, xyz: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    b, n, _ = xyz.shape
    idx = torch.arange(n).repeat(b, centres.shape[1], 1)
    idx[_sq_dist(centres, xyz) > radius**2] = n
    idx = idx.sort(dim=-1)[0][:, :, :nsample]
    first = idx[:, :, :1].expand_as(idx)
    missing = idx == n
    idx[missing] = first[missing]
    return idx


class OriginalSetAbstraction(nn.Module):
    def __init__(self, npoint, radii, nsamples, in_channel, mlps):
        super().__init__()
        self.npoint, self.radii, self.nsamples = npoint, radii, nsamples
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        for widths in mlps:
            convs, bns, last = nn.ModuleList(), nn.ModuleList(), in_channel + 3
            for w in widths:
                convs.append(nn.Conv2d(last, w, 1))
                bns.append(nn.BatchNorm2d(w))
                last = w
            self.convs.append(convs)
            self.bns.append(bns)

    def forward(self, xyz, feats):
        xyz, feats = xyz.permute(0, 2, 1), feats.permute(0, 2, 1)
        b, _, c = xyz.shape
        centres = _gather(xyz, _fps(xyz, self.npoint))
        outs = []
        for radius, nsample, convs, bns in zip(self.radii, self.nsamples, self.convs, self.bns):
            idx = _ball(radius, nsample, xyz, centres)
            rel = _gather(xyz, idx) - centres.view(b, self.npoint, 1, c)
            x = torch.cat([_gather(feats, idx), rel], dim=-1).permute(0, 3, 2, 1)  # [B,C,K,S]
            for conv, bn in zip(convs, bns):
                x = torch.relu(bn(conv(x)))
            outs.append(torch.max(x, 2)[0])
        return centres.permute(0, 2, 1), torch.cat(outs, dim=1)


class OriginalFeaturePropagation(nn.Module):
    def __init__(self, in_channel, mlp, eps=0.01):
        super().__init__()
        self.convs, self.bns, last = nn.ModuleList(), nn.ModuleList(), in_channel
        for w in mlp:
            self.convs.append(nn.Conv1d(last, w, 1))
            self.bns.append(nn.BatchNorm1d(w))
            last = w
        self.eps = eps

    def forward(self, xyz1, xyz2, points1, points2):
        xyz1, xyz2, points2 = xyz1.permute(0, 2, 1), xyz2.permute(0, 2, 1), points2.permute(0, 2, 1)
        dists, idx = _sq_dist(xyz1, xyz2).sort(dim=-1)
        dists, idx = dists[:, :, :3], idx[:, :, :3]
        recip = 1.0 / (dists + self.eps)
        weight = recip / recip.sum(dim=2, keepdim=True)
        interpolated = (_gather(points2, idx) * weight.unsqueeze(-1)).sum(dim=2)
        x = torch.cat([points1.permute(0, 2, 1), interpolated], dim=-1).permute(0, 2, 1)
        for conv, bn in zip(self.convs, self.bns):
            x = torch.relu(bn(conv(x)))
        return x


# ---- the comparison ------------------------------------------------------------------------------------------

# Large enough (32k values per BatchNorm channel) for the old channels-last kernel's fp32 variance to show.
SA = dict(npoint=256, radii=(0.15, 0.3), nsamples=(32, 64), in_channel=3, mlps=((16, 16, 32), (32, 32, 64)))
# As SA2: 24 + 3 input channels, wider than the first branch's first layer (16: convolved on the points before
# grouping) and narrower than the second's (32: grouped first, as the original).
SA_WIDE = {**SA, "in_channel": 24}


def _copy_weights(project: nn.Module, original: nn.Module) -> None:
    """Same parameters and buffers, matched in module order (conv, bn, conv, bn, ...)."""
    ours = [m for m in project.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm))]
    for mlp_convs, mlp_bns in _original_layers(original):
        for conv, bn in zip(mlp_convs, mlp_bns):
            conv.load_state_dict(ours.pop(0).state_dict())
            bn.load_state_dict(ours.pop(0).state_dict())
    assert not ours


def _original_layers(original: nn.Module):
    if isinstance(original, OriginalSetAbstraction):
        return list(zip(original.convs, original.bns))
    return [(original.convs, original.bns)]


def _cloud(b: int, n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    xyz = torch.randn(b, 3, n, generator=torch.Generator().manual_seed(seed))
    return (xyz / xyz.norm(dim=1, keepdim=True).amax(-1, keepdim=True)).to(dtype)


def _perturb(module: nn.Module) -> None:
    """BatchNorm affine parameters away from (1, 0), so their gradients are generic."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


def _train_step(module: nn.Module, inputs: list[torch.Tensor], seed: int) -> tuple[torch.Tensor, dict, list]:
    """Training-mode forward with FPS seed `seed`, backward of a fixed random projection of the features."""
    inputs = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
    torch.manual_seed(seed)
    out = module.train()(*inputs)
    feats = out[1] if isinstance(out, tuple) else out
    w = torch.randn(feats.shape, generator=torch.Generator().manual_seed(99), dtype=feats.dtype)
    (feats * w).sum().backward()
    grads = [p.grad for p in module.parameters()]
    return feats.detach(), grads, [x.grad for x in inputs]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _grad_errors(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> list[float]:
    """Per parameter, max |difference| over the largest gradient of the layer stack (a conv bias ahead of a
    BatchNorm has a gradient of rounding size only, so its own maximum is no scale)."""
    largest = max(float(t.abs().max()) for t in theirs)
    return [float((a - t).abs().max()) / largest for a, t in zip(ours, theirs)]


def _compare_sa(dtype: torch.dtype, sa: dict, b: int = 2, n: int = 1024):
    project = SetAbstractionMSG(**{**sa, "fps_start": "random"}).to(dtype)
    _perturb(project)
    original = OriginalSetAbstraction(**sa).to(dtype)
    _copy_weights(project, original)
    xyz = _cloud(b, n, dtype)
    # input features with a gradient of their own, offset from 0 so that channel means are large against their
    # spread: the condition under which fp32 variance formulas differ (SA1 sees absolute coordinates)
    noise = torch.randn(b, sa["in_channel"] - 3, n, generator=torch.Generator().manual_seed(11)).to(dtype)
    feats = torch.cat([xyz * 2, noise], 1) + 4
    ours = _train_step(project, [xyz, feats], seed=5)
    theirs = _train_step(original, [xyz, feats], seed=5)
    grads = _grad_errors(ours[1], _in_project_order(original, theirs[1]))
    return _rel(ours[0], theirs[0]), grads, max(_rel(ours[2][i], theirs[2][i]) for i in (0, 1))


def _in_project_order(original: nn.Module, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The original registers all convs of a branch, then all BNs; the project interleaves conv, bn per layer."""
    by_param = dict(zip([id(p) for p in original.parameters()], grads))
    ordered = []
    for convs, bns in _original_layers(original):
        for conv, bn in zip(convs, bns):
            ordered += [by_param[id(p)] for p in (*conv.parameters(), *bn.parameters())]
    return ordered


@pytest.mark.parametrize("sa", [SA, SA_WIDE], ids=["sa1", "sa2-first-conv-on-points"])
def test_set_abstraction_matches_the_original_in_fp64_training_mode(sa):
    project = SetAbstractionMSG(**{**sa, "fps_start": "random"})
    assert project.convolve_points_first == ((False, False) if sa is SA else (True, False))
    out, grads, feats_grad = _compare_sa(torch.float64, sa)
    assert out < 1e-9 and max(grads) < 1e-9 and feats_grad < 1e-9, (out, grads, feats_grad)


@pytest.mark.parametrize("sa", [SA, SA_WIDE], ids=["sa1", "sa2-first-conv-on-points"])
def test_set_abstraction_gradients_match_the_original_in_fp32_training_mode(sa):
    out, grads, feats_grad = _compare_sa(torch.float32, sa)
    assert out < 1e-5 and max(grads) < 1e-4 and feats_grad < 1e-4, (out, grads, feats_grad)


def _compare_fp(dtype: torch.dtype, b: int = 2, n: int = 512, s: int = 64):
    project = FeaturePropagation(16 + 24, (32, 32), eps=0.01).to(dtype)
    _perturb(project)
    original = OriginalFeaturePropagation(16 + 24, (32, 32), eps=0.01).to(dtype)
    _copy_weights(project, original)
    g = torch.Generator().manual_seed(3)
    xyz_to = _cloud(b, n, dtype, seed=1)
    xyz_from = xyz_to[:, :, torch.randperm(n, generator=g)[:s]]  # a subset, as the SA centres are
    skip = torch.randn(b, 16, n, generator=g).to(dtype) + 1
    feats_from = torch.randn(b, 24, s, generator=g).to(dtype) - 1
    ours = _train_step(project, [xyz_to, xyz_from, skip, feats_from], seed=0)
    theirs = _train_step(original, [xyz_to, xyz_from, skip, feats_from], seed=0)
    grads = _grad_errors(ours[1], _in_project_order(original, theirs[1]))
    inputs = [_rel(ours[2][i], theirs[2][i]) for i in (2, 3)]
    return _rel(ours[0], theirs[0]), grads, inputs


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_feature_propagation_matches_the_original_in_training_mode(dtype, tol):
    out, grads, inputs = _compare_fp(dtype)
    assert out < tol and max(grads) < tol and max(inputs) < tol, (out, grads, inputs)


def test_eval_mode_set_abstraction_matches_the_original():
    project = SetAbstractionMSG(**{**SA, "fps_start": "random"})
    _perturb(project)
    with torch.no_grad():
        for m in project.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
    original = OriginalSetAbstraction(**SA)
    _copy_weights(project, original)
    xyz = _cloud(2, 1024, torch.float32)
    with torch.no_grad():
        torch.manual_seed(5)
        ours = project.eval()(xyz, xyz)
        torch.manual_seed(5)
        theirs = original.eval()(xyz, xyz)
    assert torch.equal(ours[0], theirs[0])
    assert _rel(ours[1], theirs[1]) < 1e-5


def test_ball_query_on_a_quantised_grid_picks_the_original_neighbourhoods():
    """On a grid many distances equal a radius up to fp32 rounding, so the neighbourhoods depend on how the
    squared distance is rounded; the project adds the terms in the original's order (with |b|² added first, 1.7%
    of the neighbourhoods differed: 213 of 12,288 for 8 clouds)."""
    xyz = _cloud(4, 2048, torch.float32).transpose(1, 2)
    grid = (xyz * 20).round() / 20
    centres = index_points(grid, farthest_point_sample(grid, 512, "first"))
    for radius, nsample in ((0.1, 32), (0.2, 64), (0.4, 128)):
        ours = ball_query(radius, nsample, square_distance(centres, grid))
        assert torch.equal(ours, _ball(radius, nsample, grid, centres)), radius
