"""Faults injected into a training run through its step callbacks (jobs/training/callbacks.py), for the tests of
recovery: a SIGKILLed worker, an out-of-memory kill by Ray's memory monitor, a worker whose node is killed.

Ray workers import this module as `tests.fault_injection` (the tests' PYTHONPATH holds the repository), which is
how the instances given to `launch(step_callbacks=[...])` are unpickled there.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from jobs.training.callbacks import StepEvent

log = logging.getLogger("lma3d.train")
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


@dataclass(frozen=True)
class FaultInjector:
    """Once (the marker file remembers) at `step` on `rank`, after Ray has registered the last checkpoint (its
    controller collects reports every ~2 s; a crash inside that window falls back to the checkpoint before, which
    would make the test's expectations racy), fail the way a cluster fails: `kind` "kill" SIGKILLs this worker;
    "oom" fills `bytes` of host memory and holds it `hold_s` until Ray's memory monitor kills the worker; "hang"
    blocks so that the test can kill this worker's node."""

    rank: int
    step: int
    marker: str
    kind: str = "kill"
    bytes: float = 0
    hold_s: float = 120

    @classmethod
    def from_dict(cls, fault: dict) -> FaultInjector:
        return cls(**fault)

    def __call__(self, event: StepEvent) -> None:
        if event.rank != self.rank or event.step != self.step or Path(self.marker).exists():
            return
        deadline = time.monotonic() + 60
        while event.last_checkpoint and time.monotonic() < deadline:
            if event.last_checkpoint.rstrip("/").rsplit("/", 1)[-1] in _snapshot(event.run_dir):
                break
            time.sleep(0.2)
        Path(self.marker).write_text(str(event.step))
        log.warning("fault injection: %s on rank %d at step %d", self.kind, event.rank, event.step)
        if self.kind == "oom":
            self._hold_memory()
        if self.kind == "hang":
            time.sleep(600)
            raise RuntimeError("fault injection: this worker's node was not killed within 600 s")
        os.kill(os.getpid(), signal.SIGKILL)

    def _hold_memory(self) -> None:
        held = []
        while len(held) < int(self.bytes) // 2**28 and psutil.virtual_memory().available > 2 * 2**30:
            held.append(torch.ones(2**28, dtype=torch.uint8))  # touched pages: resident, as the monitor sees them
        # Ray's memory monitor kills this process, or others of its node (it picks the newest first), well
        # before; released after hold_s so that the retried worker group does not meet the same pressure.
        time.sleep(self.hold_s)
        gib = len(held) / 4
        del held
        raise RuntimeError(f"fault injection: {gib:.1f} GiB held for {self.hold_s} s, not killed")


def _snapshot(run_dir: str) -> str:
    """Ray's run snapshot as text ("" while there is none), local or on object storage."""
    import pyarrow.fs

    if "://" not in run_dir:
        path = Path(run_dir, RAY_SNAPSHOT_FILE)
        return path.read_text() if path.exists() else ""
    fs, root = pyarrow.fs.FileSystem.from_uri(run_dir)
    try:
        with fs.open_input_stream(f"{root}/{RAY_SNAPSHOT_FILE}") as f:
            return f.read().decode()
    except FileNotFoundError:
        return ""
