"""The one resolved training run: what the launcher decided, handed as this typed, immutable object to the loop
of every rank (through Ray Train's train_loop_config, or in this process with --no-ray)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.experiment_config import ExperimentConfig
from jobs.run_folder import RunFolder


@dataclass(frozen=True)
class RunSpec:
    """What every rank is given, all of it decided on the driver (jobs/training/launcher.py): the experiment
    config with its paths absolute and every rule checked, the run's folder, its MLflow run and the checkpoint to
    resume from. It crosses Ray as this object (Ray Train's train_loop_config holds it); a rank never re-decides."""

    cfg: ExperimentConfig
    folder: RunFolder
    mlflow_run_id: str
    resume_from: str | None = None
    step_callbacks: tuple[Any, ...] = ()
    """Picklable callables the launcher was handed (a sweep's reporter), run after the config's own."""
