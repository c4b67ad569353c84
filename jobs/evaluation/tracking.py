"""MLflow for `lma3d eval`: what the eval run holds (its run is made by jobs.tracking.start_run, a child of the
training run when the model came from one). The per-object / per-affordance results are an MLflow table beside
per_class.csv. Every call is retried and only warned about: the results are on disk already, a flaky tracking
server must not lose them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.tracking import mlflow_params, retry
from model.metrics import KEYS

TABLE_FILE = "eval/per_class.json"


def log_inputs(tracking_uri: str, run_id: str, shards: str, manifest: dict) -> None:
    """The test split the run evaluated, as its `evaluation` dataset input."""
    from mlflow.tracking import MlflowClient

    from jobs.dataset_inputs import log_shard_inputs

    client = MlflowClient(tracking_uri)
    retry("log eval inputs", lambda: log_shard_inputs(client, run_id, shards, manifest, ["evaluation"]))


def _metrics(metrics: dict, prefix: str, now: int, step: int) -> list:
    from mlflow.entities import Metric

    return [
        Metric(f"{prefix}/{k}", float(metrics[k]), now, step)
        for k in (*KEYS, "n")
        if metrics.get(k) is not None and metrics[k] == metrics[k]  # NaN (no positive GT anywhere) not logged
    ]


def log_on_training_run(tracking_uri: str, training_run_id: str, metrics: dict, step: int, prefix: str) -> None:
    """The overall results on the training run that made the checkpoint too, at its step (`prefix`/auc…): an eval
    run holds one point per metric, so evaluations of several checkpoints draw their curve here, beside val/*.
    Skipped when that run is not in this tracking store."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        client.get_run(training_run_id)
    except MlflowException:
        return
    values = _metrics(metrics, prefix, int(time.time() * 1000), step)
    retry("log eval metrics on the training run", lambda: client.log_batch(training_run_id, metrics=values))


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
    from mlflow.tracking import MlflowClient

    from jobs.evaluation.outputs import per_class_rows

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    values = _metrics(metrics, "test", now, step)
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
