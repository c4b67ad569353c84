"""The timed sections of benchmarks/gpu_check.py (after the correctness ones).

- paper_step: the training step with a LLaMA-7B-shaped frozen fp16 backbone (random weights, built on the meta
  device) under fp16 and bf16 autocast: s/step, samples/s, peak memory, FLOPs and model FLOP utilisation.
- reference: the step with the `tiny` backbone geometry, ours against the original's exact pattern
  (benchmarks/reference_original.py) on the same device and weights.
- point_ops: FPS, ball query and 3-NN at the set-abstraction / feature-propagation sizes.
- eval: eval forward throughput at batch 1, 8, 32 with the paper_step model.
"""

from __future__ import annotations

import time

import torch
from gpu_check_backbones import synthetic_backbone, tiny_shape
from gpu_check_common import Context, Row, autocast, inputs, median_times, training_step
from reference_original import farthest_point_sample as original_fps
from reference_original import original_ops, original_step, query_ball_point
from reference_original import three_nn_interpolate as original_three_nn
from step_budget import useful_flops

from model.lmaffordance3d import LMAffordance3D, build_model, param_groups
from model.loss import heatmap_loss
from model.point_ops import ball_queries, farthest_point_sample, square_distance, three_nn_interpolate

BF16_DENSE_PEAK_TFLOPS = (
    ("H200 NVL", 835.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
)  # fmt: skip
"""Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets (the sparse figures halved), matched in
this order against torch.cuda.get_device_name(): "NVIDIA H100 80GB HBM3" is the SXM part (989), "NVIDIA H100
PCIe" 756, "NVIDIA H200" and GH200 989. fp16 has the same peak on these parts. Unknown names get no utilisation
figure (the row says so)."""
FLOPS_NOTE = (
    "FLOPs: torch.utils.flop_counter.FlopCounterMode over one training step (forward + backward; matmul, conv and "
    "attention ops only, elementwise ops and the optimizer not counted), with the 3-NN interpolation counted in its "
    "gathered form (the dense interpolation matrix's multiplications by zero are not useful work) and FPS in its "
    "loop form (no FLOPs). MFU = FLOPs / (s per step) / the GPU's dense bf16 peak."
)


def _flop_text(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP" if flops >= 1e11 else f"{flops / 1e9:.2f} GFLOP"


def bf16_peak_tflops(device_name: str) -> float | None:
    for key, peak in BF16_DENSE_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def _fps_impl(ctx: Context) -> str:
    """Compiled FPS on a GPU (where the loop is launch-bound) once the fps section found it equal to the loop;
    the loop on a CPU (its best there) or when the compiled path failed."""
    return "compiled" if ctx.device.cuda and ctx.shared.get("compiled_fps_ok") else "loop"


def _set_fps_impl(net: LMAffordance3D, impl: str) -> None:
    encoder = net.point_encoder
    for sa in (encoder.sa1, encoder.sa2, encoder.sa3):
        sa.fps_impl = impl


def _count_flops(net: LMAffordance3D, step) -> int:
    """FLOPs of one call of `step` (FLOPS_NOTE); FPS as its loop, since a dispatch mode around compiled code is
    not what the step runs and FPS has no counted FLOPs either way."""
    impl = net.point_encoder.sa1.fps_impl
    _set_fps_impl(net, "loop")
    try:
        return useful_flops(step, original_three_nn)
    finally:
        _set_fps_impl(net, impl)


def paper_net(ctx: Context) -> LMAffordance3D:
    """The paper-size model with the 7B-shaped backbone, built once and shared with the eval section."""
    if "paper_net" not in ctx.shared:
        device = ctx.device.device
        cfg = ctx.sizes.config(backbone="llava-1.6-vicuna-7b", backbone_dtype="fp16", fps_impl=_fps_impl(ctx))
        start = time.perf_counter()
        backbone = synthetic_backbone(ctx.sizes.llama, device, torch.float16, "llava-1.6-vicuna-7b shape, random")
        net = build_model(cfg, device, pretrained=False, backbone=backbone)
        ctx.device.sync()
        ctx.shared["paper_net_build_s"] = time.perf_counter() - start
        ctx.shared["paper_net"] = net
    return ctx.shared["paper_net"]


def paper_step_section(ctx: Context, rows: list[Row]) -> None:
    sizes, device = ctx.sizes, ctx.device
    net = paper_net(ctx).train()
    backbone = sum(p.numel() for p in net.language.backbone.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    cfg = net.cfg
    rows.append(Row(
        "model", f"{sizes.llama.describe()}, fp16, frozen, random weights ({backbone / 1e9:.2f} B params, built on "
        f"meta + materialised in {ctx.shared['paper_net_build_s']:.1f} s); {trainable / 1e6:.1f} M trainable; "
        f"{cfg.image_size} px, {cfg.num_points} points, fidelity {cfg.fidelity}, fps_impl {cfg.fps_impl}",
        {"backbone_params": backbone, "trainable_params": trainable, "build_s": ctx.shared["paper_net_build_s"],
         "llama": sizes.llama.describe(), "fps_impl": cfg.fps_impl, "image_size": cfg.image_size},
    ))  # fmt: skip
    batch = inputs(cfg, sizes.images, sizes.clouds, device.device)
    peak = bf16_peak_tflops(device.name) if device.cuda else None
    flops = None
    for label, dtype in (("fp16 autocast", torch.float16), ("bf16 autocast", torch.bfloat16)):
        ctx.check_budget(f"the {label} step")
        step = training_step(net, batch, device.device, dtype)
        device.reset_peak()
        seconds = median_times({"step": step}, device, sizes.warmup, sizes.timed)["step"]
        peak_gib = device.peak_gib()
        loss = float(step())
        if flops is None:
            flops = _count_flops(net, step)
        tflops = flops / seconds / 1e12
        values = {"precision": label, "s_per_step": seconds, "samples_per_s": sizes.images / seconds,
                  "pairs_per_s": sizes.images * sizes.clouds / seconds, "peak_gib": peak_gib, "flops": flops,
                  "achieved_tflops": tflops, "loss": loss, "images": sizes.images, "clouds": sizes.clouds}  # fmt: skip
        text = (f"{seconds:.3f} s/step, {sizes.images / seconds:.1f} samples/s, "
                f"{_flop_text(flops)}/step = {_flop_text(flops / seconds)}/s")  # fmt: skip
        if peak_gib is not None:
            text += f", peak {peak_gib:.1f} GiB"
        if peak is not None:
            values |= {"bf16_peak_tflops": peak, "mfu": tflops / peak}
            text += f", MFU {100 * tflops / peak:.1f} % of {peak:.0f}"
        else:
            text += ", MFU: skipped: " + ("no CUDA" if not device.cuda else f"no known peak for {device.name}")
        finite = bool(torch.isfinite(torch.tensor(loss)))  # the row's check: the step's loss is a number
        text += "" if finite else f", LOSS NOT FINITE ({loss})"
        rows.append(Row(f"train step {sizes.images}x{sizes.clouds}, {label}", text, values, finite))


def reference_section(ctx: Context, rows: list[Row]) -> None:
    """Ours against the original's step on the same model and batch: `tiny` backbone geometry, the run's sizes,
    the original's precision on a GPU (fp16 autocast + GradScaler), fp32 on a CPU; each an optimizer step. The
    timed rounds alternate between the variants, so a clock or neighbour change hits all alike."""
    sizes, device = ctx.sizes, ctx.device
    cfg = sizes.config(backbone="tiny", backbone_dtype="fp32", fps_impl="loop")
    backbone = synthetic_backbone(tiny_shape(), device.device, torch.float32, "tiny")
    net = build_model(cfg, device.device, pretrained=False, backbone=backbone).train()
    batch = inputs(cfg, sizes.images, sizes.clouds, device.device)
    image, points, labels, text = batch
    low_precision = torch.float16 if device.cuda else None
    ours = training_step(net, batch, device.device, low_precision)
    optimizer = torch.optim.AdamW(param_groups(net, 0.06), lr=1e-4)
    scaler = torch.amp.GradScaler(device.device.type, enabled=low_precision is not None)

    def reference() -> None:  # original_step: one forward per cloud, losses summed, one backward (scaled here)
        optimizer.zero_grad(set_to_none=True)
        with original_ops(), autocast(device.device, low_precision):
            original_step(net, lambda p, g: scaler.scale(heatmap_loss(p.float(), g)), image, points, labels, text)
        scaler.step(optimizer)
        scaler.update()

    def ours_compiled() -> None:
        _set_fps_impl(net, "compiled")
        try:
            ours()
        finally:
            _set_fps_impl(net, "loop")

    fns = {"original": reference, "ours, fps loop": ours}
    if device.cuda and ctx.shared.get("compiled_fps_ok"):
        fns["ours, fps compiled"] = ours_compiled
    ctx.check_budget("the reference step")
    medians = median_times(fns, device, sizes.warmup, sizes.timed)
    precision = "fp16 autocast" if low_precision else "fp32"
    for name in list(fns)[1:]:
        ratio = medians["original"] / medians[name]
        rows.append(Row(
            f"tiny-backbone step {sizes.images}x{sizes.clouds}, {precision}: original vs {name}",
            f"original {medians['original']:.3f} s, ours {medians[name]:.3f} s: {ratio:.2f}x",
            {"original_s": medians["original"], "ours_s": medians[name], "ratio": ratio, "precision": precision},
        ))  # fmt: skip
    if "ours, fps compiled" not in fns:
        why = "no CUDA (compiled FPS is the GPU lever)" if not device.cuda else "the compiled FPS check did not pass"
        rows.append(Row("tiny-backbone step, ours with fps compiled", f"skipped: {why}"))


def point_ops_section(ctx: Context, rows: list[Row]) -> None:
    """Each op alone, fp32, at the model's level sizes for B·K clouds: ours against the original's code. There is
    no custom kernel in the project: FPS has the loop and the compiled path, the others one eager form each."""
    sizes, device = ctx.sizes, ctx.device
    cfg = sizes.config()
    clouds = sizes.images * sizes.clouds
    generator = torch.Generator().manual_seed(5)
    levels = sizes.fps_levels()
    xyz = [torch.rand(clouds, n, 3, generator=generator).to(device.device) for n, _ in levels]
    radii = (cfg.sa1_radii, cfg.sa2_radii, cfg.sa3_radii)
    nsamples = (cfg.sa1_nsample, cfg.sa2_nsample, cfg.sa3_nsample)

    def run(fns: dict, name: str, what: str) -> None:
        ctx.check_budget(name)
        medians = median_times(fns, device, sizes.warmup, sizes.timed)
        ours = [k for k in fns if k != "original"]
        text = ", ".join(f"{k} {1e3 * medians[k]:.2f} ms" for k in fns)
        text += "; original / " + ", ".join(f"{k}: {medians['original'] / medians[k]:.1f}x" for k in ours)
        rows.append(Row(name, text, {"what": what, **{f"{k}_s": v for k, v in medians.items()}}))

    for (n, npoint), points in zip(levels, xyz):
        fns = {"original": lambda p=points, s=npoint: original_fps(p, s),
               "loop": lambda p=points, s=npoint: farthest_point_sample(p, s, "random", "loop")}  # fmt: skip
        if ctx.shared.get("compiled_fps_ok"):
            fns["compiled"] = lambda p=points, s=npoint: farthest_point_sample(p, s, "random", "compiled")
        run(fns, f"FPS {clouds} x {n} -> {npoint}", "fps")
    for (n, npoint), points, r, ns in zip(levels, xyz, radii, nsamples):
        centres = points[:, :npoint].contiguous()
        fns = {
            "original": lambda p=points, c=centres, r=r, ns=ns: [query_ball_point(a, b, p, c) for a, b in zip(r, ns)],
            "ours": lambda p=points, c=centres, r=r, ns=ns: ball_queries(r, ns, square_distance(c, p)),
        }
        run(fns, f"ball query {clouds} x {npoint} centres in {n}, radii {list(r)}, nsample {list(ns)}", "ball_query")
    fp_levels = ((levels[1][1], levels[2][1]), (levels[0][1], levels[1][1]), (levels[0][0], levels[0][1]))
    for (n_to, n_from), c in zip(fp_levels, _fp_channels(cfg)):  # FP3, FP2, FP1: (points to, points from)
        xyz_to = torch.rand(clouds, n_to, 3, generator=generator).to(device.device)
        xyz_from = xyz_to[:, :n_from].contiguous()
        feats = torch.randn(clouds, n_from, c, generator=generator).to(device.device).requires_grad_()

        def fwd_bwd(fn, a=xyz_to, b=xyz_from, f=feats) -> None:
            fn(a, b, f, 0.01).sum().backward()

        fns = {"original": lambda fwd=fwd_bwd: fwd(original_three_nn),
               "ours": lambda fwd=fwd_bwd: fwd(three_nn_interpolate)}  # fmt: skip
        run(fns, f"3-NN interpolation fwd+bwd {clouds} x {n_to} <- {n_from}, {c} channels", "three_nn")


def _fp_channels(cfg) -> tuple[int, int, int]:
    """Channels interpolated by FP3, FP2, FP1: SA3's output, then FP3's and FP2's."""
    return sum(m[-1] for m in cfg.sa3_mlps), cfg.fp3_mlp[-1], cfg.fp2_mlp[-1]


def eval_section(ctx: Context, rows: list[Row]) -> None:
    """Eval forward (eval mode, inference mode, fp16 autocast as the paper configs' precision) of the paper_step
    model, one cloud per image, at each batch size."""
    sizes, device = ctx.sizes, ctx.device
    net = paper_net(ctx).eval()
    for batch_size in sizes.eval_batches:
        ctx.check_budget(f"eval at batch {batch_size}")
        image, points, _, text = inputs(net.cfg, batch_size, 1, device.device)

        def forward(image=image, points=points, text=text) -> None:
            with torch.inference_mode(), autocast(device.device, torch.float16):
                net(image, points, text)

        device.reset_peak()
        seconds = median_times({"eval": forward}, device, sizes.warmup, sizes.timed)["eval"]
        peak_gib = device.peak_gib()
        text_out = f"{batch_size / seconds:.1f} samples/s ({1e3 * seconds:.1f} ms per batch)"
        if peak_gib is not None:
            text_out += f", peak {peak_gib:.1f} GiB"
        rows.append(Row(f"eval forward, batch {batch_size}, fp16 autocast", text_out,
                        {"batch": batch_size, "s_per_batch": seconds, "samples_per_s": batch_size / seconds,
                         "peak_gib": peak_gib}))  # fmt: skip
    ctx.shared.pop("paper_net", None)  # the last user of the 7B model: give its memory back
    device.free()
