"""One log format for every verb and rank: `[lma3d] time | LEVEL | rankN | logger: message`.

Only the project's own records and other libraries' warnings go through it: Ray Train logs every report at INFO
on loggers named after its files (`Reporting training result 1: TrainingReport(...)`, a line per checkpoint),
which would otherwise be repeated in the project's format between its own progress lines."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "[lma3d] %(asctime)s | %(levelname)s | %(rank)s | %(name)s: %(message)s"
OWN = ("lma3d", "jobs", "pipeline", "model", "root", "__main__")
"""Loggers whose INFO records are the project's (`root`: logging.info in the project's scripts)."""


class _ProjectFilter(logging.Filter):
    def __init__(self, rank: str) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] in OWN


def quiet_progress_bars() -> None:
    """Off a terminal (a log file, a Ray worker's output, CI) each redraw of a tqdm bar is a line of its own:
    MLflow's artifact download bar and transformers' `Loading weights` bar are switched off there (their own
    variables, unless the user set them). At a terminal they stay."""
    if sys.stderr.isatty():
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads it when first imported
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def setup_logging(rank: int | None = None, level: int | str | None = None) -> None:
    """Configure the root logger once per process (progress bars quiet off a terminal). Non-zero ranks log
    warnings only."""
    quiet_progress_bars()
    if rank is None:
        env = os.environ.get("RANK")
        rank = int(env) if env is not None and env.isdigit() else None
    if level is None:
        level = os.environ.get("LMA3D_LOG_LEVEL", "INFO" if not rank else "WARNING")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_ProjectFilter("main" if rank is None else f"rank{rank}"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
