"""Tiny synthetic shards and `lma3d train` overrides shared by the tests that run training on a Ray cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tiny import NUM_POINTS, tiny_overrides

TRAIN_IMAGES = 24
TESTS = Path(__file__).parent
REPO = TESTS.parent


def build_shards(root: Path) -> Path:
    """24 training images, 6 test samples; built with the test session's local Ray (Ray Data)."""
    from pipeline.shards.config import ShardConfig
    from pipeline.shards.job import run as shard
    from pipeline.synth.config import SynthConfig
    from pipeline.synth.generate import generate

    generate(SynthConfig(out=str(root / "raw"), train_images=TRAIN_IMAGES, test_samples=6, points_per_object=3,
                         num_points=NUM_POINTS, image_size=64))  # fmt: skip
    shard(root / "raw", "agpil", root / "shards", ShardConfig(samples_per_shard=6), num_points=NUM_POINTS)
    return root / "shards"


def train_overrides(shards: Path, workdir: Path, **train) -> list[str]:
    """2 workers, fp32, ZeRO-2, a step logged every step: 6 optimizer steps per epoch."""
    overrides = tiny_overrides(**{"data.shards": str(shards), "workdir": str(workdir)})
    overrides += ["data.batch_size=2", "data.eval_batch_size=3", "data.num_workers=0", "train.num_workers=2",
                  "train.precision=fp32", "train.epochs=4", "train.warmup_steps=10", "train.log_every=1",
                  "train.val_every=0", "train.zero_stage=2", "mlflow.system_metrics=false"]  # fmt: skip
    return overrides + [f"train.{k}={v}" for k, v in train.items()]


def run_driver(
    args: list[str], env: dict[str, str], log: Path, fault: dict | None = None, timeout: float = 600
) -> tuple[int, str]:
    """`lma3d train ARGS` in its own process (tests/train_driver.py), with an optional injected fault
    (tests/fault_injection.py, e.g. {"kind": "oom", "rank": 1, "step": 3, "marker": ...}): (exit code,
    the lines of its own `lma3d train:` messages on stderr, among Ray's logs). Its whole output is in `log`(.err)."""
    import json

    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    full_env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(TESTS / "train_driver.py"), json.dumps(fault), *args]
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        code = subprocess.run(cmd, env=full_env, stdout=out, stderr=err, timeout=timeout, cwd=REPO).returncode
    lines = log.with_suffix(".err").read_text(errors="replace").splitlines()
    return code, "\n".join(line for line in lines if line.startswith("lma3d train:"))
