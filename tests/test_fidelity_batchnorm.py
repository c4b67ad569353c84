"""Issue 16 §1: a K-batched training step of the `released` model equals the original's K per-cloud forwards
(BatchNorm statistics per cloud, running statistics updated once per cloud in order, the image branch's K times).

The reference is the same model called once per cloud (batch B, one group): there every BatchNorm is plain
`nn.BatchNorm` arithmetic, which is what the original's `train_step` runs.
"""

import copy

import pytest
import torch
from tiny import NUM_POINTS, tiny_model_config

from model.group_norm_bn import GroupedBatchNorm, batchnorm_groups, deferred_batchnorm_updates
from model.lmaffordance3d import build_model
from model.loss import heatmap_loss, pair_loss

B, K = 2, 3
TEXT = ["grasp the mug", "where do I sit"]


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(B, 3, 64, 64, generator=g)
    points = torch.randn(B, K, 3, NUM_POINTS, generator=g)
    points = points / points.norm(dim=2, keepdim=True).amax(-1, keepdim=True)  # unit sphere, as the data
    labels = torch.rand(B, K, NUM_POINTS, generator=g) ** 3
    return image, points, labels


def _batched_step(model, image, points, labels) -> torch.Tensor:
    loss = heatmap_loss(model(image, points, TEXT), labels)
    loss.backward()
    return loss.detach()


def _per_cloud_step(model, image, points, labels) -> torch.Tensor:
    """The original's train_step: one forward per cloud, losses summed, one backward."""
    loss = sum(pair_loss(model(image, points[:, j], TEXT), labels[:, j]) for j in range(K))
    loss.backward()
    return loss.detach()


def _running(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def _two_steps(fidelity: str):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(fidelity=fidelity, fps_start="first")).train()
    # non-trivial running statistics before the step, so the order of the momentum updates matters
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GroupedBatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    per_cloud = copy.deepcopy(model)
    image, points, labels = _batch()
    return (
        (_batched_step(model, image, points, labels), model),
        (_per_cloud_step(per_cloud, image, points, labels), per_cloud),
    )


def test_released_batched_step_equals_per_cloud_forwards():
    (loss, batched), (loss_ref, per_cloud) = _two_steps("released")
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-5)
    grads = {n: p.grad for n, p in batched.named_parameters() if p.grad is not None}
    grads_ref = {n: p.grad for n, p in per_cloud.named_parameters() if p.grad is not None}
    assert grads.keys() == grads_ref.keys() and len(grads) > 50
    largest = max(float(g.abs().max()) for g in grads_ref.values())
    worst = max((float((grads[n] - grads_ref[n]).abs().max()), n) for n in grads)
    assert worst[0] <= 1e-4 * largest, worst
    running, running_ref = _running(batched), _running(per_cloud)
    for key, ref in running_ref.items():
        if key.endswith("num_batches_tracked"):
            # once per cloud and call: K updates, 2K for the fusion's shared MLP (points, then image)
            assert int(running[key]) == int(ref) == (2 * K if key.startswith("fusion.") else K), key
        else:
            torch.testing.assert_close(running[key], ref, rtol=1e-5, atol=1e-5, msg=key)


def test_corrected_keeps_joint_statistics_and_one_update_per_step():
    (loss, batched), (loss_ref, per_cloud) = _two_steps("corrected")
    running = _running(batched)
    counts = {k: int(v) for k, v in running.items() if k.endswith("num_batches_tracked")}
    assert counts == {k: 2 if k.startswith("fusion.") else 1 for k in counts}
    # the joint statistics over B·K clouds are measurably not the per-cloud ones
    assert abs(float(loss) - float(loss_ref)) > 1e-4 * abs(float(loss_ref))


def _plain_bn(bn: GroupedBatchNorm) -> torch.nn.BatchNorm1d:
    plain = torch.nn.BatchNorm1d(bn.num_features, momentum=bn.momentum)
    plain.load_state_dict(bn.state_dict())
    return plain


@pytest.mark.parametrize("momentum", [0.1, None])
def test_groups_normalise_and_update_like_sequential_calls(momentum):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4 * K, 5, 7, generator=g) * torch.arange(1.0, 6.0).view(1, 5, 1) + 3
    bn = GroupedBatchNorm(5, momentum=momentum).train()
    bn.running_mean.uniform_(-1, 1, generator=g)
    plain = _plain_bn(bn).train()
    with batchnorm_groups(K):
        out = bn(x)
    # sample i is in group i % K (cloud j of image b is sample b*K + j)
    expected = torch.empty_like(x)
    for j in range(K):
        expected[j::K] = plain(x[j::K])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_mean, plain.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_var, plain.running_var, rtol=1e-6, atol=1e-6)
    assert int(bn.num_batches_tracked) == int(plain.num_batches_tracked) == K


def test_repeats_apply_the_same_statistics_k_times():
    x = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(2)) + 1
    bn = GroupedBatchNorm(6).train()
    plain = torch.nn.BatchNorm2d(6).train()
    with batchnorm_groups(1, repeats=K):
        out = bn(x)
    for _ in range(K):
        expected = plain(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(bn.running_mean, plain.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var, plain.running_var, rtol=1e-6, atol=1e-7)
    assert int(bn.num_batches_tracked) == K


def test_deferred_updates_interleave_two_calls_cloud_by_cloud():
    """The fusion's shared MLP: the original updates (points, cloud 1), (image, cloud 1), (points, cloud 2), ..."""
    g = torch.Generator().manual_seed(3)
    points, image = torch.randn(2 * K, 4, 5, generator=g) + 2, torch.randn(2 * K, 4, 3, generator=g) - 1
    bn = GroupedBatchNorm(4).train()
    plain = _plain_bn(bn).train()
    with deferred_batchnorm_updates(), batchnorm_groups(K):
        bn(points), bn(image)
        assert int(bn.num_batches_tracked) == 0  # nothing applied before the forward ends
    for j in range(K):
        plain(points[j::K]), plain(image[j::K])
    torch.testing.assert_close(bn.running_mean, plain.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var, plain.running_var, rtol=1e-6, atol=1e-7)
    assert int(bn.num_batches_tracked) == 2 * K


def test_loads_nn_batchnorm_state_dicts_and_acts_as_one_in_eval():
    ref = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-1, 1)
        ref.running_mean.uniform_(-1, 1), ref.running_var.uniform_(0.5, 2)
    bn = GroupedBatchNorm(3)
    bn.load_state_dict(ref.state_dict())
    assert bn.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2 * K, 3, 4, 4)
    with batchnorm_groups(K):  # eval mode uses the running statistics: the groups change nothing
        torch.testing.assert_close(bn.eval()(x), ref.eval()(x))


def test_batch_that_does_not_split_into_the_groups_is_refused():
    with batchnorm_groups(K), pytest.raises(ValueError, match="does not split into 3 groups"):
        GroupedBatchNorm(2).train()(torch.randn(4, 2, 5))
