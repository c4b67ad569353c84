"""Ray Tune over `lma3d train`: each trial runs the training job as it is (Ray Train V2's TorchTrainer started
from a Tune function, metrics forwarded by TuneReportCallback), as an MLflow child run of the sweep's run.

    <workdir>/sweeps/<name>/          Tune's experiment folder (restored by running the same command again)
                           runs/      the trials' Ray Train runs (checkpoints), one folder per trial
                           sweep.json what a resumed sweep needs: the MLflow parent run, the space, the base config
                           trials.csv one row per trial            best.json the best trial, for eval and export
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobs.entry import UserError
from jobs.experiment_config import ExperimentConfig
from jobs.sweeping import results
from jobs.sweeping.space import apply_trial, to_tune
from jobs.typed_yaml import build

log = logging.getLogger("lma3d.sweep")
STATE_FILE = "sweep.json"
TRIAL_DRIVER_RESOURCES = {"memory": 1}
"""What a trial's own actor asks for: it only starts the TorchTrainer and waits, so no CPU (Tune refuses an empty
request; one byte of memory is not one): a demo trial's 2 workers x 1 CPU then fit a 2-CPU machine. The workers
ask for their own resources, outside the trial's placement group."""


@dataclass
class SweepSpec:
    name: str
    trials: int
    metric: str = "val/auc"
    mode: str = "max"
    scheduler: str = "fifo"
    grace_period: int = 1
    """ASHA: validation rounds (reports) every trial gets before it can be stopped."""
    max_concurrent: int = 0
    """0: as many as the cluster's CPUs (or GPUs) fit whole trials."""
    seed: int = 0
    """Seeds the sampling of trial values: the same command samples the same trials."""


def sweep_dir(cfg: ExperimentConfig, name: str) -> Path:
    return Path(cfg.workdir, "sweeps", name).resolve()


def trial_runs(cfg: ExperimentConfig, name: str, folder: Path) -> str:
    """Where the trials' run folders (checkpoints) go: under `train.storage_path` when the user set one (a bucket,
    a shared mount), `<storage_path>/sweeps/<name>`; else in the sweep's folder. Tune's own state stays there."""
    if cfg.train.storage_path:
        return f"{cfg.train.storage_path.rstrip('/')}/sweeps/{name}"
    return str(folder / "runs")


def run_trial(values: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Tune trial: the base config with this trial's values, trained by the training job's own launcher."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.training.launcher import launch

    cfg = build(ExperimentConfig, apply_trial(setup["base"], values["overrides"]), "<sweep trial>")
    tags = {**cfg.mlflow.tags, "mlflow.parentRunId": setup["parent_run_id"], "lma3d.sweep": setup["name"]}
    cfg = replace(
        cfg,
        train=replace(cfg.train, storage_path=setup["runs"]),
        mlflow=replace(cfg.mlflow, tracking_uri=setup["tracking_uri"], tags=tags),
    )
    name = f"{setup['name']}-{tune.get_context().get_trial_id()}"
    done = finished_result(cfg, name)
    if done is not None:
        log.info("trial %s finished before the sweep was interrupted: not trained again", name)
        tune.report(done)
        return
    # A restored trial has the same name: with a checkpoint launch() resumes it (same MLflow child run); one
    # interrupted before its first checkpoint starts over, its unfinished child run deleted so each trial keeps one.
    overwrite = _interrupted_before_checkpoint(cfg, name)
    # The sweep closes the child run from Tune's status (results._close_child): a trial the scheduler stops
    # raises in launch() like a failed one, and a FAILED written there could land after the sweep's KILLED.
    launch(cfg, run_name=name, overwrite=overwrite, callbacks=[TuneReportCallback()], close_failed_run=False)


def finished_result(cfg: ExperimentConfig, name: str) -> dict[str, Any] | None:
    """The metrics of trial run `name`'s last checkpoint if its training job finished (its MLflow run closed
    FINISHED, which launch() does only after fit() returned), else None. Tune's experiment state, read back on
    a restore, can lag behind a Ctrl-C: a trial that had finished may come back as unfinished, and training it
    again would resume its Ray Train run, rewrite its snapshot and log its last validation twice."""
    from jobs.run_folder import RunFolder

    exists, checkpoints = RunFolder(cfg.storage_path, name).registered()
    if not exists or not checkpoints:
        return None
    client, run_id = _trial_run(cfg, name)
    if not run_id or client.get_run(run_id).info.status != "FINISHED":
        return None
    metrics = checkpoints[-1].get("metrics")
    # not a mapping (a damaged meta): no report of it; launch() resumes the run at its last step instead
    return dict(metrics) if isinstance(metrics, dict) else None


def _trial_run(cfg: ExperimentConfig, name: str) -> tuple[Any, str | None]:
    """(MLflow client, the id of trial run `name`'s child run or None), found by its run key."""
    from mlflow.tracking import MlflowClient

    from jobs import tracking
    from jobs.run_folder import RunFolder

    client = MlflowClient(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    key = RunFolder(cfg.storage_path, name).path
    return client, (tracking.find_run(client, experiment.experiment_id, key) if experiment else None)


def _interrupted_before_checkpoint(cfg: ExperimentConfig, name: str) -> bool:
    from jobs.run_folder import RunFolder

    exists, checkpoints = RunFolder(cfg.storage_path, name).registered()
    if not exists or checkpoints:
        return False
    client, stale = _trial_run(cfg, name)
    if stale:
        client.delete_run(stale)
    return True


def trials_at_once(cfg: ExperimentConfig, cluster: dict[str, float]) -> int:
    """Whole trials the cluster fits at once: each needs num_workers x (cpus_per_worker [+ 1 GPU])."""
    train = cfg.train
    fits = cluster.get("CPU", 1.0) // (train.num_workers * train.cpus_per_worker)
    if train.use_gpu:
        fits = min(fits, cluster.get("GPU", 0.0) // train.num_workers)
    return max(1, int(fits))


def sweep(
    cfg: ExperimentConfig, spec: SweepSpec, space: dict[str, tuple[str, list[Any]]], base: dict[str, Any]
) -> results.SweepSummary:
    """Run (or resume) the sweep. `base`: the mapping each trial sets its values on (jobs/sweeping/inputs.py)."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    folder = sweep_dir(cfg, spec.name)
    setup = _setup(cfg, spec, space, folder, base)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), TRIAL_DRIVER_RESOURCES)
    if tune.Tuner.can_restore(str(folder)):
        log.info("resuming sweep %s from %s (finished trials are kept)", spec.name, folder)
        tuner = tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=True)
    else:
        concurrent = spec.max_concurrent or trials_at_once(cfg, ray.cluster_resources())
        tuner = tune.Tuner(
            trainable,
            param_space={"overrides": to_tune(space)},
            tune_config=tune.TuneConfig(
                # The generator's own limit: Tune's max_concurrent_trials is not applied to a search_alg given
                # here, and a trial beyond the cluster's CPUs fails (Train's worker-group start times out).
                search_alg=BasicVariantGenerator(random_state=spec.seed, max_concurrent=concurrent),
                metric=spec.metric,
                mode=spec.mode,
                num_samples=spec.trials,
                scheduler=_scheduler(spec),
            ),
            run_config=tune.RunConfig(name=spec.name, storage_path=str(folder.parent)),
        )
    grid = tuner.fit()
    return results.summarise(grid, spec, setup, folder)


def _scheduler(spec: SweepSpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler == "asha":
        # Rounds are reports (one per checkpoint): with train.checkpoint_every 0, one per validated epoch.
        return ASHAScheduler(time_attr="training_iteration", grace_period=spec.grace_period, max_t=10**6)
    return FIFOScheduler()


def _setup(cfg: ExperimentConfig, spec: SweepSpec, space: dict, folder: Path, base: dict[str, Any]) -> dict[str, Any]:
    """The constants every trial needs; a re-run of the same sweep reuses the first run's (its MLflow parent)."""
    state_path = folder / STATE_FILE
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except ValueError as e:
            raise UserError(f"{state_path}: not valid JSON ({e}); delete the sweep folder to start over") from None
        if state.get("space") != {k: [kind, args] for k, (kind, args) in space.items()}:
            raise UserError(f"sweep {spec.name} exists with another search space ({state_path}); choose another --name")
        return state
    folder.mkdir(parents=True, exist_ok=True)
    parent = results.start_parent_run(cfg, spec, space)
    state = {
        "name": spec.name,
        "base": base,
        "space": {k: [kind, args] for k, (kind, args) in space.items()},
        "runs": trial_runs(cfg, spec.name, folder),
        "tracking_uri": cfg.tracking_uri,
        "parent_run_id": parent,
        "metric": spec.metric,
        "mode": spec.mode,
    }
    state_path.write_text(json.dumps(state, indent=2) + "\n")
    return state


def better(a: float, b: float, mode: str) -> bool:
    """a beats b (NaN never beats anything)."""
    if math.isnan(a):
        return False
    return math.isnan(b) or (a > b if mode == "max" else a < b)
