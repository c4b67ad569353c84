"""Checkpoints: DeepSpeed's layout (global_step{N}/, latest, zero_to_fp32.py) plus lma3d_meta.json and per-rank
RNG files, saved by every rank into one folder that Ray Train merges and persists on `ray.train.report`.

A checkpoint is complete only once `report` has returned on every rank: Ray registers it in its run
snapshot then, and `ray.train.get_checkpoint()` (our resume path) only ever hands out registered ones.
Frozen parameters (the language backbone) are never written: the meta records the backbone id instead.

Reading one back never runs code from it (checkpoints sit on shared storage): `screen` loads every file
DeepSpeed would unpickle with `torch.load(weights_only=True)` and the allow-list consolidation uses
(jobs.consolidate.safe_load), and DeepSpeed's own loading then goes through that same loader, so a
file swapped after screening is refused too. RNG states are JSON (jobs.training.rng_state).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from jobs.checkpoint_meta import (
    CHECKPOINT_TAG_PREFIX,
    META_FILE,
    META_FORMAT,
    SCORE_KEY,
    read_meta,
    tag_for,
    validated_score,
)
from jobs.consolidate import safe_load, tag_folder
from jobs.training import rng_state

log = logging.getLogger("lma3d.train.checkpoint")

def save(engine: Any, folder: Path, *, step: int, rank: int, meta: dict[str, Any]) -> None:
    """Every rank: its ZeRO shard, its RNG state; rank 0: the meta. Ends with a barrier."""
    folder.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(folder), tag=tag_for(step), client_state={"step": step}, exclude_frozen_parameters=True)
    rng_state.save(folder, rank)
    if rank == 0:
        tmp = folder / (META_FILE + ".tmp")
        tmp.write_text(json.dumps({"format": META_FORMAT, "tag": tag_for(step), "step": step, **meta}, indent=2))
        tmp.rename(folder / META_FILE)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def screen(folder: str | Path) -> dict[str, Any]:
    """Refuse (UnsafeCheckpoint / ValueError, one line naming the file) a checkpoint any file of which needs
    more than tensors, containers and DeepSpeed's plain data classes to unpickle; returns its meta.

    Screened: every *.pt in the tag folder (model states, ZeRO optimizer shards: what load_checkpoint reads)
    and every RNG file. Nothing is unpickled for real here, and tensors are memory-mapped, not read."""
    meta = read_meta(folder)
    tag_dir = tag_folder(folder, meta["tag"])
    files = sorted(tag_dir.glob("*.pt")) if tag_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no DeepSpeed files in {meta['tag']}/")
    for file in files:
        safe_load(file)
    for file in sorted(Path(folder).glob("rng_rank*.json")):
        rng_state.read(file)
    for file in sorted(Path(folder).glob("rng_rank*.pt")):
        rng_state.read_legacy(file)
    return meta


@contextlib.contextmanager
def _weights_only_loading(engine: Any) -> Iterator[None]:
    """DeepSpeed's checkpoint engine unpickles with weights_only=False: route it through safe_load instead."""
    checkpoint_engine = engine.checkpoint_engine
    checkpoint_engine.load = lambda path, map_location=None: safe_load(path, mmap=False)
    try:
        yield
    finally:
        del checkpoint_engine.load  # the class's method again


def load(engine: Any, folder: str | Path, *, rank: int, world_size: int, zero_stage: int) -> dict[str, Any]:
    """Restore model, optimizer and scheduler (and this rank's RNG) from `folder`; returns its meta.

    DeepSpeed's ZeRO optimizer shards are per rank: with another world size or stage only the module
    weights can be restored (stages 0–2 keep them whole), and the scheduler is restored from the meta.
    """
    meta = screen(folder)
    same_layout = meta.get("world_size") == world_size and meta.get("zero_stage") == zero_stage
    if not same_layout and (zero_stage == 3 or meta.get("zero_stage") == 3):
        raise ValueError(
            f"{folder}: saved with {meta.get('world_size')} workers at ZeRO-{meta.get('zero_stage')}, now "
            f"{world_size} at ZeRO-{zero_stage}; ZeRO-3 shards only load into the same layout"
        )
    with _weights_only_loading(engine):
        load_path, _ = engine.load_checkpoint(
            str(folder),
            tag=meta["tag"],
            load_module_strict=False,  # frozen parameters were excluded on save
            load_optimizer_states=same_layout,
            load_lr_scheduler_states=same_layout,
            load_module_only=not same_layout,
        )
    if load_path is None:
        raise RuntimeError(f"{folder}: DeepSpeed found no checkpoint for tag {meta['tag']}")
    if not same_layout:
        log.warning(
            "%s: saved with %s workers at ZeRO-%s: restored weights only (optimizer state starts fresh)",
            folder, meta.get("world_size"), meta.get("zero_stage"),
        )  # fmt: skip
        if engine.lr_scheduler is not None:
            engine.lr_scheduler.load_state_dict(meta["scheduler"])
    rng_file, legacy = rng_state.file_for(folder, rank), rng_state.legacy_file_for(folder, rank)
    if rng_file.is_file():
        rng_state.apply(rng_state.read(rng_file))
    elif legacy.is_file():
        rng_state.apply(rng_state.read_legacy(legacy))
    else:
        log.warning("%s: no RNG state for rank %d; random streams restart from the seed", folder, rank)
    return meta


def trainable_weights(engine: Any, zero_stage: int, rank: int) -> dict[str, torch.Tensor] | None:
    """The trainable state dict on CPU, on rank 0 (None elsewhere). Collective under ZeRO-3: every rank must
    call it, because the partitioned parameters are all-gathered first (a full copy of the trainable
    weights lands on every rank for the duration, ~164 MB fp32 at paper size)."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        params = [p for p in module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return _cpu_copy(module) if rank == 0 else None
    return _cpu_copy(module) if rank == 0 else None


def _cpu_copy(module: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.trainable_state_dict().items()}


def checkpoint_tag_value(step: int, metrics: dict[str, Any], path: str) -> str:
    return json.dumps({"step": step, SCORE_KEY: validated_score(metrics.get(SCORE_KEY)), "path": path})


def reconcile_checkpoint_tags(
    tracking_uri: str, run_id: str, kept: list[tuple[Any, dict[str, Any]]], run_dir: str = ""
) -> None:
    """Driver, after fit(): the run's `checkpoint/<dir>` tags list exactly the checkpoints Ray kept, each path as
    the user names it (on object storage with its scheme: Ray's paths there are `bucket/key`)."""
    from mlflow.tracking import MlflowClient

    from jobs.run_folder import location
    from jobs.tracking import retry

    def update() -> bool:
        client = MlflowClient(tracking_uri)
        keep = {}
        for checkpoint, metrics in kept:
            name = Path(checkpoint.path).name
            keep[CHECKPOINT_TAG_PREFIX + name] = checkpoint_tag_value(
                int(metrics.get("step", -1)), metrics, location(run_dir, checkpoint.path)
            )
        for key in client.get_run(run_id).data.tags:
            if key.startswith(CHECKPOINT_TAG_PREFIX) and key not in keep:
                client.delete_tag(run_id, key)
        for key, value in keep.items():
            client.set_tag(run_id, key, value)
        return True

    retry("checkpoint tags", update)
