"""Model speed on CPU against the original (benchmarks/reference_original.py), measured side by side in one run.

    python benchmarks/bench_model.py [--rounds 5] [--threads 2] [--only ROW ...] [--tiny] [overrides ...]

Every ratio is the median of `--rounds` alternating rounds (reference, ours, reference, ...) after one warm-up
round, same weights and inputs. Rows (`--only` names):
- demo-eval: the demo model (configs/demo.yaml, `tiny` backbone, 6 images x 3 clouds, eval-mode BatchNorm): point
  encoder forward+backward, the training step (ours: pairs batched, vectorised LLM input; original: three forward
  passes, per-sample loop) with the max abs difference of their outputs, bf16 autocast, metrics on 1000 x 2048
  (vectorised vs per-sample scikit-learn), achieved GFLOP/s of the step against this machine's dense matmul, peak RSS.
- paper-encoder: the paper's PointNet++ MSG, 18 clouds x 2048 points, forward+backward, training-mode per-cloud
  BatchNorm (the reference as the original trains: one forward per cloud slot of 6; benchmarks/bench_real_original.py
  times the real file beside it); ours layer by layer as at the start of issue 20, then with its levers added one
  at a time (out-of-place ReLU, first conv on the points, pooled last layer = the default), and under bf16
  autocast. (Inductor on the point MLPs, `model.compile_point_mlps`, was measured slower than these eager
  rewrites and removed: README.)
- paper-step / demo-step: a whole training step (training mode) at paper sizes (224 px, ResNet18 width 64, paper
  PointNet++ and fusion widths, `tiny` backbone) and at demo sizes;
  demo-step adds the step's share of this machine's fp32 2048² matmul rate (FLOPs counted with FlopCounterMode,
  ours and the original's for the same step, the matmul timed in the same run), the share of its point geometry
  (benchmarks/step_budget.py) and the step with `model.fps_impl: compiled` (inductor on CPU) as a lever.
- batchnorm: `released` BatchNorm statistics per point cloud (the original's K forwards) against joint statistics
  over all B·K clouds, whole training step, same model with `per_cloud_batchnorm` flipped, at demo size (6 images)
  and paper size (2 images), each x 3 clouds ("reference" column: joint, "ours": per cloud).
- gpu-fps: farthest-point sampling 18 x 2048 -> 512 on the GPU, `fps_impl` loop vs compiled (skipped without one).
`--tiny` shrinks every size for a smoke run (numbers meaningless). Overrides apply to the demo model.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_common import TINY_MODEL  # noqa: E402
from reference_original import original_encoder_pass, original_ops, original_step  # noqa: E402
from reference_original import three_nn_interpolate as gathered  # noqa: E402
from step_budget import geometry, matmul_gflops, useful_flops  # noqa: E402

import model.pointnet2  # noqa: E402
from jobs.experiment_config import ExperimentConfig  # noqa: E402
from jobs.typed_yaml import load  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.group_norm_bn import batchnorm_groups  # noqa: E402
from model.lmaffordance3d import build_model  # noqa: E402
from model.loss import heatmap_loss  # noqa: E402
from model.metrics import per_sample  # noqa: E402
from model.point_ops import farthest_point_sample  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def timed(fn, rounds: int) -> float:
    """Median of `rounds` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(reference, ours, rounds: int) -> tuple[float, float]:
    """Medians of `rounds` alternating runs of two functions (a noisy neighbour hits both alike), after one warm-up
    round (allocator, oneDNN primitives)."""
    medians = compare_all({"reference": reference, "ours": ours}, rounds)
    return medians["reference"], medians["ours"]


def compare_all(fns: dict, rounds: int) -> dict[str, float]:
    """Medians of `rounds` rounds, each running every function once in turn, after one warm-up round (which also
    builds oneDNN primitives and warms the allocator)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


TINY = TINY_MODEL  # the smoke sizes of `--tiny` (those of the tests' tiny model)
# Both sides: the `tiny` backbone in fp32, FPS from a random start as the original.
BENCH = ["model.backbone=tiny", "model.fps_start=random", "model.backbone_dtype=fp32"]


def demo_config(args: argparse.Namespace) -> ModelConfig:
    cfg = load(ExperimentConfig, str(REPO / "configs" / "demo.yaml"), BENCH + args.overrides).model
    return dataclasses.replace(cfg, **TINY) if args.tiny else cfg


def paper_config(args: argparse.Namespace) -> ModelConfig:
    """The paper's model (ModelConfig defaults: 224 px, ResNet18 width 64, paper PointNet++) on `tiny`."""
    cfg = ModelConfig(backbone="tiny", backbone_dtype="fp32", fps_start="random")
    return dataclasses.replace(cfg, **TINY) if args.tiny else cfg


def images(args: argparse.Namespace) -> int:
    return 2 if args.tiny else 6


def inputs(cfg: ModelConfig, b: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """image [b,3,S,S], unit-ball points [b,k,3,N], labels [b,k,N], b instructions."""
    image = torch.randn(b, 3, cfg.image_size, cfg.image_size)
    points = torch.randn(b, k, 3, cfg.num_points)
    points = points / points.norm(dim=2, keepdim=True).amax(-1, keepdim=True)
    return image, points, torch.rand(b, k, cfg.num_points), ["Where should I hold this to pour tea?"] * b


def describe(cfg: ModelConfig) -> str:
    return f"image {cfg.image_size}px, ResNet width {cfg.resnet_width}, emb {cfg.emb_dim}, SA1 {cfg.sa1_mlps}"


def print_rows(rows: list[tuple[str, float, float]]) -> None:
    print(f"{'measurement':<60}{'reference s':>12}{'ours s':>10}{'ratio':>9}")
    for name, ref, new in rows:
        print(f"{name:<60}{ref:>12.3f}{new:>10.3f}{ref / new:>8.2f}x")


def demo_eval_table(args: argparse.Namespace) -> None:
    """The demo-size table: eval-mode BatchNorm, so both step patterns see identical statistics."""
    torch.manual_seed(0)
    cfg = demo_config(args)
    net = build_model(cfg).eval()  # eval-mode BN: both step patterns see identical statistics
    b, k, n = images(args), 3, cfg.num_points
    image, points, labels, text = inputs(cfg, b, k)
    rows = []

    def encoder():
        levels = net.point_encoder(points.reshape(b * k, 3, n))
        levels[-1][1].sum().backward()

    def encoder_original():
        original_encoder_pass(net.point_encoder, points)

    rows.append((f"point encoder fwd+bwd ({b * k} clouds)", *compare(encoder_original, encoder, args.rounds)))

    def step():
        heatmap_loss(net(image, points, text), labels).backward()

    def step_original():
        with original_ops():
            original_step(net, heatmap_loss, image, points, labels, text)

    theirs_step, ours_step = compare(step_original, step, args.rounds)
    diff = 0.0
    with torch.no_grad():
        for i in range(k):  # one cloud per image at a time, so both draw the same random FPS starts
            torch.manual_seed(i)
            ours_i = net(image, points[:, i], text)
            torch.manual_seed(i)
            with original_ops():
                diff = max(diff, float((ours_i - net(image, points[:, i], text)).abs().max()))
    rows.append(("training step fp32", theirs_step, ours_step))

    def step_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probs = net(image, points, text)
        heatmap_loss(probs.float(), labels).backward()

    rows.append(("training step: fp32 vs bf16 autocast", *compare(step, step_bf16, args.rounds)))

    rng = np.random.default_rng(0)
    samples = 50 if args.tiny else 1000
    pred, gt = rng.random((samples, 2048)), rng.random((samples, 2048)) ** 3
    from sklearn.metrics import roc_auc_score

    def sklearn_metrics():
        for p, g in zip(pred, gt):
            bin_ = g >= 0.5
            roc_auc_score(bin_, p)
            np.mean([((p >= t) & bin_).sum() / ((p >= t) | bin_).sum() for t in np.linspace(0, 1, 20)])

    ours_metrics = timed(lambda: per_sample(pred, gt), args.rounds)
    rows.append((f"metrics {samples}x2048", timed(sklearn_metrics, 1), ours_metrics))
    ref_auc = np.array([roc_auc_score(g >= 0.5, p) for p, g in zip(pred[:100], gt[:100])])
    auc_diff = float(np.abs(per_sample(pred[:100], gt[:100])["auc"] - ref_auc).max())

    flops = useful_flops(step, gathered)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    print(f"demo-eval: batch {b} images x {k} clouds x {n} points, {describe(cfg)}, eval-mode BatchNorm")
    print_rows(rows)
    print(f"\nmax |ours - original| over the outputs: {diff:.2e}; AUC vs scikit-learn: {auc_diff:.1e}")
    fp32, bf16 = matmul_gflops(torch.float32, args.rounds), matmul_gflops(torch.bfloat16, args.rounds)
    achieved = flops / ours_step / 1e9
    print(f"training step: {flops / 1e9:.1f} GFLOP, {achieved:.1f} GFLOP/s fp32 = {100 * achieved / fp32:.0f}% of the "
          f"2048^2 matmul's {fp32:.0f} GFLOP/s (bf16 matmul: {bf16:.0f} GFLOP/s)")  # fmt: skip
    print(f"peak RSS after a step: {peak / 2**20:.2f} GiB (before the last step {peak_before / 2**20:.2f} GiB)\n")


# ---- training-mode rows against the original at paper and demo sizes (issue 20) -------------------------------


def layer_by_layer(encoder: torch.nn.Module, inplace_relu: bool, points_first: bool, pooled: bool) -> torch.nn.Module:
    """A copy of `encoder` with this issue's levers switched: in-place ReLU after BatchNorm, the first conv on the
    points before grouping, the last layer and max without the normalised tensor."""
    encoder = copy.deepcopy(encoder)
    for module in encoder.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = inplace_relu
        if isinstance(module, model.pointnet2.SetAbstractionMSG):
            module.convolve_points_first = tuple(f and points_first for f in module.convolve_points_first)
            module.pool_last_layer = pooled
    return encoder


def paper_encoder_table(args: argparse.Namespace) -> None:
    """The paper's PointNet++ MSG, 6 x 3 clouds, forward + backward with training-mode, per-cloud BatchNorm, against
    the original; ours with the levers added one at a time (issue 20), and under bf16 autocast."""
    cfg = paper_config(args)
    eager = build_model(cfg).point_encoder.train()
    b, k = images(args), 3
    _, points, _, _ = inputs(cfg, b, k)
    clouds = points.reshape(b * k, 3, cfg.num_points)

    def run(encoder, bf16: bool = False, original: bool = False):
        def step():
            if original:
                original_encoder_pass(encoder, points)
                return
            with batchnorm_groups(k):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = encoder(clouds)[-1][1]
                out.float().sum().backward()

        return step

    variants = {
        "original": run(eager, original=True),
        "eager, layer by layer, in-place ReLU (before)": run(layer_by_layer(eager, True, False, False)),
        "+ out-of-place ReLU after per-cloud BatchNorm": run(layer_by_layer(eager, False, False, False)),
        "+ first conv on the points (SA2, SA3)": run(layer_by_layer(eager, False, True, False)),
        "+ last layer and max pooled (= eager fp32)": run(eager),
        "eager, bf16 autocast": run(eager, bf16=True),
    }
    medians = compare_all(variants, args.rounds)
    print(f"paper-encoder: {b * k} clouds x {cfg.num_points} points, SA1 {cfg.sa1_mlps}, training-mode per-cloud "
          f"BatchNorm")  # fmt: skip
    print_rows([(f"paper encoder, {name}", medians["original"], medians[name]) for name in list(variants)[1:]])
    print()


def step_table(args: argparse.Namespace, size: str) -> None:
    """A whole training step in training mode, ours (pairs batched) vs the
    original (three forward passes); at demo size also its share of the fp32 matmul rate."""
    cfg = paper_config(args) if size == "paper" else demo_config(args)
    net = build_model(cfg).train()
    b, k = images(args), 3
    image, points, labels, text = inputs(cfg, b, k)

    def ours():
        heatmap_loss(net(image, points, text), labels).backward()

    def original():
        with original_ops():
            original_step(net, heatmap_loss, image, points, labels, text)

    fns = {"original": original, "ours": ours}
    if size == "demo":
        fns["geometry"] = geometry(net.point_encoder, points.flatten(0, 1))  # the step's FPS, distances, searches
        compiled = copy.deepcopy(net)
        for sa in (compiled.point_encoder.sa1, compiled.point_encoder.sa2, compiled.point_encoder.sa3):
            sa.fps_impl = "compiled"
        start = time.perf_counter()
        heatmap_loss(compiled(image, points, text), labels).backward()  # compiles (inductor), or loads its cache
        compile_s = time.perf_counter() - start
        fns["ours, fps_impl compiled"] = lambda: heatmap_loss(compiled(image, points, text), labels).backward()
    medians = compare_all(fns, args.rounds)
    print(f"{size}-step: batch {b} images x {k} clouds x {cfg.num_points} points, {describe(cfg)}, training mode")
    rows = [(f"training step fp32, {size} size", medians["original"], medians["ours"])]
    if size == "demo":
        rows.append(("ours: fps_impl loop vs compiled (CPU inductor)", medians["ours"], medians[list(fns)[-1]]))
    print_rows(rows)
    if size == "demo":
        print(f"fps_impl compiled: first step (compiling or loading the inductor cache) {compile_s:.1f} s")
        # ours executes fewer FLOPs than the original for the same step (first convs on the points): both counts
        flops, original_flops = useful_flops(ours, gathered), useful_flops(original, gathered)
        fp32 = matmul_gflops(torch.float32, args.rounds)
        achieved = flops / medians["ours"] / 1e9
        print(f"demo-size step at {100 * achieved / fp32:.0f} % of this machine's fp32 matmul rate: "
              f"{flops / 1e9:.1f} GFLOP in {medians['ours']:.3f} s = {achieved:.1f} GFLOP/s; 2048² fp32 matmul "
              f"{fp32:.0f} GFLOP/s; the original's {original_flops / 1e9:.1f} GFLOP in that time: "
              f"{100 * original_flops / medians['ours'] / 1e9 / fp32:.0f} %")  # fmt: skip
        print(f"of the step, the point geometry (FPS, distance matrices, ball queries, 3-NN search; no counted "
              f"FLOPs): {medians['geometry']:.3f} s = {100 * medians['geometry'] / medians['ours']:.0f} %; 40 % of "
              f"the matmul rate would leave the whole step {flops / (0.4 * fp32) / 1e9:.3f} s")  # fmt: skip
    print()


def gpu_fps_table(args: argparse.Namespace) -> None:
    """Farthest-point sampling on the GPU: the eager loop (launch-bound) vs the compiled path, same indices."""
    name = "GPU FPS 18 x 2048 -> 512: fps_impl loop vs compiled"
    if not torch.cuda.is_available():
        print(f"gpu-fps: {name}: skipped: no GPU\n")
        return
    xyz = torch.rand(18, 2048, 3, device="cuda")

    def run(impl: str):
        def fps():
            picks = farthest_point_sample(xyz, 512, "first", impl)
            torch.cuda.synchronize()
            return picks

        return fps

    loop, compiled = run("loop"), run("compiled")
    same = torch.equal(loop(), compiled())  # also compiles, before the timed rounds
    print(f"gpu-fps: {torch.cuda.get_device_name()}, indices equal: {same}")
    print_rows([(name, *compare(loop, compiled, args.rounds))])
    print()


def batchnorm_table(args: argparse.Namespace) -> None:
    """What per-cloud BatchNorm statistics cost against joint ones: one released model, the switch flipped."""
    rows = []
    for size, cfg in (("demo", demo_config(args)), ("paper", paper_config(args))):
        b = images(args) if size == "demo" else 2
        net = build_model(cfg).train()
        image, points, labels, text = inputs(cfg, b, 3)

        def step(per_cloud: bool, net=net, image=image, points=points, labels=labels, text=text):
            def run():
                net.per_cloud_batchnorm = per_cloud
                net.zero_grad(set_to_none=True)
                heatmap_loss(net(image, points, text), labels).backward()

            return run

        rows.append((f"{size} step: joint vs per-cloud BN ({b}x3)", *compare(step(False), step(True), args.rounds)))
    print("batchnorm: training step, BatchNorm statistics joint over B·K clouds vs per cloud (released)")
    print_rows(rows)
    print()


ROWS = {
    "demo-eval": demo_eval_table,
    "paper-encoder": paper_encoder_table,
    "paper-step": lambda args: step_table(args, "paper"),
    "demo-step": lambda args: step_table(args, "demo"),
    "batchnorm": batchnorm_table,
    "gpu-fps": gpu_fps_table,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", "--repeats", type=int, default=5, help="timed alternating rounds (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", action="append", choices=sorted(ROWS), help="run only these rows (repeatable)")
    parser.add_argument("--tiny", action="store_true", help="smoke run at tiny sizes (timings meaningless)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="demo-model overrides, e.g. model.image_size=224 model.resnet_width=64 "
        "model.sa3_mlps=[[128,256],[128,256]]",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, medians of {args.rounds} alternating rounds\n")
    for name, table in ROWS.items():
        if args.only is None or name in args.only:
            torch.manual_seed(0)
            table(args)


if __name__ == "__main__":
    main()
