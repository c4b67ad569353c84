"""Evaluation throughput: the Ray Data actor pool (lma3d eval) vs the plain forward loop in one process.

    python benchmarks/bench_eval.py                       (demo-size model, 96 synthetic test samples)
    python benchmarks/bench_eval.py --samples 192 --model tiny --cores 2

Both sides predict and score (model.metrics.per_sample) the same test shards with the same weights and batch size,
and collect rows by key the same way (PredictionCollector). The plain loop runs in one
process with 1 and with `cores` torch threads; the pool with 1 and with `cores` actors of one thread each;
each row is compared with the fastest plain loop using at most as many cores. `total` includes building the
model (and starting the actors); `steady` is the throughput once they run. Also reported: the time the pool's
driver spends summarizing the per-sample scores (model.metrics.summarize). Target: pool >= 90 % of the plain loop.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def model_config(name: str):
    from jobs.experiment_config import ExperimentConfig
    from jobs.typed_yaml import load

    if name == "demo":
        return load(ExperimentConfig, ROOT / "configs" / "demo.yaml").model
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_model_config

    return tiny_model_config(num_points=2048)


def make_shards(folder: Path, samples: int, image_size: int, per_shard: int) -> Path:
    from pipeline.shards.config import ShardConfig
    from pipeline.shards.job import run
    from pipeline.synth.config import SynthConfig
    from pipeline.synth.generate import generate

    raw = folder / "raw"
    generate(
        SynthConfig(out=str(raw), train_images=23, test_samples=samples, points_per_object=3, image_size=image_size)
    )
    run(raw, "agpil", folder / "shards", ShardConfig(samples_per_shard=per_shard, min_shards=1))
    return folder / "shards"


def plain_loop(shards: Path, cfg, weights: dict, batch_size: int, threads: int) -> tuple[float, float, int]:
    """(seconds end to end, seconds of the loop alone, samples)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from inprocess_eval import predict_loader

    from jobs.loading import build_inference_model
    from pipeline.loaders import eval_loader
    from pipeline.loaders.config import DataConfig

    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = build_inference_model(cfg, weights)
    built = time.perf_counter()
    data = DataConfig(shards=str(shards), eval_batch_size=batch_size, num_workers=0)
    with tempfile.TemporaryDirectory(prefix="lma3d-bench-loop-") as scratch:
        predictions, _ = predict_loader(model, eval_loader(data, cfg.image_size, 0, 1), Path(scratch))
        done = time.perf_counter()
    return done - start, done - built, len(predictions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--model", choices=("demo", "tiny"), default="demo")
    parser.add_argument("--cores", type=int, default=2, help="the wide configurations use this many cores")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per configuration")
    args = parser.parse_args()

    import ray

    from jobs.evaluation.eval_config import EvalConfig
    from jobs.evaluation.runner import run_eval
    from jobs.loading import Resolved
    from model.lmaffordance3d import build_model

    cfg = model_config(args.model)
    torch.manual_seed(0)
    weights = build_model(cfg, pretrained=False).trainable_state_dict()
    rows = []  # (path, workers, cores, total s, steady s, metrics s, n)
    ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="lma3d-bench-eval-") as tmp:
            # Ray Data cuts batches within a shard: shards of 4 batches, as large shards would be (tail batch rare).
            shards = make_shards(Path(tmp), args.samples, max(cfg.image_size, 64), 4 * args.batch_size)
            configs = [("plain", c) for c in sorted({1, args.cores})] + [("pool", a) for a in sorted({1, args.cores})]
            results: dict[tuple[str, int], list] = {c: [] for c in configs}
            for _ in range(args.repeats):  # interleaved, so a busy spell on the shared machine hits every config
                for kind, width in configs:
                    if kind == "plain":
                        results[kind, width].append(plain_loop(shards, cfg, weights, args.batch_size, width))
                        continue
                    eval_cfg = EvalConfig(
                        batch_size=args.batch_size,
                        num_actors=width,
                        cpus_per_actor=min(1.0, (args.cores - 1) / width),  # one CPU stays for the shard readers
                        threads_per_actor=1,
                        viz_samples=0,
                    )
                    scratch = Path(tmp, f"scratch-{width}-{len(results[kind, width])}")
                    results[kind, width].append(run_eval(str(shards), Resolved(cfg, weights), eval_cfg, scratch))
            for width in sorted({1, args.cores}):
                total, steady, n = min(results["plain", width], key=lambda r: r[1])
                rows.append(("plain loop, 1 process", f"1 x {width} threads", width, total, steady, 0.0, n))
            for width in sorted({1, args.cores}):
                best = min(results["pool", width], key=lambda r: r.timings["pool_busy_s"])
                t, n = best.timings, len(best.predictions)
                rows.append(("Ray Data actor pool", f"{width} x 1 thread", width, t["total_s"], t["pool_busy_s"],
                             t["metrics_s"], n))  # fmt: skip
    finally:
        ray.shutdown()
    plain = {cores: n / steady for name, _, cores, _, steady, _, n in rows if name.startswith("plain")}
    # On a shared machine one process with more OpenMP threads can be slower than with one: compare each row with
    # the best plain loop that uses at most as many cores.
    best_plain = {cores: max(rate for c, rate in plain.items() if c <= cores) for cores in plain}
    print(f"\nmodel {args.model}, {rows[0][6]} test samples x {cfg.num_points} points, batch {args.batch_size}, "
          f"best of {args.repeats}, torch {torch.__version__}, ray {ray.__version__}")  # fmt: skip
    print(f"{'path':<23}{'workers':<16}{'total s':>8}{'samples/s':>11}{'steady/s':>10}{'vs best plain <= cores':>24}")
    for name, workers, cores, total, steady, _, n in rows:
        ratio = (n / steady) / best_plain[cores]
        print(f"{name:<23}{workers:<16}{total:>8.2f}{n / total:>11.2f}{n / steady:>10.2f}{ratio:>24.0%}")
    print("total = model build + read + decode + forward (+ Ray actor start-up); steady = after start-up")
    pool = [r for r in rows if r[0].startswith("Ray")]
    shares = ", ".join(f"{r[5] * 1000:.1f} ms = {r[5] / r[3]:.2%} ({r[1]})" for r in pool)
    print(f"summarizing the per-sample scores on the pool's driver (model.metrics.summarize): {shares} of the total")


if __name__ == "__main__":
    main()
