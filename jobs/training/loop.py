"""The training loop of one rank (build → restore → epochs of steps → validate → checkpoint), free of Ray.

It talks to whatever runs it through a jobs.training.session.Session: Ray Train's workers
(jobs/training/ray_worker.py) or one plain process (jobs/training/local.py, `lma3d train --no-ray`).
Every collective decision (log, validate, checkpoint, stop) depends only on the step and epoch counters,
which are identical on all ranks, so every rank calls `session.report` the same number of times.
"""

from __future__ import annotations

import logging
import math
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from jobs.checkpoint_meta import CHECKPOINT_TAG_PREFIX, UNVALIDATED_SCORE, dir_name_for, read_meta
from jobs.experiment_config import ExperimentConfig
from jobs.training import checkpoint as ckpt
from jobs.training.callbacks import StepEvent, resolve_all
from jobs.training.engine import (
    build_engine,
    build_training_model,
    compute_dtype,
    configure_worker,
    seed_everything,
    to_device,
)
from jobs.training.run_spec import RunSpec
from jobs.training.session import Session
from jobs.training.tracking import UNSENT_FILE, RunLogger
from jobs.training.validate import validate
from jobs.typed_yaml import dump, to_dict

log = logging.getLogger("lma3d.train")


class Window:
    """Sums over one logging window, reduced across ranks when logged."""

    def __init__(self) -> None:
        self.loss = self.micro = self.wait = self.images = 0.0
        self.start = time.perf_counter()

    def reduced(self, world: int) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        totals = torch.tensor([self.loss, self.micro, self.wait, self.images, elapsed], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(totals)
        loss, micro, wait, images, elapsed_sum = totals.tolist()
        return {
            "train/loss": loss / max(micro, 1.0),
            "perf/samples_per_s": images / max(elapsed_sum / world, 1e-9),
            "perf/data_wait_frac": wait / max(elapsed_sum, 1e-9),
        }


class TrainJob:
    def __init__(self, spec: RunSpec, session: Session) -> None:
        self.spec, self.session = spec, session
        self.rank, self.world = rank, world = session.rank, session.world_size
        self.cfg: ExperimentConfig = spec.cfg
        train = self.cfg.train
        self.callbacks = resolve_all([*train.step_callbacks, *spec.step_callbacks])
        self.device = configure_worker(train, session.device(train.use_gpu))
        seed_everything(train.seed + rank)  # the original seeds 42 + rank
        from pipeline.loaders import train_loader

        if rank == 0:  # the first minutes would be silent otherwise: say what the start-up is doing
            log.info("building the model (backbone %s, %s)", self.cfg.model.backbone_path or self.cfg.model.backbone,
                     self.cfg.model.backbone_mode)  # fmt: skip
        self.model = build_training_model(self.cfg, self.device, world)
        self.backbone_id = str(self.model.backbone_id)
        batches = len(train_loader(self.cfg.data, self.cfg.model.image_size, rank, world, 0))
        self.steps_per_epoch = batches // train.grad_accum
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{batches} batches per rank per epoch < train.grad_accum {train.grad_accum}: "
                "fewer workers, a smaller data.batch_size or more data"
            )
        self.total_steps = self.steps_per_epoch * train.epochs
        self.corrupt_sets: list[set[str]] = []
        if train.max_steps:
            self.total_steps = min(self.total_steps, train.max_steps)
        if rank == 0:
            log.info("starting DeepSpeed ZeRO-%d on %d worker(s) (on CPU its first use on a machine builds a comm op "
                     "with gcc, about 2 min)", train.zero_stage, world)  # fmt: skip
        self.engine = build_engine(self.model, self.cfg, world, self.steps_per_epoch)
        self.dtype = compute_dtype(self.engine)
        self.step = 0
        self.best = {"val/auc": float("nan"), "step": -1}
        self.last_train: dict[str, float] = {}
        self.last_checkpoint = ""
        self.folder = spec.folder
        # what MLflow never took, kept in the run folder
        unsent = None if "://" in self.folder.path else Path(self.folder.path) / UNSENT_FILE
        self.run = RunLogger(rank == 0, self.cfg.tracking_uri, spec.mlflow_run_id, self.cfg.mlflow.system_metrics,
                             unsent_path=unsent)  # fmt: skip

    # ---- restore -------------------------------------------------------------------------------------
    def restore(self) -> None:
        """From the newer of the run's latest registered checkpoint and `resume_from` (--resume PATH, or the latest
        checkpoint of a run that the other kind of job, Ray or --no-ray, registered); else nothing."""
        resume_from = self.spec.resume_from
        with self.session.latest_checkpoint() as folder:
            if folder is not None and (not resume_from or "://" in resume_from or _step(folder) >= _step(resume_from)):
                meta = self._load(folder)
            elif resume_from:
                meta = self._load(resume_from)
            else:
                return
        self.step = int(meta["step"])
        self.best = meta.get("best", self.best)
        log.info("resumed at step %d (lr %.3e)", self.step, self.engine.lr_scheduler.get_last_lr()[0])

    def _load(self, folder: str | Path) -> dict[str, Any]:
        return ckpt.load(
            self.engine, folder, rank=self.rank, world_size=self.world, zero_stage=self.cfg.train.zero_stage
        )

    # ---- training ------------------------------------------------------------------------------------
    def fit(self) -> None:
        """This rank's whole job: restore, then epochs of steps, validation and checkpoints."""
        self.restore()
        self.run.start(node_id=socket.gethostname())
        self.manifest = _manifest(self.cfg)
        self.run.tags({"backbone": self.backbone_id, "manifest_fingerprint": self.manifest.get("fingerprint", "")})
        contexts = ["training", "validation"] if self.cfg.train.val_every > 0 else ["training"]
        self.run.dataset_inputs(self.cfg.data.shards, self.manifest, contexts)
        if self.step >= self.total_steps:
            log.info("run already complete at step %d", self.step)
        bar = _progress_bar(self.rank, self.total_steps, self.step)
        self.timer = (time.perf_counter(), self.step)  # for the ETA of the progress lines
        start_epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
        for epoch in range(start_epoch, self.cfg.train.epochs):
            if self.step >= self.total_steps:
                break
            self._epoch(epoch, skip=done_in_epoch * self.cfg.train.grad_accum if epoch == start_epoch else 0, bar=bar)
            finished = self.step >= self.total_steps
            every = self.cfg.train.val_every
            due = every > 0 and ((epoch + 1) % every == 0 or finished)
            self._checkpoint(epoch, self._validate(epoch) if due else {})
        if bar is not None:
            bar.close()
        self.run.end()

    def _epoch(self, epoch: int, skip: int, bar: Any) -> None:
        from model.loss import heatmap_loss
        from pipeline.loaders import train_loader

        train, engine = self.cfg.train, self.engine
        micro_per_epoch = self.steps_per_epoch * train.grad_accum
        data = train_loader(self.cfg.data, self.cfg.model.image_size, self.rank, self.world, epoch)
        self.corrupt_sets.append(data.corrupt_shards)  # the loader's own set, filled as it runs
        loader = iter(data)
        for _ in range(skip):  # data position of a mid-epoch checkpoint: same order, consumed batches dropped
            next(loader)
        set_train_mode(engine.module, train.norm_eval)
        window = Window()
        for _ in range(skip, micro_per_epoch):
            waited = time.perf_counter()
            batch = next(loader)
            window.wait += time.perf_counter() - waited
            moved = to_device(batch, self.device, self.dtype)
            probs = engine(moved["image"], moved["points"], list(batch["instruction"]))
            loss = heatmap_loss(probs.float(), moved["label"].float())
            engine.backward(loss)
            lr = engine.lr_scheduler.get_last_lr()[0]
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            window.loss += float(loss.detach())
            window.micro += 1
            window.images += moved["image"].shape[0]
            if not boundary:
                continue
            self.step += 1
            if bar is not None:
                bar.update(1)
            self._call_back()
            if self.step % train.log_every == 0 or self.step == self.total_steps:
                self._log(window, lr, epoch)
                window = Window()
            last_of_epoch = self.step % self.steps_per_epoch == 0
            if self.step >= self.total_steps:
                return
            if train.checkpoint_every and self.step % train.checkpoint_every == 0 and not last_of_epoch:
                self._checkpoint(epoch, {})

    def _call_back(self) -> None:
        if not self.callbacks:
            return
        event = StepEvent(self.rank, self.world, self.step, self.total_steps, self.folder.path, self.last_checkpoint,
                          dict(self.last_train))  # fmt: skip
        for callback in self.callbacks:
            callback(event)

    def _log(self, window: Window, lr: float, epoch: int) -> None:
        metrics = window.reduced(self.world) | {"train/lr": lr}
        if self.cfg.data.on_corrupt_shard == "skip":
            metrics["data/corrupt_shards"] = float(self._corrupt_shards())
        grad_norm = _grad_norm(self.engine)
        if grad_norm is not None:
            metrics["train/grad_norm"] = grad_norm
        self.last_train = metrics
        self.run.metrics(metrics, step=self.step)
        memory = f"rss {psutil.Process().memory_info().rss / 2**30:.2f} GiB"
        if torch.cuda.is_available():
            memory += f", gpu {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        log.info(
            "step %d/%d (%s) epoch %d | loss %.4f | lr %.3e | grad_norm %s | %.1f samples/s | data-wait %.0f%% | %s",
            self.step, self.total_steps, eta(self.timer, self.step, self.total_steps), epoch, metrics["train/loss"], lr,
            f"{grad_norm:.3f}" if grad_norm is not None else "-", metrics["perf/samples_per_s"],
            100 * metrics["perf/data_wait_frac"], memory,
        )  # fmt: skip

    def _corrupt_shards(self) -> int:
        """Distinct shards skipped as corrupt so far, over every rank and epoch (a collective: every rank logs
        at the same steps)."""
        names = set().union(*self.corrupt_sets)
        if self.world > 1:
            gathered: list[set[str] | None] = [None] * self.world
            torch.distributed.all_gather_object(gathered, names)
            names = set().union(*gathered)
        return len(names)

    def _validate(self, epoch: int) -> dict[str, float]:
        metrics, tables = validate(self.engine, self.cfg, self.rank, self.world)
        set_train_mode(self.engine.module, self.cfg.train.norm_eval)
        # Not logged here: they are logged with the checkpoint that follows, linked to its LoggedModel.
        if tables is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp, f"step_{self.step:09d}.json")
                path.write_text(_json(tables))
                self.run.artifact(path, "val")
        return metrics

    # ---- checkpoints ---------------------------------------------------------------------------------
    def _checkpoint(self, epoch: int, val: dict[str, float]) -> None:
        score = val.get("val/auc", float("nan"))
        improved = not math.isnan(score) and (math.isnan(self.best["val/auc"]) or score > self.best["val/auc"])
        if improved:
            self.best = {"val/auc": score, "step": self.step}
        name = dir_name_for(self.step)
        metrics = {"step": self.step, "epoch": epoch, **self.last_train, "val/auc": UNVALIDATED_SCORE, **val}
        meta = {
            "epoch": epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.world,
            "zero_stage": self.cfg.train.zero_stage,
            "precision": self.cfg.train.precision,  # evaluation and predict compute under it
            "backbone_id": self.backbone_id,
            "manifest_fingerprint": self.manifest.get("fingerprint", ""),
            "config": to_dict(self.cfg),
            "config_yaml": dump(self.cfg),
            "scheduler": self.engine.lr_scheduler.state_dict(),
            "mlflow_run_id": self.spec.mlflow_run_id,
            "tracking_uri": self.cfg.tracking_uri,
            "best": self.best,
            "metrics": metrics,
        }
        with tempfile.TemporaryDirectory(prefix="lma3d-ckpt-") as tmp:
            folder = Path(tmp, name)
            ckpt.save(self.engine, folder, step=self.step, rank=self.rank, meta=meta)
            weights = ckpt.trainable_weights(self.engine, self.cfg.train.zero_stage, self.rank)
            self.session.report(metrics, folder, name)
        self.last_checkpoint = name
        if self.rank == 0:
            path = self.folder.checkpoint_path(self.step)
            self.run.checkpoint(name, self.step, path, val)
            self.run.tags({CHECKPOINT_TAG_PREFIX + name: ckpt.checkpoint_tag_value(self.step, metrics, path)})
            self.run.tags({"checkpoint.latest": path} | ({"checkpoint.best": path} if improved else {}))
            self._log_weights(weights, improved)

    def _log_weights(self, weights: dict[str, torch.Tensor], improved: bool) -> None:
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "model.safetensors")
            save_file(weights, str(path), metadata={"step": str(self.step), "backbone_id": self.backbone_id})
            self.run.artifact(path, "weights/last")
            if improved:
                self.run.artifact(path, "weights/best")


def _step(folder: str | Path) -> int:
    return int(read_meta(folder)["step"])


def set_train_mode(module: torch.nn.Module, norm_eval: bool) -> None:
    module.train()
    if norm_eval:
        for layer in module.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.eval()


def _grad_norm(engine: Any) -> float | None:
    norm = engine.get_global_grad_norm()
    if norm is not None:
        return float(norm)
    return None


def _manifest(cfg: ExperimentConfig) -> dict[str, Any]:
    """The shard folder's manifest through its validating reader ({} when it cannot be read: the driver's preflight
    already refused a missing or broken one, so this only happens to a folder changed under a running job)."""
    from pipeline.shards.manifest import read_manifest

    try:
        return read_manifest(cfg.data.shards)
    except (OSError, ValueError) as e:
        log.warning("manifest of %s unreadable (%s): no fingerprint or dataset input logged", cfg.data.shards, e)
        return {}


def _json(tables: dict) -> str:
    import json

    return json.dumps(tables, indent=1, default=float)


def eta(timer: tuple[float, int], step: int, total: int) -> str:
    """`eta M:SS` (or H:MM:SS) for the steps left, at the pace since `timer` = (start time, step at start)."""
    started, first = timer
    done = step - first
    if done <= 0:
        return "eta -"
    left = round((total - step) * (time.perf_counter() - started) / done)
    hours, rest = divmod(left, 3600)
    return f"eta {hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"eta {rest // 60}:{rest % 60:02d}"


def _progress_bar(rank: int, total: int, initial: int) -> Any:
    if rank != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step")
