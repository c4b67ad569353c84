"""Training throughput through Ray Train + DeepSpeed (1 worker) vs a plain single-process loop of the same model,
data and batch, side by side in one run; and checkpoint save/load time and size.

    python benchmarks/bench_train.py [--steps 30] [--shards work/shards/demo] [--threads 2]

Needs shards (e.g. after `lma3d demo`, or `lma3d synth` + `lma3d shard`). Model: configs/demo.yaml.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from jobs.experiment_config import ExperimentConfig
from jobs.training.launcher import launch
from jobs.typed_yaml import load
from model.config import ModelConfig
from model.lmaffordance3d import build_model, param_groups
from model.loss import heatmap_loss
from pipeline.loaders import train_loader

REPO = Path(__file__).resolve().parent.parent


def plain_loop(cfg: ExperimentConfig, steps: int, threads: int) -> tuple[float, float]:
    torch.set_num_threads(threads)
    net = build_model(cfg.model)
    optimizer = torch.optim.AdamW(param_groups(net, cfg.train.weight_decay), lr=cfg.train.lr)
    loader = iter(train_loader(cfg.data, cfg.model.image_size, 0, 1, 0))
    wait = 0.0
    batch = next(loader)  # warm-up step, not timed
    for step in range(steps + 1):
        if step == 1:
            start, wait = time.perf_counter(), 0.0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probs = net(batch["image"], batch["points"], list(batch["instruction"]))
        heatmap_loss(probs.float(), batch["label"]).backward()
        optimizer.step()
        optimizer.zero_grad()
        waited = time.perf_counter()
        batch = next(loader)
        wait += time.perf_counter() - waited
    seconds = time.perf_counter() - start
    return steps * cfg.data.batch_size / seconds, wait / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--shards", default="work/shards/demo")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lma3d-bench-train-"))
    cfg = load(ExperimentConfig, str(REPO / "configs" / "demo.yaml"), [
        f"data.shards={Path(args.shards).resolve()}", f"workdir={work}", "train.num_workers=1",
        f"train.cpus_per_worker={args.threads}", f"train.max_steps={args.steps}", "train.val_every=0",
        "train.log_every=10", "mlflow.system_metrics=false", "train.checkpoint_every=0",
    ])  # fmt: skip
    plain_rate, plain_wait = plain_loop(cfg, args.steps, args.threads)
    start = time.perf_counter()
    summary = launch(cfg, run_name="bench")
    wall = time.perf_counter() - start
    ray_rate = summary.last_metrics["perf/samples_per_s"]
    ray_wait = summary.last_metrics["perf/data_wait_frac"]
    checkpoint = Path(summary.latest_checkpoint)
    size = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())

    import deepspeed  # noqa: F401  (DS_ACCELERATOR=cpu is set by the launcher for workers only)

    net = build_model(replace(cfg.model))
    start = time.perf_counter()
    states = next(checkpoint.glob("global_step*/mp_rank_00_model_states.pt"))
    torch.load(states, map_location="cpu", weights_only=False)
    load_s = time.perf_counter() - start
    paper = build_model(ModelConfig(), device="meta", pretrained=False)
    trainable = sum(p.numel() for p in paper.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in paper.parameters() if not p.requires_grad)
    del net

    print(f"{args.steps} steps, batch {cfg.data.batch_size} images x {cfg.data.pairs} clouds, {args.threads} threads\n")
    print(f"{'measurement':<48}{'plain loop':>12}{'Ray+DeepSpeed':>15}  ratio")
    print(f"{'train samples/s (1 worker, bf16)':<48}{plain_rate:>12.2f}{ray_rate:>15.2f}  {ray_rate / plain_rate:.2f}")
    print(f"{'data-wait fraction':<48}{plain_wait:>12.3f}{ray_wait:>15.3f}")
    print(f"\nfit() wall time incl. Ray start and DeepSpeed init: {wall:.1f} s")
    print(
        f"demo checkpoint (ZeRO-2, frozen backbone excluded): {size / 2**20:.1f} MiB; model states load {load_s:.2f} s"
    )
    per_checkpoint = trainable * 12 / 2**30
    print(f"paper preset: {trainable / 1e6:.1f} M trainable params -> fp32 weights + Adam m, v = "
          f"{per_checkpoint:.2f} GiB per checkpoint (+ bf16 copy {trainable * 2 / 2**30:.2f} GiB); the "
          f"{frozen / 1e9:.2f} B frozen backbone ({frozen * 2 / 2**30:.1f} GiB in fp16) is never written")  # fmt: skip


if __name__ == "__main__":
    main()
