"""The correctness sections of benchmarks/gpu_check.py: they run before anything is timed.

- forward: the model's forward (eval and training mode) on the device against the same weights on the CPU in
  float64, at every precision the device runs; in training mode also the BatchNorm running statistics and, in
  fp64 and fp32, the gradients. Without CUDA the device is the CPU itself, so the rows compare the CPU's fp32 and
  autocast forwards with its fp64 one (the GPU-vs-CPU rows say "skipped: no CUDA").
- fps: `fps_impl: compiled` returns the loop's indices at the three set-abstraction sizes (and, on a GPU, the
  loop there returns the CPU loop's).
- training: a few optimizer steps on one fixed batch lower the loss.
"""

from __future__ import annotations

import copy
import time

import torch
from gpu_check_backbones import synthetic_backbone, tiny_shape
from gpu_check_common import Context, Row, autocast, inputs, training_step

from model.lmaffordance3d import LMAffordance3D, build_model
from model.loss import heatmap_loss
from model.point_ops import farthest_point_sample

TOLERANCES = {
    "fp64": {"eval": 1e-9, "train": 1e-9},
    "fp32": {"eval": 1e-4, "train": 1e-4},
    "fp16-autocast": {"eval": 1e-2, "train": 5e-2},
    "bf16-autocast": {"eval": 3e-2, "train": 2e-1},
}
"""Largest |p - p_ref| allowed between heat-map probabilities (in [0, 1]) and the CPU fp64 reference, per
precision and mode of the side compared; the same numbers bound the BatchNorm running statistics. fp64 is exact
arithmetic up to summation order; fp32 ~1e-7 relative per op. The autocast rows compute matmuls and convolutions
in 16 bits (bf16: 8 mantissa bits), and in training mode the head's BatchNorm normalises each point over the B
clouds of its group (2 here), which magnifies any difference between two nearly equal values: measured on the CPU
at paper size, max |p - p_ref| fp32 4e-6, fp16 autocast 8e-3, bf16 autocast 5e-2 (eval: 5e-8, 3e-4, 9e-4).
These bounds catch a wrong or non-finite forward (a broken one differs by ~0.5), not the last bits."""
GRAD_TOLERANCES = {"fp64": 1e-8, "fp32": 2e-2}
"""Largest |g - g_ref| over all trainable parameters, relative to the largest |g_ref| (fp32 at paper size on the
CPU: 3e-3, the per-cloud BatchNorm backward over 2 clouds again the amplifier)."""
LOW_PRECISION = {"fp64": None, "fp32": None, "fp16-autocast": torch.float16, "bf16-autocast": torch.bfloat16}


def check_model(ctx: Context) -> LMAffordance3D:
    """The model the correctness rows compare: the run's sizes, the `tiny` backbone geometry in fp32, FPS from
    point 0 (a random start would draw differently on each device), released fidelity (per-cloud BatchNorm)."""
    cfg = ctx.sizes.config(backbone="tiny", backbone_dtype="fp32", fps_start="first")
    torch.manual_seed(0)
    backbone = synthetic_backbone(tiny_shape(), "cpu", torch.float32, "tiny")
    return build_model(cfg, "cpu", pretrained=False, backbone=backbone)


def _run(
    net: LMAffordance3D, batch: tuple, train: bool, low_precision: torch.dtype | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Probabilities, BatchNorm running statistics after the forward, and (training mode) the loss gradients."""
    image, points, labels, text = batch
    net.train(train)
    with autocast(image.device, low_precision):
        probs = net(image, points, text)
    grads = {}
    if train:
        heatmap_loss(probs.double(), labels.to(torch.float64)).backward()
        grads = {n: p.grad.double().cpu() for n, p in net.named_parameters() if p.grad is not None}
    stats = {n: b.double().cpu() for n, b in net.named_buffers() if "running" in n}
    return probs.detach().double().cpu(), stats, grads


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over all tensors of two same-named sets."""
    if set(a) != set(b):
        raise ValueError(f"different tensors: {sorted(set(a) ^ set(b))[:5]}")
    return max((float((a[n] - b[n]).abs().max()) for n in a if a[n].numel()), default=0.0)


def _grad_diff(grads: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """Largest |g - g_ref| over all parameters, relative to the largest |g_ref| of all: not per tensor, because
    some gradients are exactly 0 in exact arithmetic (a conv bias before BatchNorm) and rounding noise elsewhere."""
    scale = max((float(g.abs().max()) for g in ref.values() if g.numel()), default=0.0)
    return _max_diff(grads, ref) / max(scale, 1e-300)


def _candidates(ctx: Context) -> list[tuple[str, torch.device, str]]:
    """(label, device, precision) of every forward compared with the CPU fp64 reference."""
    if ctx.device.cuda:
        device = ctx.device.device
        return [(f"GPU {p}", device, p) for p in ("fp64", "fp32", "fp16-autocast", "bf16-autocast")]
    cpu = torch.device("cpu")
    return [(f"CPU {p}", cpu, p) for p in ("fp32", "fp16-autocast", "bf16-autocast")]


def forward_section(ctx: Context, rows: list[Row]) -> None:
    base = check_model(ctx)
    b, k = ctx.sizes.check_images, ctx.sizes.clouds
    cpu_batch = inputs(base.cfg, b, k, torch.device("cpu"), seed=1)
    reference = {train: _run(copy.deepcopy(base).double(), _as(cpu_batch, "cpu", torch.float64), train, None)
                 for train in (False, True)}  # fmt: skip
    if not ctx.device.cuda:
        rows.append(Row("forward GPU vs CPU (same weights)", "skipped: no CUDA"))
    # fp32 on a GPU: no TF32 (cuDNN convolutions use it by default), or fp32 would not be fp32
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for label, device, precision in _candidates(ctx):
            dtype = torch.float64 if precision == "fp64" else torch.float32
            batch = _as(cpu_batch, device, dtype)
            for train in (False, True):
                ctx.check_budget(f"the {label} forward")
                net = copy.deepcopy(base).to(device, dtype)
                probs, stats, grads = _run(net, batch, train, LOW_PRECISION[precision])
                ref_probs, ref_stats, ref_grads = reference[train]
                rows.append(_compare(label, precision, train, probs, ref_probs, stats, ref_stats, grads, ref_grads))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _as(batch: tuple, device: torch.device | str, dtype: torch.dtype) -> tuple:
    image, points, labels, text = batch
    return image.to(device, dtype), points.to(device, dtype), labels.to(device, dtype), text


def _compare(label, precision, train, probs, ref_probs, stats, ref_stats, grads, ref_grads) -> Row:
    tolerance = TOLERANCES[precision]["train" if train else "eval"]
    finite = bool(torch.isfinite(probs).all())
    diff, mean = float((probs - ref_probs).abs().max()), float((probs - ref_probs).abs().mean())
    passed = finite and diff <= tolerance
    values = {"precision": precision, "mode": "train" if train else "eval", "max_abs_diff": diff,
              "mean_abs_diff": mean, "tolerance": tolerance, "finite": finite}  # fmt: skip
    text = f"max |p - p_ref| {diff:.1e} (tol {tolerance:.0e}, mean {mean:.0e})"
    if train:
        stats_diff = _max_diff(stats, ref_stats)
        passed &= stats_diff <= tolerance
        values["bn_running_stats_max_abs_diff"] = stats_diff
        text += f", BN running stats {stats_diff:.1e}"
        if precision in GRAD_TOLERANCES:
            grad_diff = _grad_diff(grads, ref_grads)
            passed &= grad_diff <= GRAD_TOLERANCES[precision]
            values |= {"grad_max_rel_diff": grad_diff, "grad_tolerance": GRAD_TOLERANCES[precision]}
            text += f", grads {grad_diff:.1e} of max |g| (tol {GRAD_TOLERANCES[precision]:.0e})"
    mode = "training mode (per-cloud BN)" if train else "eval mode"
    return Row(f"forward {mode}, {label} vs CPU fp64", text, values, passed)


def fps_section(ctx: Context, rows: list[Row]) -> None:
    """Compiled FPS against the loop on the device (and the device loop against the CPU loop), every level."""
    device = ctx.device.device
    clouds = ctx.sizes.images * ctx.sizes.clouds
    generator = torch.Generator().manual_seed(2)
    compiled_ok = True
    for n, npoint in ctx.sizes.fps_levels():
        ctx.check_budget(f"FPS {n} -> {npoint}")
        xyz = torch.rand(clouds, n, 3, generator=generator)
        on_device = xyz.to(device)
        loop = farthest_point_sample(on_device, npoint, "first", "loop")
        values = {"clouds": clouds, "points": n, "npoint": npoint}
        try:  # a compiler that fails here (no C compiler for Triton, say) is this row's failure, not the section's
            start = time.perf_counter()
            compiled = farthest_point_sample(on_device, npoint, "first", "compiled")
            ctx.device.sync()
            first_call_s = time.perf_counter() - start
            torch.manual_seed(3)
            loop_random = farthest_point_sample(on_device, npoint, "random", "loop")
            torch.manual_seed(3)
            compiled_random = farthest_point_sample(on_device, npoint, "random", "compiled")
            equal = torch.equal(loop, compiled) and torch.equal(loop_random, compiled_random)
            values |= {"compiled_equals_loop": equal, "first_compiled_call_s": first_call_s}
            text = f"compiled == loop: {equal} (first and random start); first compiled call {first_call_s:.1f} s"
        except Exception as error:
            equal = False
            values |= {"compiled_equals_loop": False, "compiled_error": f"{type(error).__name__}: {error}"}
            text = f"compiled FPS raised {type(error).__name__}: {str(error)[:200]}"
        compiled_ok &= equal
        if ctx.device.cuda:  # a separate claim (tests/test_point_ops.py makes it too): not a reason to drop compiled
            cpu_equal = torch.equal(loop.cpu(), farthest_point_sample(xyz, npoint, "first", "loop"))
            values["device_loop_equals_cpu_loop"] = cpu_equal
            text += f"; GPU loop == CPU loop: {cpu_equal}"
            equal &= cpu_equal
        rows.append(Row(f"FPS indices, {clouds} x {n} -> {npoint}", text, values, equal))
    ctx.shared["compiled_fps_ok"] = compiled_ok


def training_section(ctx: Context, rows: list[Row]) -> None:
    """Optimizer steps on one fixed batch (training mode, per-cloud BatchNorm, FPS from point 0 so the batch is
    really fixed) at the lr 1e-3, under the paper's fp16 autocast + GradScaler on a GPU, fp32 on a CPU."""
    device = ctx.device.device
    net = check_model(ctx).to(device).train()
    batch = inputs(net.cfg, ctx.sizes.check_images, ctx.sizes.clouds, device, seed=4)
    low_precision = torch.float16 if ctx.device.cuda else None
    step = training_step(net, batch, device, low_precision, lr=1e-3)
    losses = []
    for i in range(ctx.sizes.train_steps):
        ctx.check_budget(f"training step {i}")
        losses.append(float(step()))
    finite = all(torch.isfinite(torch.tensor(losses)).tolist())
    passed = finite and losses[-1] < losses[0]
    precision = "fp16 autocast + GradScaler" if low_precision else "fp32"
    rows.append(Row(
        f"{len(losses)} AdamW steps (lr 1e-3, {precision}) on one batch", f"loss {losses[0]:.4f} -> {losses[-1]:.4f}",
        {"losses": losses, "precision": precision}, passed,
    ))  # fmt: skip
