"""What the sections of benchmarks/gpu_check.py share: sizes, the device, timing, inputs, the step and result rows."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from gpu_check_backbones import INSTRUCTIONS, LlamaShape

from model.config import ModelConfig
from model.lmaffordance3d import param_groups
from model.loss import heatmap_loss

# The tests' tiny model sizes (tests/tiny.py), for the CPU run.
TINY_MODEL = dict(
    num_points=256, image_size=64, resnet_width=8, emb_dim=32, num_heads=2, fusion_hidden=32,
    sa1_npoint=64, sa1_radii=(0.2, 0.4), sa1_nsample=(8, 16), sa1_mlps=((8, 16), (8, 16)),
    sa2_npoint=32, sa2_radii=(0.4, 0.8), sa2_nsample=(8, 16), sa2_mlps=((16, 32), (16, 32)),
    sa3_npoint=16, sa3_radii=(0.6, 1.0), sa3_nsample=(8, 8), sa3_mlps=((32, 32), (32, 32)),
    fp3_mlp=(32, 32), fp2_mlp=(32, 32), fp1_mlp=(32, 32), head_hidden=16, max_txt_len=16,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything the run's size decides. `paper()` on a GPU, `tiny()` on a CPU."""

    label: str
    model: dict
    """ModelConfig fields of every model measured (empty: the paper's, ModelConfig's defaults)."""
    images: int
    """B of the training step (the paper's 6), each image with `clouds` point clouds."""
    clouds: int
    check_images: int
    """B of the correctness forwards (B x 3 clouds; BatchNorm statistics per cloud need B >= 2)."""
    warmup: int
    timed: int
    train_steps: int
    """Steps of the loss-goes-down check."""
    llama: LlamaShape
    eval_batches: tuple[int, ...]

    @staticmethod
    def paper(llama_layers: int | None, width_divisor: int = 1) -> Sizes:
        llama = LlamaShape.vicuna_7b(llama_layers)
        llama = llama.scaled(llama.layers, width_divisor) if width_divisor > 1 else llama
        return Sizes("paper", {}, 6, 3, 2, 3, 10, 8, llama, (1, 8, 32))

    @staticmethod
    def tiny(llama_layers: int | None, width_divisor: int) -> Sizes:
        llama = LlamaShape.vicuna_7b().scaled(1 if llama_layers is None else llama_layers, width_divisor)
        return Sizes("tiny", TINY_MODEL, 2, 3, 2, 1, 2, 8, llama, (1, 8, 32))

    def config(self, **changes: Any) -> ModelConfig:
        """The measured model: released fidelity (per-cloud BatchNorm in training), FPS from a random start."""
        return ModelConfig(**{"fps_start": "random", **self.model, **changes})

    def fps_levels(self) -> list[tuple[int, int]]:
        """(points in, centroids out) of the three set-abstraction levels."""
        cfg = self.config()
        return [(cfg.num_points, cfg.sa1_npoint), (cfg.sa1_npoint, cfg.sa2_npoint), (cfg.sa2_npoint, cfg.sa3_npoint)]


class Device:
    """The device measured: synchronisation and peak memory (CUDA only)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    @property
    def name(self) -> str:
        if self.cuda:
            return torch.cuda.get_device_name(self.device)
        return f"CPU ({torch.get_num_threads()} torch threads)"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None

    def free(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


def median_times(fns: dict[str, Callable[[], Any]], device: Device, warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function over `rounds` alternating rounds (a slower neighbour or clock
    change hits all alike), after `warmup` untimed rounds; every call is bracketed by a device synchronisation."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            device.sync()
            start = time.perf_counter()
            fn()
            device.sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def inputs(
    cfg: ModelConfig, b: int, k: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """image [b,3,S,S], unit-ball points [b,k,3,N], labels [b,k,N] and b instructions, drawn on the CPU from a
    seeded generator (the same values whatever the device), then moved."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, cfg.image_size, cfg.image_size, generator=generator)
    points = torch.randn(b, k, 3, cfg.num_points, generator=generator)
    points = points / points.norm(dim=2, keepdim=True).amax(-1, keepdim=True)
    labels = torch.rand(b, k, cfg.num_points, generator=generator)
    text = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(b)]
    return image.to(device), points.to(device), labels.to(device), text


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast to `dtype` on the device's type, or nothing for None (full precision). Not
    `torch.autocast(enabled=False)`: that warns on CUDA when given the float32 it would not use anyway."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def training_step(
    net: torch.nn.Module, batch: tuple, device: torch.device, low_precision: torch.dtype | None, lr: float = 1e-4
) -> Callable[[], torch.Tensor]:
    """One optimizer step of the recipe (docs/training.md): forward of B images x K clouds as one batch under
    autocast to `low_precision` (None: full precision), focal + dice loss summed over K in fp32, backward (through a
    GradScaler under fp16, as the original's torch.cuda.amp), AdamW over the trainable parameters. Returns it."""
    image, points, labels, text = batch
    optimizer = torch.optim.AdamW(param_groups(net, 0.06), lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=low_precision == torch.float16)

    def step() -> torch.Tensor:  # the loss, not synchronised: a Python float would wait for the device
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, low_precision):
            probs = net(image, points, text)
        loss = heatmap_loss(probs.float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step


@dataclasses.dataclass
class Row:
    """One line of the table: what was measured, its numbers (JSON) and their text (table); `passed` for checks."""

    name: str
    text: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    passed: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "text": self.text, "passed": self.passed, **self.values}


class BudgetSpent(Exception):
    """The run's time budget ran out inside a section: its remaining rows are skipped."""


@dataclasses.dataclass
class Context:
    """What every section gets: the device, the sizes, the deadline, and what sections hand on to later ones."""

    device: Device
    sizes: Sizes
    deadline: float
    """time.monotonic() after which nothing new starts."""
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check_budget(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetSpent(f"skipped: time budget spent before {what}")

    def left_s(self) -> float:
        return self.deadline - time.monotonic()
