"""MLflow for `lma3d eval` / `lma3d export`: a child run under the training run when the model came from a
tracked run, else a run of its own tagged with the source. Every call is retried and only warned about: the
results are on disk already, a flaky tracking server must not lose them."""

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
) -> str | None:
    """A child run of `parent_run_id` when it exists at tracking_uri, else a run in `experiment`; None if the
    server keeps failing."""
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
                return client.create_run(parent.info.experiment_id, run_name=run_name, tags=all_tags).info.run_id
        experiment_id = ensure_experiment(client, experiment, local_artifact_location(tracking_uri, workdir))
        return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id

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
    """test/* metrics, params, result files under eval/, renders under viz/; then the run is finished."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    values = [
        Metric(f"test/{k}", float(metrics[k]), now, step)
        for k in (*KEYS, "n")
        if metrics.get(k) is not None and metrics[k] == metrics[k]  # NaN (no positive GT anywhere) not logged
    ]
    items = mlflow_params(params)
    retry("log eval metrics", lambda: client.log_batch(run_id, metrics=values, params=items))
    for path in files:
        retry(f"log_artifact {path.name}", lambda p=path: client.log_artifact(run_id, str(p), "eval"))
    for path in viz_files:
        retry(f"log_artifact {path.name}", lambda p=path: client.log_artifact(run_id, str(p), "viz"))
    retry("end eval run", lambda: client.set_terminated(run_id, "FINISHED"))
