"""`lma3d train --no-ray`: the training loop of jobs/training/loop.py in this very process, as one rank.

No Ray is imported or started: a gloo (NCCL with train.use_gpu) process group of world size 1 on 127.0.0.1 lets
DeepSpeed run as it does under Ray Train, so checkpoints have the same layout and content and MLflow gets the same
run, metrics and artifacts. `breakpoint()` anywhere in the loop stops in this terminal.

Checkpoints are written to a temporary folder, copied beside the run's others under a hidden name and renamed
into place, then registered in `lma3d_checkpoints.json` (jobs/run_folder.py): what Ray Train's report does
for a Ray run, so `RunFolder.registered`, `--resume`, `lma3d eval` and `lma3d export` find them the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jobs.run_folder import RunFolder, register_local
from jobs.tracking import tracking_uri_for_now
from jobs.training import loop
from jobs.training.run_spec import RunSpec


@dataclass(frozen=True)
class LocalCheckpoint:
    path: str


@dataclass
class LocalResult:
    """The parts of Ray Train's Result the launcher summarises."""

    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: LocalCheckpoint | None = None
    best_checkpoints: list[tuple[LocalCheckpoint, dict[str, Any]]] = field(default_factory=list)


class LocalSession:
    rank, world_size = 0, 1

    def __init__(self, run_dir: Path, keep_checkpoints: int) -> None:
        self.run_dir, self.keep = run_dir, keep_checkpoints
        self.result = LocalResult()

    def device(self, use_gpu: bool) -> torch.device:
        return torch.device("cuda", 0) if use_gpu else torch.device("cpu")

    def report(self, metrics: dict[str, Any], checkpoint_folder: Path, name: str) -> None:
        target, staging = self.run_dir / name, self.run_dir / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint_folder, staging)
        shutil.rmtree(target, ignore_errors=True)  # an unregistered leftover of a job that died copying it
        staging.rename(target)
        kept = register_local(self.run_dir, name, metrics, self.keep)
        self.result.metrics = dict(metrics)
        self.result.checkpoint = LocalCheckpoint(str(target))
        self.result.best_checkpoints = [(LocalCheckpoint(str(self.run_dir / e["checkpoint_dir_name"])), e["metrics"])
                                        for e in kept]  # fmt: skip

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        _, metas = RunFolder(str(self.run_dir.parent), self.run_dir.name).registered()
        yield metas[-1]["path"] if metas else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_process_group(backend: str) -> Iterator[None]:
    """torch.distributed with this process as rank 0 of 1 (the environment DeepSpeed reads, set for the duration)."""
    port = free_port()
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
        _forget_deepspeed_groups()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches groups made from the world it first saw (its clone of the world group, ZeRO's intra-node
    group) in module globals; after destroy_process_group a second --no-ray run in the same process (a notebook, a
    test session) would hand the destroyed ones to torch: "Group ... is not registered"."""
    import sys

    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is None:
        return
    groups._WORLD_GROUP = None
    groups._ZERO_PARAM_INTRA_PARALLEL_GROUP = None
    for cache in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                  "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):  # fmt: skip
        getattr(groups, cache).clear()


def train_in_process(spec: RunSpec) -> LocalResult:
    """Train the run in this process; returns what Ray Train's fit() would have."""
    cfg, folder = spec.cfg, spec.folder
    run_dir = Path(folder.path)
    run_dir.mkdir(parents=True, exist_ok=True)
    session = LocalSession(run_dir, cfg.train.keep_checkpoints)
    # The loop's MLflow logging sets the process's tracking URI: this process goes on after it (tests, sweeps).
    with one_process_group("nccl" if cfg.train.use_gpu else "gloo"), tracking_uri_for_now(cfg.tracking_uri):
        loop.TrainJob(spec, session).fit()
    if session.result.checkpoint is None:  # nothing left to train: the run's latest, as Ray's Result has it
        _, metas = folder.registered()
        if metas:
            session.result.checkpoint = LocalCheckpoint(metas[-1]["path"])
            session.result.metrics = dict(metas[-1].get("metrics") or {})
    return session.result
