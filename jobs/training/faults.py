"""Faults a cluster inflicts on training (a worker killed by Ray's memory monitor, a lost node, a SIGKILL) and
how the driver counts and retries them, one budget (`train.max_failures`) across every layer.

Ray 2.60 Train V2 retries a failed worker group inside `fit()`, but not when the worker died of an
out-of-memory kill: `BackendSetupCallback` catches `RayActorError`/`RayTaskError` around the backend's
shutdown, not `OutOfMemoryError`, so the retry's worker-group shutdown re-raises it and `fit()` ends with a
`ControllerError`. Two layers close that gap:

1. `torch_backend.FaultTolerantTorchConfig`: the torch backend whose shutdown swallows any Ray system error (the dead
   worker's process group cannot be torn down anyway), so Ray's own retry proceeds.
2. The driver (`launcher.launch`) re-runs `fit()` with the same `RunConfig` for any system fault Ray did not
   retry; the controller reloads the run's checkpoint snapshot, so training resumes from the latest
   registered checkpoint.

Failures are counted where both layers see them: rank 0 leaves a file in the run folder at the start of every
worker-group attempt, so the driver knows how many attempts (and so failures) each `fit()` consumed, and hands
Ray only what is left of the budget.
"""

from __future__ import annotations

import logging
import time

from jobs.entry import causes
from jobs.run_folder import RunFolder

log = logging.getLogger("lma3d.train")


ATTEMPTS_DIR = "lma3d_attempts"


def record_attempt(run: RunFolder) -> None:
    """Rank 0, at the start of every worker-group attempt: one empty file in the run folder. A file on the run's
    storage, not an actor: Ray's memory monitor may kill any actor, the driver's included."""
    import uuid

    fs, folder = run.in_filesystem(ATTEMPTS_DIR)
    fs.create_dir(folder)
    with fs.open_output_stream(f"{folder}/{time.time_ns()}-{uuid.uuid4().hex[:8]}"):
        pass


def count_attempts(run: RunFolder) -> int:
    import pyarrow.fs

    fs, folder = run.in_filesystem(ATTEMPTS_DIR)
    selector = pyarrow.fs.FileSelector(folder, allow_not_found=True)
    return len(fs.get_file_info(selector))


def is_out_of_memory(error: BaseException) -> bool:
    import ray.exceptions

    for e in causes(error):
        if isinstance(e, ray.exceptions.OutOfMemoryError) or "memory monitor" in str(e).lower():
            return True
    return False


def is_system_fault(error: BaseException) -> bool:
    """A fault of the cluster (a dead worker, node, controller or process), not an exception raised by the training
    code. Ray's memory monitor (since 2.56) may kill several processes at once, the Train controller included."""
    import ray.exceptions
    from ray.train import WorkerGroupError

    if is_out_of_memory(error):
        return True
    system = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError,
              ray.exceptions.ObjectLostError)  # fmt: skip
    if isinstance(error, WorkerGroupError):  # the ranks that survived a dead one fail too: any dead one decides
        return any(isinstance(e, system) for f in error.worker_failures.values() for e in causes(f))
    return any(isinstance(e, system) for e in causes(error))


def describe(error: BaseException) -> str:
    """One line naming the fault."""
    if is_out_of_memory(error):
        return "a worker was killed by Ray's memory monitor (out of host memory)"
    if is_system_fault(error):
        return "a worker or its node died"
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[-1] if first else ''}"
