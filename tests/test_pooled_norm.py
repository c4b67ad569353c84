"""`conv_norm_relu_max` (a branch's last layer without the normalised tensor) against the layer-by-layer
definition written here with plain `torch.nn.functional`: one conv, one `F.batch_norm` call per point cloud (the
original's per-cloud forwards), ReLU, max over the neighbourhood."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.group_norm_bn import GroupedBatchNorm, batchnorm_groups, deferred_batchnorm_updates
from model.pointwise import PointwiseConv2d
from model.pooled_norm import conv_norm_relu_max

CLOUDS, IMAGES, C_IN, C, S, K = 3, 2, 5, 6, 7, 9


def _layer(dtype: torch.dtype = torch.float64) -> tuple[PointwiseConv2d, GroupedBatchNorm]:
    g = torch.Generator().manual_seed(0)
    conv, norm = PointwiseConv2d(C_IN, C, 1).to(dtype), GroupedBatchNorm(C).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.5, -0.7, 0.4, -2.0, 0.9, -0.1]))  # both signs: max and min channels
        norm.bias.copy_(torch.rand(C, generator=g) - 0.5)
        norm.running_mean.copy_(torch.rand(C, generator=g))
        norm.running_var.copy_(torch.rand(C, generator=g) + 0.5)
    return conv, norm


def _neighbourhoods(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    h = torch.randn(IMAGES * CLOUDS, C_IN, S, K, generator=torch.Generator().manual_seed(1), dtype=dtype)
    h[:, :, :, -1] = h[:, :, :, 0]  # a padded neighbourhood: its first point repeated
    return h.requires_grad_()


def _by_definition(conv, norm, h, training: bool):
    """Per cloud k: F.batch_norm over samples {b·K + k}, updating copies of the running statistics in cloud
    order; then ReLU and the max. Returns the output and the running statistics after."""
    z = F.conv2d(h, conv.weight, conv.bias)
    mean, var = norm.running_mean.clone(), norm.running_var.clone()
    out = torch.empty_like(z)
    for k in range(CLOUDS):
        out[k::CLOUDS] = F.batch_norm(z[k::CLOUDS], mean, var, norm.weight, norm.bias, training, 0.1, norm.eps)
    return F.relu(out).amax(dim=3), mean, var


def _grads(h, *params):
    """Gradients of the parameters and of h, the padded neighbour's folded onto the point it repeats: a max over
    two equal values may send the gradient to either (the same point: the gather sums them in the model)."""
    folded = torch.cat([h.grad[..., :1] + h.grad[..., -1:], h.grad[..., 1:-1]], dim=-1)
    return [folded] + [p.grad.clone() for p in params]


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_pooled_last_layer_equals_conv_batchnorm_relu_max_per_cloud(training):
    conv, norm = _layer()
    conv.train(training), norm.train(training)
    h = _neighbourhoods()
    upstream = torch.randn(IMAGES * CLOUDS, C, S, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected, mean, var = _by_definition(conv, norm, h, training)
    (expected * upstream).sum().backward()
    expected_grads = _grads(h, conv.weight, conv.bias, norm.weight, norm.bias)
    for t in (h, conv.weight, conv.bias, norm.weight, norm.bias):
        t.grad = None
    with batchnorm_groups(CLOUDS):
        out = conv_norm_relu_max(conv, norm, h)
    (out * upstream).sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(_grads(h, conv.weight, conv.bias, norm.weight, norm.bias), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(norm.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm.running_var, var, rtol=1e-12, atol=1e-12)
    assert int(norm.num_batches_tracked) == (CLOUDS if training else 0)


def test_pooled_last_layer_defers_its_running_statistics_like_batchnorm():
    conv, norm = _layer()
    reference = GroupedBatchNorm(C).to(torch.float64)
    reference.load_state_dict(norm.state_dict())
    h = _neighbourhoods()
    with deferred_batchnorm_updates(), batchnorm_groups(CLOUDS):
        conv_norm_relu_max(conv, norm, h)
        assert int(norm.num_batches_tracked) == 0  # nothing applied before the context exits
        reference(F.conv2d(h, conv.weight, conv.bias))
    torch.testing.assert_close(norm.running_mean, reference.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm.running_var, reference.running_var, rtol=1e-12, atol=1e-12)
    assert int(norm.num_batches_tracked) == int(reference.num_batches_tracked) == CLOUDS


def test_pooled_last_layer_in_fp32_stays_within_rounding_of_fp64():
    conv, norm = _layer()
    h64 = _neighbourhoods()
    with batchnorm_groups(CLOUDS):
        exact = conv_norm_relu_max(conv, norm, h64)
        conv32, norm32 = _layer(torch.float32)
        conv32.load_state_dict({k: v.float() for k, v in conv.state_dict().items()})
        out = conv_norm_relu_max(conv32, norm32, h64.detach().float())
    assert out.dtype == torch.float32
    assert ((out.double() - exact).abs().max() / exact.abs().max()).item() < 1e-6


def test_pooled_last_layer_refuses_one_value_per_channel_in_training_like_batchnorm():
    conv, norm = _layer()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        conv_norm_relu_max(conv, norm, torch.randn(1, C_IN, 1, 1, dtype=torch.float64))


def test_a_zero_batchnorm_weight_gets_its_right_derivative_and_does_not_stick():
    conv, norm = _layer()
    with torch.no_grad():
        norm.weight[0], norm.bias[0] = 0.0, 0.3
    h = _neighbourhoods()
    with batchnorm_groups(CLOUDS):
        conv_norm_relu_max(conv, norm, h).sum().backward()
    ours = norm.weight.grad[0].item()
    with torch.no_grad():
        norm.weight[0] = 1e-8  # just right of 0: the definition's max is then each neighbourhood's largest z
    norm.weight.grad = None
    _by_definition(conv, norm, h, True)[0].sum().backward()
    assert ours != 0.0 and abs(ours - norm.weight.grad[0].item()) < 1e-6 * abs(ours)
