"""Step callbacks: user code the training loop calls on every rank after each optimizer step.

The extension point for what a run should do at a step without changing the loop (export a metric to another
system, stop on an external signal, sync a folder, inject a fault in a test). Two ways in:

- `train.step_callbacks` in the config: importable names `package.module:function` (or `package.module.function`),
  resolved in every worker; the function is called as `function(event)`;
- `launch(..., step_callbacks=[obj])` from Python: any picklable callable taking the event (an instance of a class
  in an importable module is pickled by reference, so every worker must be able to import that module).

A callback runs inside the step loop of every rank: keep it quick, and collective only if every rank calls it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepEvent:
    rank: int
    world_size: int
    step: int
    """Optimizer steps done so far (1 after the first)."""
    total_steps: int
    run_dir: str
    """`<train.storage_path>/<run name>`: where the run's checkpoints are registered."""
    last_checkpoint: str
    """Folder name of the last checkpoint this job reported ("" before the first)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The last logged training metrics (train/loss, train/lr, ...)."""


StepCallback = Callable[[StepEvent], Any]


def resolve(name: str) -> StepCallback:
    """The callable `package.module:attr` (or `package.module.attr`) names; ValueError naming it otherwise."""
    module_name, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"train.step_callbacks: {name!r} is not an importable name (package.module:function)")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"train.step_callbacks: cannot import {name!r} ({type(e).__name__}: {e})") from None
    if not callable(target):
        raise ValueError(f"train.step_callbacks: {name!r} is not callable")
    return target


def resolve_all(entries: Sequence[str | StepCallback]) -> list[StepCallback]:
    return [resolve(e) if isinstance(e, str) else e for e in entries]
