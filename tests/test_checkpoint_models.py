"""Kept checkpoints as MLflow LoggedModels of their training run (jobs/checkpoint_models.py), on a real
sqlite MLflow store: their step, their validation metrics linked by model_id, their location as a tag; the ones
the run no longer keeps deleted; the run's own metric curves unchanged by the linking."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from jobs import checkpoint_models as cm
from jobs.tracking import tracking_uri_for_now
from jobs.training.tracking import RunLogger


def _run(uri: str) -> tuple[MlflowClient, str, str]:
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("ckpt")
    return client, experiment_id, client.create_run(experiment_id).info.run_id


def _listed(client: MlflowClient, experiment_id: str, run_id: str) -> dict[str, tuple[str, dict[str, float]]]:
    """name -> (step param, metrics linked to it) of the run's live LoggedModels, as the Models tab lists them."""
    models = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    return {m.name: (m.params["step"], {x.key: x.value for x in m.metrics or []}) for m in models}


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_checkpoints_become_logged_models_and_dropped_ones_are_deleted(tmp_path):
    client, experiment_id, run_id = _run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for step, auc in ((2, 0.5), (4, 0.7), (6, 0.6)):
        metrics = {"val/auc": auc, "val/mae": round(1 - auc, 3)}
        cm.record(client, run_id, cm_name(step), step, f"/runs/r/{cm_name(step)}", metrics)
    cm.record(client, run_id, cm_name(6), 6, f"/runs/r/{cm_name(6)}", {})  # sent twice (after an outage): one model
    assert _listed(client, experiment_id, run_id) == {
        cm_name(2): ("2", {"val/auc": 0.5, "val/mae": 0.5}),
        cm_name(4): ("4", {"val/auc": 0.7, "val/mae": 0.3}),
        cm_name(6): ("6", {"val/auc": 0.6, "val/mae": 0.4}),
    }
    model = cm.find(client, run_id, step=4)
    assert model.tags[cm.PATH_TAG] == f"/runs/r/{cm_name(4)}" and model.source_run_id == run_id
    assert {o.model_id for o in client.get_run(run_id).outputs.model_outputs} >= {model.model_id}

    # Ray kept the best two by val/auc; a kept one whose record never reached MLflow (step 8) is created
    kept = [(cm_name(4), 4, "/runs/r/4", {"val/auc": 0.7}), (cm_name(6), 6, "/runs/r/6", {"val/auc": 0.6}),
            (cm_name(8), 8, "/runs/r/8", {"step": 8, "val/auc": 0.9, "train/loss": 0.1})]  # fmt: skip
    ids = cm.reconcile(client, run_id, kept)
    listed = _listed(client, experiment_id, run_id)
    assert set(listed) == {cm_name(4), cm_name(6), cm_name(8)}
    assert listed[cm_name(8)] == ("8", {"val/auc": 0.9})  # its validation only, not the training loss
    assert ids[0] == model.model_id
    # The linking put no second point on the run's curves.
    assert _history(client, run_id, "val/auc") == [(2, 0.5), (4, 0.7), (6, 0.6), (8, 0.9)]
    assert _history(client, run_id, "val/mae") == [(2, 0.5), (4, 0.3), (6, 0.4)]


def test_an_unvalidated_checkpoint_links_no_metric():
    assert cm.linked_metrics({"step": 3, "val/auc": -1.0, "train/loss": 0.2}) == {}
    assert cm.linked_metrics({"val/auc": 0.8, "val/n": 4, "epoch": 1}) == {"val/auc": 0.8, "val/n": 4.0}


def test_the_run_logger_sends_a_checkpoint_through_its_outbox(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment_id, run_id = _run(uri)
    with tracking_uri_for_now(uri):  # RunLogger.start sets the process's tracking URI
        logger = RunLogger(True, uri, run_id, system_metrics=False)
        logger.start()
        logger.metrics({"train/loss": 1.0}, step=1)
        logger.checkpoint(cm_name(2), 2, "/runs/r/2", {"val/auc": 0.75})
        logger.checkpoint(cm_name(3), 3, "/runs/r/3", {})
        logger.end()
    assert _listed(client, experiment_id, run_id) == {cm_name(2): ("2", {"val/auc": 0.75}), cm_name(3): ("3", {})}
    assert _history(client, run_id, "val/auc") == [(2, 0.75)]


def test_a_resumed_attempt_links_the_metrics_the_dead_one_logged_without_logging_them_again(tmp_path):
    """Attempt 1 validated step 4 and died before its checkpoint was recorded; the replay of step 4 records it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment_id, run_id = _run(uri)
    with tracking_uri_for_now(uri):
        first = RunLogger(True, uri, run_id, system_metrics=False)
        first.start()
        first.metrics({"val/auc": 0.4}, step=4)
        first.end(status="RUNNING")
        second = RunLogger(True, uri, run_id, system_metrics=False)
        second.start()
        second.checkpoint(cm_name(4), 4, "/runs/r/4", {"val/auc": -0.4})  # the replay's number: not logged
        second.end()
    assert _listed(client, experiment_id, run_id) == {cm_name(4): ("4", {"val/auc": 0.4})}
    assert _history(client, run_id, "val/auc") == [(4, 0.4)]


def cm_name(step: int) -> str:
    from jobs.checkpoint_meta import dir_name_for

    return dir_name_for(step)


@pytest.mark.slow  # starts an MLflow server (twice)
def test_a_checkpoint_recorded_during_an_outage_becomes_its_logged_model_when_the_server_is_back(tmp_path):
    from servers import free_port, mlflow_server

    backend, port = f"sqlite:///{tmp_path}/mlflow.db", free_port()
    with tracking_uri_for_now(f"http://127.0.0.1:{port}"):
        with mlflow_server(backend, tmp_path, port=port) as uri:
            client, experiment_id, run_id = _run(uri)
            logger = RunLogger(True, uri, run_id, system_metrics=False, backoff_s=0.05)
            logger.start()
        logger.checkpoint(cm_name(2), 2, "/runs/r/2", {"val/auc": 0.6})  # the server is gone
        logger.metrics({"train/loss": 0.5}, step=3)
        assert not logger.flush(timeout=1)  # kept, not sent, not dropped
        with mlflow_server(backend, tmp_path, port=port):
            logger.end()
            assert _listed(client, experiment_id, run_id) == {cm_name(2): ("2", {"val/auc": 0.6})}
            assert _history(client, run_id, "train/loss") == [(3, 0.5)]
