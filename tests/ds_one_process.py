"""A real DeepSpeed engine of the tiny model in one process (rank 0 of 1, gloo on 127.0.0.1, DeepSpeed's CPU
accelerator, one thread): the shared set-up of the scripts tests/ds_precision.py, ds_checkpoint.py and
ds_resume.py, and `run_script`, the way the tests start them (each in a fresh process, so that its process group
and DeepSpeed's global state end with it)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from servers import free_port
from tiny import tiny_model_config

from jobs.experiment_config import ExperimentConfig
from jobs.training.engine import build_engine
from model.lmaffordance3d import build_model

HERE = Path(__file__).resolve().parent
TEXT = ["grasp the mug", "sit on the chair please", "open it"]


@contextlib.contextmanager
def one_process_group() -> Iterator[None]:
    """The environment of rank 0 in a world of 1 and its gloo process group, destroyed on leaving."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is first imported (by build_engine)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def tiny_config(stage: int, precision: str = "fp32") -> ExperimentConfig:
    """The tiny model trained with ZeRO `stage` in `precision`, lr 1e-3, batches of 3."""
    cfg = ExperimentConfig()
    cfg.model = tiny_model_config()
    cfg.train.zero_stage, cfg.train.precision, cfg.train.lr, cfg.data.batch_size = stage, precision, 1e-3, 3
    return cfg


def tiny_engine(cfg: ExperimentConfig) -> Any:
    """The training engine of `cfg` (world size 1, 10 steps per epoch) around a freshly built model."""
    return build_engine(build_model(cfg.model, pretrained=False), cfg, 1, 10)


def fixed_batch() -> dict[str, torch.Tensor]:
    """A batch of 3 (64x64 images, 256-point clouds, their labels) drawn from seed 1; its instructions are TEXT."""
    generator = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(3, 3, 64, 64, generator=generator),
        "points": torch.randn(3, 1, 3, 256, generator=generator),
        "label": torch.rand(3, 1, 256, generator=generator),
    }


def run_script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run tests/<name> with `args` in its own process from the repository root; output captured."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(HERE.parent)}
    return subprocess.run(
        [sys.executable, str(HERE / name), *args], cwd=HERE.parent, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
