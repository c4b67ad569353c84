"""MLflow for `lma3d eval` / `lma3d export`: a child run under the training run when the model came from a
tracked run, else a run of its own tagged with the source. An eval run spans the evaluation (its start is taken
before inference, its end after the results are logged), and its per-object / per-affordance results are an
MLflow table beside per_class.csv. Every call is retried and only warned about: the results are on disk already,
a flaky tracking server must not lose them."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from jobs.training.tracking import ensure_experiment, git_commit, local_artifact_location, mlflow_params, retry
from model.metrics import KEYS

log = logging.getLogger("lma3d.eval.mlflow")
SOURCE_TAG = "lma3d.source"
KIND_TAG = "lma3d.kind"
TABLE_FILE = "eval/per_class.json"


def choose_tracking_uri(configured: str, explicit: bool, recorded: str | None) -> str:
    """The user's explicit URI (config or $MLFLOW_TRACKING_URI) wins, then the one the checkpoint recorded,
    then the default (sqlite under the workdir)."""
    if explicit or not recorded:
        return configured
    return recorded


def explicit_tracking(cfg_uri: str) -> bool:
    return bool(cfg_uri or os.environ.get("MLFLOW_TRACKING_URI"))


def start_run(
    tracking_uri: str,
    *,
    parent_run_id: str | None,
    experiment: str,
    workdir: str,
    run_name: str,
    tags: dict[str, str],
    start_time_ms: int | None = None,
) -> str | None:
    """A child run of `parent_run_id` when it exists at tracking_uri, else a run in `experiment`; None if the
    server keeps failing. `start_time_ms` (epoch ms) backdates its start to when the work began: the run is
    created once there are results to log, so a failed evaluation leaves no run behind."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def create() -> str:
        client = MlflowClient(tracking_uri)
        all_tags = {"mlflow.source.git.commit": git_commit() or "", **tags}
        if parent_run_id:
            try:
                parent = client.get_run(parent_run_id)
            except MlflowException:
                log.warning("training run %s not found at %s: logging to a run of its own", parent_run_id, tracking_uri)
            else:
                all_tags |= {"mlflow.parentRunId": parent_run_id}
                return client.create_run(parent.info.experiment_id, start_time_ms, all_tags, run_name).info.run_id
        experiment_id = ensure_experiment(client, experiment, local_artifact_location(tracking_uri, workdir))
        return client.create_run(experiment_id, start_time_ms, all_tags, run_name).info.run_id

    return retry("create eval run", create)


def log_inputs(tracking_uri: str, run_id: str, shards: str, manifest: dict) -> None:
    """The test split the run evaluated, as its `evaluation` dataset input."""
    from mlflow.tracking import MlflowClient

    from jobs.dataset_inputs import log_shard_inputs

    client = MlflowClient(tracking_uri)
    retry("log eval inputs", lambda: log_shard_inputs(client, run_id, shards, manifest, ["evaluation"]))


def log_results(
    tracking_uri: str,
    run_id: str,
    metrics: dict,
    step: int,
    params: dict[str, Any],
    files: list[Path],
    viz_files: list[Path],
) -> None:
    """test/* metrics, params, the per-object / per-affordance table (eval/per_class.json), result files under
    eval/, renders under viz/; then the run is finished."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from jobs.evaluation.outputs import per_class_rows

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    values = [
        Metric(f"test/{k}", float(metrics[k]), now, step)
        for k in (*KEYS, "n")
        if metrics.get(k) is not None and metrics[k] == metrics[k]  # NaN (no positive GT anywhere) not logged
    ]
    items = mlflow_params(params)
    retry("log eval metrics", lambda: client.log_batch(run_id, metrics=values, params=items))
    rows = per_class_rows(metrics)
    if rows:  # the UI's artifact view shows a table logged so as a sortable table; columns as per_class.csv's
        table = {column: [row[column] for row in rows] for column in rows[0]}
        retry("log per-class table", lambda: client.log_table(run_id, table, TABLE_FILE))
    for path in files:
        retry(f"log_artifact {path.name}", lambda p=path: client.log_artifact(run_id, str(p), "eval"))
    for path in viz_files:
        retry(f"log_artifact {path.name}", lambda p=path: client.log_artifact(run_id, str(p), "viz"))
    retry("end eval run", lambda: client.set_terminated(run_id, "FINISHED", int(time.time() * 1000)))
