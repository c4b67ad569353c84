"""The Ray Train side of a training rank: the Session over `ray.train` and `train_func`, what every worker runs.

Ray Train persists a reported checkpoint folder into `<storage_path>/<run>/<name>` and registers it in its run
snapshot (checkpoint_manager_snapshot.json) once every rank has reported; `ray.train.get_checkpoint()` only
ever hands out registered ones, the latest first.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray.train
import torch

from jobs.log import setup_logging
from jobs.training import faults, loop
from jobs.training.run_spec import RunSpec


class RaySession:
    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def device(self, use_gpu: bool) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device() if use_gpu else torch.device("cpu")

    def report(self, metrics: dict[str, Any], checkpoint_folder: Path, name: str) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        import pyarrow.fs

        if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
            yield checkpoint.path
            return
        # Not as_directory(): on object storage it downloads into one folder per node that the first rank to
        # finish deletes, possibly while another rank of the node still reads it (seen: a resumed rank 1 failed
        # on a half-deleted mp_rank_00_model_states.pt). Each rank reads its own copy instead.
        with tempfile.TemporaryDirectory(prefix="lma3d-checkpoint-") as folder:
            yield checkpoint.to_directory(folder)


def train_func(config: dict[str, Any]) -> None:
    """Every Ray Train worker: `config` is the train_loop_config, {"spec": RunSpec}."""
    spec: RunSpec = config["spec"]
    session = RaySession()
    setup_logging(session.rank)
    if session.rank == 0:  # first thing: the driver's failure budget counts attempts, those dying in set-up too
        faults.record_attempt(spec.folder)
    loop.TrainJob(spec, session).fit()
