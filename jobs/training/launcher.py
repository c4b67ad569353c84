"""The driver side of `lma3d train`: run name, resume/overwrite decision, MLflow run, TorchTrainer.fit() (or the
loop in this process with --no-ray).

Ray Train 2.60 ("Train V2") resumes by reusing `RunConfig(storage_path, name)`: the controller reloads
its checkpoint snapshot and `ray.train.get_checkpoint()` hands the workers the latest *reported*
checkpoint. So the run directory `<storage_path>/<name>` is the resume key, and this module decides,
before Ray starts, whether that directory is resumed, overwritten or refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobs import preflight, tracking
from jobs.checkpoint_meta import META_FILE, SCORE_KEY, validated_score
from jobs.cluster_storage import check_train_outputs, on_cluster
from jobs.config_paths import absolute_tracking_uri, absolute_value
from jobs.entry import UserError, causes, stage
from jobs.experiment_config import ExperimentConfig
from jobs.run_folder import RunFolder
from jobs.training.pretrained_check import check_resnet_weights
from jobs.training.run_spec import RunSpec
from jobs.training.trainer import train_with_ray
from jobs.typed_yaml import dump, flatten, to_dict
from pipeline.writer_lock import OutputBusy, exclusive

log = logging.getLogger("lma3d.train")


def default_run_name(cfg: ExperimentConfig, today: dt.date) -> str:
    """`<date>-<view>-<setting>-lr<lr>-bs<bs>`, bs = images per optimizer step over all workers."""
    batch = cfg.data.batch_size * cfg.train.grad_accum * cfg.train.num_workers
    return f"{today.isoformat()}-{cfg.data.view}-{cfg.data.setting}-lr{cfg.train.lr:g}-bs{batch}"


def decide_start(run_dir: str, exists: bool, has_checkpoints: bool, resume: str | None, overwrite: bool) -> str:
    """One of `fresh`, `resume`, `overwrite`, `from_path`; a UserError for every ambiguous combination."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if overwrite:
        return "overwrite" if exists else "fresh"
    if resume == "latest":
        if not has_checkpoints:
            raise UserError(f"--resume latest: no checkpoint under {run_dir} (nothing to resume)")
        return "resume"
    if resume:
        if exists:
            raise UserError(
                f"run {run_dir} already exists; --resume PATH starts a new run from PATH: choose another "
                "--run-name, or continue this run with --resume latest"
            )
        return "from_path"
    if has_checkpoints:
        return "resume"
    if exists:
        raise UserError(
            f"run {run_dir} exists but has no checkpoint; "
            "pass --overwrite to start it over or choose another --run-name"
        )
    return "fresh"


def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Ray Train workers run in their own working directory: make every local path absolute (jobs/config_paths)."""

    def fix(key: str) -> str:
        section, _, name = key.rpartition(".")
        return absolute_value(key, getattr(getattr(cfg, section) if section else cfg, name))

    return replace(
        cfg,
        workdir=fix("workdir"),
        data=replace(cfg.data, shards=fix("data.shards")),
        model=replace(cfg.model, backbone=fix("model.backbone"), backbone_path=fix("model.backbone_path"),
                      resnet_weights=fix("model.resnet_weights")),  # fmt: skip
        train=replace(cfg.train, storage_path=cfg.storage_path),
        mlflow=replace(cfg.mlflow, tracking_uri=absolute_tracking_uri(cfg.tracking_uri)),
    )


@dataclass
class TrainSummary:
    run_name: str
    run_dir: str
    tracking_uri: str
    experiment: str
    run_id: str
    mode: str
    last_step: int = 0
    last_metrics: dict[str, Any] = field(default_factory=dict)
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: str = ""
    latest_checkpoint: str = ""

    def report(self) -> str:
        backend = self.tracking_uri
        ui = f"mlflow ui --backend-store-uri {backend}" if not backend.startswith("http") else f"open {backend}"
        best = ", ".join(f"{k}={v:.4f}" for k, v in sorted(self.best_metrics.items()) if k.startswith("val/"))
        return "\n".join([
            f"run:        {self.run_name} ({self.mode}, {self.last_step} optimizer steps)",
            f"storage:    {self.run_dir}",
            f"latest:     {self.latest_checkpoint or '-'}",
            f"best:       {self.best_checkpoint or '-'} {best}",
            f"mlflow:     experiment {self.experiment!r}, run {self.run_id}",
            f"browse:     {ui}",
            *([f"run page:   {page}"] if (page := tracking.run_page(self.tracking_uri, self.run_id)) else []),
        ])  # fmt: skip


def _mlflow_run(
    cfg: ExperimentConfig, name: str, run_dir: str, mode: str, metas: list[dict], resume: str | None
) -> str:
    """Create the job's MLflow run, or find the one a resumed job started (checkpoint meta, then the run-key tag)."""
    from mlflow.tracking import MlflowClient

    uri = cfg.tracking_uri
    client = MlflowClient(uri)
    try:
        experiment_id = tracking.ensure_experiment(
            client, cfg.experiment_name, tracking.local_artifact_location(uri, cfg.workdir)
        )
        if mode == "resume":
            for run_id in [m.get("mlflow_run_id") for m in reversed(metas)]:
                if run_id and tracking.run_exists(client, run_id):
                    return run_id
            found = tracking.find_run(client, experiment_id, run_dir)
            if found:
                return found
            log.warning("no MLflow run found for %s in %s: starting a new one", run_dir, uri)
        tags = {
            tracking.RUN_KEY_TAG: run_dir,
            "mlflow.note.content": "lma3d train " + shlex.join(sys.argv[1:]),
            "mlflow.source.name": "lma3d train",
            "view": cfg.data.view,
            "setting": cfg.data.setting,
            "dataset": cfg.dataset,
            "zero_stage": str(cfg.train.zero_stage),
            "precision": cfg.train.precision,
            "backbone": cfg.model.backbone_path or cfg.model.backbone,
            "num_workers": str(cfg.train.num_workers),
            **{k: str(v) for k, v in cfg.mlflow.tags.items()},
        }
        commit = tracking.git_commit(Path(__file__).resolve().parent)
        if commit:
            tags["mlflow.source.git.commit"] = commit
        if tracking.ray_submission_id():
            tags["ray.submission_id"] = tracking.ray_submission_id()
        if mode == "from_path":
            tags["lma3d.resumed_from"] = resume or ""
        return tracking.create_run(client, experiment_id, name, tags, flatten(to_dict(cfg)), dump(cfg))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to reach the store before training is the user's to fix
        raise UserError(f"MLflow store {uri}: {type(e).__name__}: {e}") from None


def launch(
    cfg: ExperimentConfig,
    *,
    address: str | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    run_name: str | None = None,
    no_ray: bool = False,
    step_callbacks: list[Any] = (),
    callbacks: list[Any] = (),
    close_failed_run: bool = True,
) -> TrainSummary:
    """Decide the run, attach MLflow, run TorchTrainer.fit() (or, with `no_ray`, the same loop in this process as
    one rank: jobs/training/local.py) and summarise the result. `step_callbacks` are called by the loop after each
    step (jobs/training/callbacks.py); `callbacks` are Ray Train UserCallbacks (a sweep's TuneReportCallback).
    `close_failed_run=False` leaves the MLflow run open when fit() raises: a sweep closes its trials' runs itself,
    from Tune's status (a trial its scheduler stopped raises here too, and is KILLED, not FAILED)."""
    if no_ray:
        cfg = _one_rank(cfg, address, callbacks)
    check_train_outputs(cfg, address)
    cfg = absolute_paths(cfg)
    name = run_name or cfg.train.run_name or default_run_name(cfg, dt.date.today())
    if "/" in name or name in (".", ".."):
        raise UserError(f"run name {name!r} must not contain '/'")
    cfg = replace(cfg, train=replace(cfg.train, run_name=name))
    folder = RunFolder(cfg.storage_path, name)
    run_dir = folder.path
    # Everything the job reads, checked before anything is created (the run's lock, MLflow run, Ray, DeepSpeed):
    # one line, exit 2.
    check_inputs(cfg)
    tracking.check_tracking_uri(cfg.tracking_uri)  # creates a local store's folder: after every refusal above
    # Held from the resume decision to the end of training: two jobs on one run would both decide to start (or
    # resume) it and write checkpoints of two MLflow runs into one folder. Object storage has no flock: Ray
    # Train's own storage layout is the only guard there.
    lock = contextlib.nullcontext() if "://" in run_dir else exclusive(run_dir, "training run")
    try:
        with lock:
            summary, resume_from = _decide(cfg, folder, resume, overwrite)
            spec = RunSpec(cfg, folder, summary.run_id, resume_from, tuple(step_callbacks))
            try:
                if no_ray:
                    from jobs.training import local

                    with stage("training in this process (--no-ray)"):
                        result = local.train_in_process(spec)
                else:
                    result = _fit_on_ray(spec, address, list(callbacks))
            except BaseException as e:
                _failed(cfg, summary.run_id, e, close_failed_run)
                raise
            _summarise(summary, result)
            _terminate(cfg.tracking_uri, summary.run_id, "FINISHED")
            return summary
    except OutputBusy as e:
        raise UserError(str(e)) from None


def check_inputs(cfg: ExperimentConfig) -> None:
    """What a training run reads (shards, model files, the ImageNet weights, step callbacks) and where it writes,
    checked before anything starts: by `launch`, and by a sweep's driver for its trials. `cfg`'s paths absolute."""
    check_resnet_weights(cfg.model)
    preflight.train_inputs(cfg)
    _check_step_callbacks(cfg)


def _decide(
    cfg: ExperimentConfig, folder: RunFolder, resume: str | None, overwrite: bool
) -> tuple[TrainSummary, str | None]:
    """The run decided (new, resume, from a path, overwrite) and its MLflow run attached: (the summary to fill,
    the checkpoint to resume from)."""
    name, run_dir = folder.name, folder.path
    try:
        exists, metas = folder.registered()
    except ValueError as e:  # a registered checkpoint's meta that its validated reader refuses
        raise UserError(str(e)) from None
    mode = decide_start(run_dir, exists, bool(metas), resume, overwrite)
    resume_from = None
    if mode == "from_path":
        resume_from = str(Path(resume).resolve()) if "://" not in resume else resume
        if "://" not in resume_from and not Path(resume_from, META_FILE).exists():
            raise UserError(f"--resume {resume}: not an lma3d checkpoint (no {META_FILE} in it)")
        screen_checkpoint(resume_from)
    if mode == "resume":
        screen_checkpoint(metas[-1]["path"])
        log.info("resuming run %s from its latest checkpoint (step %d)", name, metas[-1]["step"])
    run_id = _mlflow_run(cfg, name, run_dir, mode, metas, resume_from)
    if mode == "resume" and "://" not in cfg.storage_path:
        # The loop takes the newer of this and its session's own: Ray's snapshot knows nothing of what a --no-ray
        # job registered, and the other way round (remote storage has Ray's alone: --no-ray writes local folders).
        resume_from = metas[-1]["path"]
    if mode == "overwrite":
        log.warning("starting run %s over: deleting %s", name, run_dir)
        folder.delete()
    return TrainSummary(name, run_dir, cfg.tracking_uri, cfg.experiment_name, run_id, mode), resume_from


def _failed(cfg: ExperimentConfig, run_id: str, error: BaseException, close_failed_run: bool) -> None:
    """Training raised `error`: the MLflow run closed FAILED (unless a sweep closes it), and a checkpoint a
    worker's screening refused (remote storage, or a file changed since ours) raised as the one-line UserError."""
    if close_failed_run:
        _terminate(cfg.tracking_uri, run_id, "FAILED")
    refused = _refused_checkpoint(error)
    if refused is not None:
        raise UserError(str(refused)) from None


def _fit_on_ray(spec: RunSpec, address: str | None, callbacks: list[Any]) -> Any:
    from jobs.runtime_env import runtime_env
    from pipeline.ray_session import ensure_ray

    ensure_ray(address, runtime_env() if address else None)
    _check_gpus(spec.cfg, address)
    with stage("Ray Train (TorchTrainer.fit)"):
        return train_with_ray(spec, callbacks)


def _one_rank(cfg: ExperimentConfig, address: str | None, callbacks: list[Any]) -> ExperimentConfig:
    """The config of a --no-ray run: one worker, local storage; what only Ray could do is refused."""
    if address or callbacks:
        raise UserError("--no-ray trains in this process: --address (and Ray Train callbacks) need Ray")
    if "://" in cfg.storage_path:
        raise UserError(f"--no-ray writes checkpoints to a local folder; train.storage_path is {cfg.storage_path}")
    if cfg.train.num_workers != 1:
        log.info("--no-ray: one rank (train.num_workers %d -> 1)", cfg.train.num_workers)
    return replace(cfg, train=replace(cfg.train, num_workers=1))


def _check_step_callbacks(cfg: ExperimentConfig) -> None:
    """train.step_callbacks import here, in seconds, rather than in every worker after the model is built."""
    from jobs.training.callbacks import resolve

    for name in cfg.train.step_callbacks:
        try:
            resolve(name)
        except ValueError as e:
            raise UserError(str(e)) from None


def screen_checkpoint(folder: str) -> None:
    """Driver, before MLflow or Ray start: the checkpoint the workers will load runs nothing when they load it
    (jobs.training.checkpoint.screen). Remote folders are screened by the workers, with the same code."""
    from jobs.consolidate import UnsafeCheckpoint
    from jobs.training.checkpoint import screen

    if "://" in folder:
        return
    try:
        screen(folder)
    except (UnsafeCheckpoint, ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None


def _refused_checkpoint(error: BaseException) -> BaseException | None:
    """The UnsafeCheckpoint a worker raised, found inside Ray Train's wrappers (None if there is none)."""
    from jobs.consolidate import UnsafeCheckpoint

    return next((e for e in causes(error) if isinstance(e, UnsafeCheckpoint)), None)


def _check_gpus(cfg: ExperimentConfig, address: str | None, poll_s: float = 5.0) -> None:
    """Locally, too few GPUs is an error at once. On a cluster, ask the autoscaler for one GPU bundle per worker
    and wait up to train.gpu_wait_s for the GPUs to join; then fail with one line (Ray Train itself would retry
    the worker group start forever)."""
    import time

    import ray
    from ray.autoscaler.sdk import request_resources

    train = cfg.train
    if not train.use_gpu:
        return
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus >= train.num_workers:
        return
    if not on_cluster(address):
        raise UserError(
            f"train.use_gpu is true but this machine's Ray has {gpus:g} GPU(s) for {train.num_workers} "
            "worker(s); set train.use_gpu=false to train on CPU"
        )
    log.info("waiting up to %.0f s for %d GPUs (cluster has %g)", train.gpu_wait_s, train.num_workers, gpus)
    request_resources(bundles=[{"GPU": 1, "CPU": train.cpus_per_worker}] * train.num_workers)
    deadline = time.monotonic() + train.gpu_wait_s
    try:
        while gpus < train.num_workers and time.monotonic() < deadline:
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            gpus = ray.cluster_resources().get("GPU", 0)
    finally:
        request_resources(bundles=[])  # withdraw the standing request; the trainer's own demand replaces it
    if gpus < train.num_workers:
        raise UserError(
            f"the cluster has {gpus:g} GPU(s) for train.num_workers={train.num_workers} after waiting "
            f"train.gpu_wait_s={train.gpu_wait_s:g} s; add GPU nodes (maxReplicas), lower train.num_workers "
            "or raise train.gpu_wait_s"
        )


def _summarise(summary: TrainSummary, result: Any) -> None:
    from jobs.checkpoint_models import reconcile_after_fit
    from jobs.run_folder import location
    from jobs.training.checkpoint import reconcile_checkpoint_tags

    summary.last_metrics = dict(result.metrics or {})
    summary.last_step = int(summary.last_metrics.get("step", 0))
    if result.checkpoint is not None:
        summary.latest_checkpoint = location(summary.run_dir, result.checkpoint.path)
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if validated_score(m.get(SCORE_KEY)) is not None]
    if scored:
        best, metrics = max(scored, key=lambda cm: cm[1][SCORE_KEY])
        summary.best_checkpoint, summary.best_metrics = location(summary.run_dir, best.path), dict(metrics)
    reconcile_checkpoint_tags(summary.tracking_uri, summary.run_id, result.best_checkpoints or [], summary.run_dir)
    reconcile_after_fit(summary.tracking_uri, summary.run_id, summary.run_dir, result.best_checkpoints or [])


def _terminate(tracking_uri: str, run_id: str, status: str) -> None:
    """Close the run as `status`, unless another owner closed it first (read, then written: not atomic, so a
    sweep's trials do not come here on failure at all: launch(close_failed_run=False), results._close_child)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    current = tracking.retry("get_run", lambda: client.get_run(run_id).info.status)
    if current in (None, "RUNNING", "SCHEDULED"):  # None: the tracking server did not answer; try anyway
        tracking.retry(f"set_terminated {status}", lambda: client.set_terminated(run_id, status))
