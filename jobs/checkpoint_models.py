"""Kept checkpoints as MLflow LoggedModels of their training run (MLflow 3's answer to "which checkpoint was best").

One LoggedModel per checkpoint folder, with the training run as its source run, the step as a param, the
validation metrics measured at that step linked to it (`model_id`), and the folder's location as an external
reference (a tag): the DeepSpeed shards stay where Ray Train or `--no-ray` put them, nothing is copied into the
artifact store. `lma3d export --register` later logs the exported pyfunc into the same LoggedModel, so the
registered version points back to this run and these metrics.

Every function is idempotent (a checkpoint is found again by its run and folder name), because the outbox may
send one twice after an outage and a resumed job reconciles what an earlier job created. Only MlflowClient calls:
the caller chooses the tracking URI and the retry policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("lma3d.train.mlflow")

MODEL_TYPE = "lma3d-checkpoint"
NAME_TAG = "lma3d.checkpoint"
"""The checkpoint's folder name (`checkpoint_step000000120`): how a checkpoint's LoggedModel is found again."""
PATH_TAG = "lma3d.checkpoint.path"
"""Where the checkpoint lives (a local path or a storage URI): the external reference to its DeepSpeed files."""
STEP_TAG = "lma3d.step"
EXTERNAL_TAG = "mlflow.model.isExternal"  # MLflow's own marker: artifacts live outside MLflow
REGISTERED_TAG = "mlflow.modelVersions"  # set by MLflow on a LoggedModel that has registered versions
DROPPED_TAG = "lma3d.checkpoint.dropped"
"""On a registered checkpoint's LoggedModel whose folder the run no longer keeps (the others are deleted)."""


def linked_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The validation metrics of a checkpoint's reported metrics (`val/auc` -1 marks a checkpoint without one)."""
    from jobs.checkpoint_meta import SCORE_KEY, validated_score

    out = {}
    for key, value in metrics.items():
        if key.startswith("val/") and isinstance(value, (int, float)) and not isinstance(value, bool):
            if key == SCORE_KEY and validated_score(value) is None:
                continue
            out[key] = float(value)
    return out


def run_models(client: Any, run_id: str, experiment_id: str | None = None) -> list[Any]:
    """The live (not deleted) checkpoint LoggedModels of the run."""
    if experiment_id is None:
        experiment_id = client.get_run(run_id).info.experiment_id
    found, token = [], None
    while True:
        page = client.search_logged_models(
            [experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=100, page_token=token
        )
        found += [m for m in page if m.tags.get(NAME_TAG) and m.model_type == MODEL_TYPE]
        token = page.token
        if not token:
            return found


def find(
    client: Any, run_id: str, *, name: str | None = None, step: int | None = None, experiment_id: str | None = None
) -> Any | None:
    """The run's checkpoint LoggedModel of folder `name` (or of `step`); the newest when there are several."""
    matches = [
        m for m in run_models(client, run_id, experiment_id)
        if (name is None or m.tags.get(NAME_TAG) == name) and (step is None or m.tags.get(STEP_TAG) == str(step))
    ]  # fmt: skip
    return max(matches, key=lambda m: m.creation_timestamp) if matches else None


def record(
    client: Any,
    run_id: str,
    name: str,
    step: int,
    path: str,
    metrics: dict[str, float],
    timestamp_ms: int | None = None,
) -> str:
    """The checkpoint `name` of run `run_id` as a READY LoggedModel (created, or found when it exists), with
    `metrics` logged at `step` on the run and linked to the model; returns its model id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    run = client.get_run(run_id)
    model = find(client, run_id, name=name, experiment_id=run.info.experiment_id)
    if model is None:
        model = client.create_logged_model(
            run.info.experiment_id,
            name=name,
            source_run_id=run_id,
            tags={NAME_TAG: name, PATH_TAG: path, STEP_TAG: str(step), EXTERNAL_TAG: "true"},
            params={"step": str(step), "checkpoint": path},
            model_type=MODEL_TYPE,
        )
        _external_spec(client, model)
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])  # the run page lists it
    elif model.tags.get(PATH_TAG) != path:
        client.set_logged_model_tags(model.model_id, {PATH_TAG: path})
    linked = _linkable(client, run, step, model.model_id, metrics, timestamp_ms or int(time.time() * 1000))
    if linked:
        client.log_batch(run_id, metrics=linked)
    if model.status != LoggedModelStatus.READY:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id


def _linkable(client: Any, run: Any, step: int, model_id: str, metrics: dict[str, float], now: int) -> list[Any]:
    """The metric points to log linked to `model_id`: the run's own val/* points at `step` again (same key, value,
    time and step: MLflow's store keeps one row on the run and links it to the model), then the new ones."""
    from mlflow.entities import Metric

    points = {}
    for key in sorted(k for k in run.data.metrics if k.startswith("val/")):
        for m in client.get_metric_history(run.info.run_id, key):
            if m.step == step:
                points[key] = Metric(key, m.value, m.timestamp, step, model_id=model_id)
    for key, value in metrics.items():
        points.setdefault(key, Metric(key, float(value), now, step, model_id=model_id))
    return list(points.values())


def _external_spec(client: Any, model: Any) -> None:
    """An MLmodel file marking the model external, as mlflow.create_external_model writes: without it the UI
    cannot register the LoggedModel. Best effort: the checkpoint is tracked either way."""
    try:
        import tempfile
        from pathlib import Path

        from mlflow.models.utils import get_external_mlflow_model_spec

        with tempfile.TemporaryDirectory() as tmp:
            get_external_mlflow_model_spec(model).save(str(Path(tmp, "MLmodel")))
            client.log_model_artifacts(model.model_id, tmp)
    except Exception as e:  # noqa: BLE001 - an artifact store that refuses it must not lose the record
        log.warning("checkpoint %s: no MLmodel file for its LoggedModel (%s)", model.name, e)


def reconcile(client: Any, run_id: str, kept: Iterable[tuple[str, int, str, dict[str, Any]]]) -> list[str]:
    """Driver, after training: the run's checkpoint LoggedModels are exactly `kept` (name, step, path, metrics):
    the ones whose folder Ray Train (num_to_keep) or --no-ray dropped are deleted (tagged DROPPED_TAG instead when
    a registered version uses them), a kept one whose creation never reached MLflow is created. Returns the model
    ids of the kept checkpoints, in `kept`'s order."""
    kept = list(kept)
    names = {name for name, *_ in kept}
    existing: dict[str, str] = {}
    for model in sorted(run_models(client, run_id), key=lambda m: m.creation_timestamp):
        name = model.tags.get(NAME_TAG)
        if name not in names or name in existing:  # dropped, or a duplicate of one already found
            if model.tags.get(REGISTERED_TAG):
                # A registered version reads its files from this LoggedModel (`models:/name@alias`): deleting it
                # would break that, so it stays, marked as a checkpoint the run no longer has.
                client.set_logged_model_tags(model.model_id, {DROPPED_TAG: "true"})
            else:
                client.delete_logged_model(model.model_id)
        else:
            existing[name] = model.model_id
    ids = []
    for name, step, path, metrics in kept:
        if name in existing:
            ids.append(existing[name])
        else:
            log.info("checkpoint %s had no LoggedModel in MLflow: creating it", name)
            ids.append(record(client, run_id, name, step, path, linked_metrics(metrics)))
    return ids


def reconcile_after_fit(tracking_uri: str, run_id: str, run_dir: str, kept: list[tuple[Any, dict[str, Any]]]) -> None:
    """Driver, after fit(): `reconcile` for the (checkpoint, metrics) pairs Ray Train's Result (or --no-ray's)
    lists as kept, retried and only warned about (training is over and its checkpoints are on disk)."""
    from pathlib import PurePosixPath

    from mlflow.tracking import MlflowClient

    from jobs.tracking import retry

    entries = []
    for checkpoint, metrics in kept:
        name = PurePosixPath(checkpoint.path).name
        # The location the workers recorded (storage_path/run/name, scheme kept), not Ray's scheme-less path.
        entries.append((name, int(metrics.get("step", -1)), f"{run_dir.rstrip('/')}/{name}", metrics))
    retry("checkpoint models", lambda: reconcile(MlflowClient(tracking_uri), run_id, entries))
