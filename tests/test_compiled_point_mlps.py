"""`model.compile_point_mlps`: the set-abstraction branches and feature-propagation MLPs through inductor give the
eager model's training step up to rounding, in one graph each (per-cloud BatchNorm included)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from tiny import tiny_model_config

from model.group_norm_bn import batchnorm_groups, deferred_batchnorm_updates
from model.pointnet2 import FeaturePropagation, PointNet2Encoder

pytestmark = pytest.mark.slow  # inductor compiles 7 small graphs (about 30 s on 2 cores)


def _step(encoder: PointNet2Encoder, fp: FeaturePropagation, xyz: torch.Tensor) -> torch.Tensor:
    """Encoder and one FP layer in training mode, 2 images x 3 clouds with per-cloud BatchNorm, then backward."""
    with deferred_batchnorm_updates(), batchnorm_groups(3):
        levels = encoder(xyz)
        out = fp(levels[2][0], levels[3][0], levels[2][1], levels[3][1])
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach()


def _grads(*modules: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.double().flatten() for m in modules for p in m.parameters()])


def _running(*modules: torch.nn.Module) -> torch.Tensor:
    return torch.cat([b.double().flatten() for m in modules for n, b in m.named_buffers() if "running" in n])


def test_compiled_point_mlps_match_eager_training_up_to_rounding_in_one_graph_each():
    torch.manual_seed(0)
    eager = PointNet2Encoder(tiny_model_config()).train()
    eager_fp = FeaturePropagation(eager.channels[2] + eager.channels[3], (32, 32)).train()
    compiled = PointNet2Encoder(tiny_model_config(compile_point_mlps=True)).train()
    compiled_fp = FeaturePropagation(eager.channels[2] + eager.channels[3], (32, 32), compiled=True).train()
    compiled.load_state_dict(eager.state_dict())
    compiled_fp.load_state_dict(eager_fp.state_dict())
    exact, exact_fp = copy.deepcopy(eager).double(), copy.deepcopy(eager_fp).double()
    xyz = torch.rand(6, 3, 256, generator=torch.Generator().manual_seed(3)) * 2 - 1

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    out_compiled = _step(compiled, compiled_fp, xyz)
    assert dict(torch._dynamo.utils.counters["graph_break"]) == {}  # BatchNorm's groups are traced, not broken
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 7  # 6 branches + 1 FP MLP
    out_eager = _step(eager, eager_fp, xyz)
    _step(exact, exact_fp, xyz.double())

    assert list(compiled.state_dict()) == list(eager.state_dict())
    torch.testing.assert_close(out_compiled, out_eager, rtol=0, atol=1e-4)
    # rounding only: against float64, gradients within 1e-4 of the largest (the tolerance the eager model is held to
    # against the original, tests/test_fidelity_pointnet2.py) and running statistics within 1e-5
    for of, tolerance in ((_grads, 1e-4), (_running, 1e-5)):
        truth = of(exact, exact_fp)
        compiled_error = (of(compiled, compiled_fp) - truth).abs().max() / truth.abs().max()
        assert compiled_error < tolerance, float(compiled_error)


def test_compile_point_mlps_is_refused_with_zero_3(tmp_path):
    from jobs.entry import UserError
    from jobs.experiment_config import ExperimentConfig
    from jobs.preflight import train_inputs
    from jobs.typed_yaml import load

    overrides = ["model.compile_point_mlps=true", "train.zero_stage=3", f"data.shards={tmp_path}"]
    cfg = load(ExperimentConfig, None, overrides)
    with pytest.raises(UserError, match="model.compile_point_mlps: not with train.zero_stage 3"):
        train_inputs(cfg)
