"""What the training loop needs from whatever runs it: its rank, the world, its device, where checkpoints go and
which one to resume from. Ray Train (jobs/training/ray_worker.py) and one plain process
(jobs/training/local.py, `lma3d train --no-ray`) implement it; the loop (jobs/training/loop.py) never imports Ray.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch


class Session(Protocol):
    rank: int
    world_size: int

    def device(self, use_gpu: bool) -> torch.device:
        """The device this rank trains on."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_folder: Path, name: str) -> None:
        """Register the complete checkpoint in `checkpoint_folder` (every rank wrote its part) as `<run dir>/<name>`,
        with the metrics it is kept or dropped by (`val/auc`). Collective: every rank calls it, in step."""
        ...

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        """A local folder holding the run's latest registered checkpoint, for the duration (None: there is none)."""
        ...
