"""The original LMAffordance3D point code and training-step pattern, reproduced for side-by-side benchmarks.

What is reproduced, operation for operation, from the original's `PointNet2_utils.py` (github:cn-hezhu/
LMAffordance3D, `LAVIS/lavis/models/affordance_models/`; identical to IAGNet's but for the FP epsilon):
- farthest-point sampling from a random start (`torch.randint` on the default generator), a 1e10-filled distance
  buffer updated through a mask (`dist < distance`), the next pick by `max(...)[1]`;
- ball query by marking out-of-radius indices with N, sorting each whole index row and padding with the first;
- grouping by advanced indexing with a repeated batch index, relative xyz subtracted in place, features
  concatenated as [point features, relative xyz], the branch run on a [B,C,K,S] permuted copy with out-of-place
  `F.relu(bn(conv(x)))` and a max over K;
- feature propagation: 3-NN by sorting each distance row, weights 1/(d² + 0.01) (the LMAffordance3D epsilon),
  a gathered weighted sum, [skip, interpolated] concatenated as [B,N,C] and then permuted, `F.relu(bn(conv(x)))`.
And from the original's training task: one full forward pass per point cloud (three per image), losses summed,
one backward; and a per-sample Python loop that builds the LLM input.

The parameters are the project's (same weights in both measurements): `original_ops()` swaps these forwards into
the project's `SetAbstractionMSG`, `FeaturePropagation` and LLM-input function. BatchNorm runs as plain
`F.batch_norm` over the whole batch with the module's statistics, as the original's `nn.BatchNorm{1,2}d`.
Everything else (image encoder, fusion, language adapter, decoder, head MLP) is the project's code.
Written for this benchmark from reading the original (not copied code); tests/test_reference_original.py checks
it against a transcription of docs/original.md §1.2.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import model.language
from model.pointnet2 import FeaturePropagation, SetAbstractionMSG

ORIGINAL_FP_EPS = 0.01
"""LMAffordance3D's feature-propagation epsilon (IAGNet and LASO: 1e-8)."""


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """src [B,N,C], dst [B,M,C] -> [B,N,M] as -2 src·dst + |src|² + |dst|², in that order, unclamped."""
    b, n, _ = src.shape
    m = dst.shape[1]
    dist = -2 * torch.matmul(src, dst.permute(0, 2, 1))
    dist += torch.sum(src**2, -1).view(b, n, 1)
    dist += torch.sum(dst**2, -1).view(b, 1, m)
    return dist


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points [B,N,C], idx [B,...] -> [B,...,C] by advanced indexing with a repeated batch index."""
    view_shape = [idx.shape[0]] + [1] * (idx.dim() - 1)
    repeat_shape = [1] + list(idx.shape[1:])
    batch = torch.arange(points.shape[0], dtype=torch.long, device=points.device)
    return points[batch.view(view_shape).repeat(repeat_shape), idx, :]


def farthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """xyz [B,N,3] -> [B,npoint] indices. The start is drawn on the CPU default generator, as in the original.
    The distance buffer takes xyz's dtype (the original's is the default dtype: the same for its float32 input;
    with float64 input the original's masked assignment raises a dtype error)."""
    device = xyz.device
    b, n, _ = xyz.shape
    centroids = torch.zeros(b, npoint, dtype=torch.long, device=device)
    distance = torch.ones(b, n, dtype=xyz.dtype).to(device) * 1e10
    farthest = torch.randint(0, n, (b,), dtype=torch.long).to(device)
    batch = torch.arange(b, dtype=torch.long, device=device)
    for i in range(npoint):
        centroids[:, i] = farthest
        centroid = xyz[batch, farthest, :].view(b, 1, 3)
        dist = torch.sum((xyz - centroid) ** 2, -1)
        closer = dist < distance
        distance[closer] = dist[closer]
        farthest = torch.max(distance, -1)[1]
    return centroids


def query_ball_point(radius: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    """xyz [B,N,3], new_xyz [B,S,3] -> [B,S,nsample]: the first in-radius indices, padded with the first."""
    b, n, _ = xyz.shape
    s = new_xyz.shape[1]
    group_idx = torch.arange(n, dtype=torch.long, device=xyz.device).view(1, 1, n).repeat(b, s, 1)
    group_idx[square_distance(new_xyz, xyz) > radius**2] = n
    group_idx = group_idx.sort(dim=-1)[0][:, :, :nsample]
    first = group_idx[:, :, 0].view(b, s, 1).repeat(1, 1, nsample)
    outside = group_idx == n
    group_idx[outside] = first[outside]
    return group_idx


def _conv_norm_pairs(stack: nn.Module) -> list[tuple[nn.Module, _BatchNorm]]:
    """The (conv, norm) layers of a project conv stack, in order (its ReLU modules are replaced by F.relu)."""
    convs = [m for m in stack.children() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    norms = [m for m in stack.children() if isinstance(m, _BatchNorm)]
    if len(convs) != len(norms) or not convs:
        raise TypeError(f"expected conv + BatchNorm layers, got {[type(m).__name__ for m in stack.children()]}")
    return list(zip(convs, norms))


def _batch_norm(norm: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """nn.BatchNorm{1,2}d's forward with the module's parameters and statistics, over the whole batch."""
    if norm.training and norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
    use_batch = norm.training or norm.running_mean is None
    return F.batch_norm(
        x, norm.running_mean, norm.running_var, norm.weight, norm.bias, use_batch, norm.momentum, norm.eps
    )


def conv_bn_relu(stack: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The original's `F.relu(bn(conv(x)))`, with a real convolution (the project computes its 1x1 convs as
    matmuls: model/pointwise.py)."""
    for conv, norm in _conv_norm_pairs(stack):
        convolve = F.conv2d if x.dim() == 4 else F.conv1d
        x = F.relu(_batch_norm(norm, convolve(x, conv.weight, conv.bias)))
    return x


def set_abstraction_forward(
    self: SetAbstractionMSG, xyz: torch.Tensor, feats: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original MSG set abstraction: xyz [B,3,N], feats [B,C,N] -> [B,3,S], [B,C_out,S]."""
    xyz, feats = xyz.permute(0, 2, 1), feats.permute(0, 2, 1)
    b, _, c = xyz.shape
    s = self.npoint
    new_xyz = index_points(xyz, farthest_point_sample(xyz, s))
    outputs = []
    for radius, nsample, branch in zip(self.radii, self.nsamples, self.branches):
        group_idx = query_ball_point(radius, nsample, xyz, new_xyz)
        grouped_xyz = index_points(xyz, group_idx)
        grouped_xyz -= new_xyz.view(b, s, 1, c)
        grouped = torch.cat([index_points(feats, group_idx), grouped_xyz], dim=-1)
        grouped = conv_bn_relu(branch, grouped.permute(0, 3, 2, 1))  # [B,C,K,S]
        outputs.append(torch.max(grouped, 2)[0])
    return new_xyz.permute(0, 2, 1), torch.cat(outputs, dim=1)


def three_nn_interpolate(
    xyz_to: torch.Tensor, xyz_from: torch.Tensor, feats_from: torch.Tensor, eps: float = ORIGINAL_FP_EPS
) -> torch.Tensor:
    """xyz_to [B,N,3], xyz_from [B,S,3], feats_from [B,S,C] -> [B,N,C]: sort each distance row, take 3."""
    b, n, _ = xyz_to.shape
    if xyz_from.shape[1] == 1:
        return feats_from.repeat(1, n, 1)
    dists, idx = square_distance(xyz_to, xyz_from).sort(dim=-1)
    dists, idx = dists[:, :, :3], idx[:, :, :3]
    recip = 1.0 / (dists + eps)
    weight = recip / torch.sum(recip, dim=2, keepdim=True)
    return torch.sum(index_points(feats_from, idx) * weight.view(b, n, 3, 1), dim=2)


def feature_propagation_forward(
    self: FeaturePropagation,
    xyz_to: torch.Tensor,
    xyz_from: torch.Tensor,
    skip: torch.Tensor | None,
    feats_from: torch.Tensor,
) -> torch.Tensor:
    """The original FP layer (epsilon 0.01 whatever the module's): [B,3,N], [B,3,S], [B,C1,N] | None,
    [B,C2,S] -> [B,C',N]."""
    up = three_nn_interpolate(xyz_to.permute(0, 2, 1), xyz_from.permute(0, 2, 1), feats_from.permute(0, 2, 1))
    if skip is not None:
        up = torch.cat([skip.permute(0, 2, 1), up], dim=-1)  # [B,N,C1+C2], then one permuted copy
    return conv_bn_relu(self.mlp, up.permute(0, 2, 1))


def insert_spatial_loop(
    text: torch.Tensor, lengths: torch.Tensor, spatial: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's per-sample LLM input: [text[:n]; spatial; text[n:]] and its mask, one sample at a time."""
    rows, masks = [], []
    for i in range(text.shape[0]):
        n = int(lengths[i])
        rows.append(torch.cat([text[i, :n], spatial[i], text[i, n:]]))
        masks.append(torch.cat([torch.ones(n + spatial.shape[1]), torch.zeros(text.shape[1] - n)]).long())
    return torch.stack(rows), torch.stack(masks).to(text.device)


@contextlib.contextmanager
def original_ops():
    """Swap the original point code and the per-sample LLM-input loop into the project's model."""
    saved = (SetAbstractionMSG.forward, FeaturePropagation.forward, model.language.insert_spatial)
    SetAbstractionMSG.forward = set_abstraction_forward
    FeaturePropagation.forward = feature_propagation_forward
    model.language.insert_spatial = insert_spatial_loop
    try:
        yield
    finally:
        SetAbstractionMSG.forward, FeaturePropagation.forward, model.language.insert_spatial = saved


def original_encoder_pass(encoder, points: torch.Tensor) -> None:
    """The point encoder's forward + backward as the original trains: one call per cloud slot (B clouds each;
    points [B,K,3,N]), so its plain BatchNorm sees one slot at a time. Runs under `original_ops()` itself."""
    with original_ops():
        sum(encoder(points[:, j])[-1][1].sum() for j in range(points.shape[1])).backward()


def original_step(net, loss_fn, image, points, labels, text) -> torch.Tensor:
    """The original training step: one full forward per point cloud (three per image), losses summed, one
    backward. points [B,K,3,N], labels [B,K,N]. Call inside `original_ops()`."""
    total = 0
    for k in range(points.shape[1]):
        total = total + loss_fn(net(image, points[:, k], text), labels[:, k])
    total.backward()
    return total
