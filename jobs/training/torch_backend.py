"""Ray Train's torch backend with a shutdown that survives an out-of-memory kill (see jobs/training/faults.py).

Its own module because it imports Ray Train at import time; the controller unpickles it by reference.
"""

from __future__ import annotations

import logging
from typing import Any

import ray.exceptions
from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

log = logging.getLogger("lma3d.train")


class _FaultTolerantTorchBackend(_TorchBackend):
    def on_shutdown(self, worker_group: Any, backend_config: Any) -> None:
        try:
            super().on_shutdown(worker_group, backend_config)
        except ray.exceptions.RayError as e:  # OutOfMemoryError above all: Ray catches only actor/task errors
            log.warning("process group shutdown skipped, a worker is gone: %s", type(e).__name__)


class FaultTolerantTorchConfig(TorchConfig):
    @property
    def backend_cls(self) -> type:
        return _FaultTolerantTorchBackend
