"""One log format for every verb and rank: `[lma3d] time | LEVEL | rankN | logger: message`."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "[lma3d] %(asctime)s | %(levelname)s | %(rank)s | %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: str) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(rank: int | None = None, level: int | str | None = None) -> None:
    """Configure the root logger once per process. Non-zero ranks log warnings only."""
    if rank is None:
        env = os.environ.get("RANK")
        rank = int(env) if env is not None and env.isdigit() else None
    if level is None:
        level = os.environ.get("LMA3D_LOG_LEVEL", "INFO" if not rank else "WARNING")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_RankFilter("main" if rank is None else f"rank{rank}"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
