"""Rank 0's MLflow logger on a resumed attempt: the steps trained again after the checkpoint are not logged a
second time (a real sqlite MLflow store; each attempt its own RunLogger on the same run, as a restarted worker)."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from jobs.tracking import tracking_uri_for_now
from jobs.training.tracking import RunLogger


def _attempt(uri: str, run_id: str, logs: list[tuple[int, dict[str, float]]]) -> None:
    """One attempt of the run: attach, log `logs` as (step, metrics), then die (the run is left open)."""
    logger = RunLogger(True, uri, run_id, system_metrics=False)
    logger.start()
    for step, metrics in logs:
        logger.metrics(metrics, step=step)
    assert logger.flush(timeout=60)  # sent (by the outbox's thread) before the process "dies"
    mlflow.end_run(status="RUNNING")  # the process is gone; the run stays RUNNING for the next attempt


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def _new_run(uri: str) -> str:
    client = MlflowClient(uri)
    return client.create_run(client.create_experiment("replay")).info.run_id


def test_a_resumed_attempt_logs_each_replayed_step_once_keeping_the_first_value(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_uri_for_now(uri):
        run_id = _new_run(uri)
        # attempt 1 logs steps 1-8 (val at 4 and 8) and dies; its checkpoint of step 4 is the last registered
        _attempt(uri, run_id, [(s, {"train/loss": s / 10}) for s in range(1, 9)] + [(4, {"val/auc": 0.4})])
        _attempt(uri, run_id, [(8, {"val/auc": 0.8})])
        # attempt 2 replays 5-8 (other numbers here, to tell them apart) and goes on to 10
        _attempt(uri, run_id, [(s, {"train/loss": -s, "val/auc": -s} if s == 8 else {"train/loss": -s})
                               for s in range(5, 11)])  # fmt: skip
    assert _history(uri, run_id, "train/loss") == [(s, s / 10) for s in range(1, 9)] + [(9, -9.0), (10, -10.0)]
    assert _history(uri, run_id, "val/auc") == [(4, 0.4), (8, 0.8)]


def test_a_key_the_dead_attempt_had_not_logged_at_a_step_is_logged_by_the_replay(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_uri_for_now(uri):
        run_id = _new_run(uri)
        # attempt 1 dies after step 8's training metrics, before step 8's validation was logged
        _attempt(uri, run_id, [(s, {"train/loss": s / 10}) for s in range(1, 9)] + [(4, {"val/auc": 0.4})])
        _attempt(uri, run_id, [(8, {"train/loss": -8.0, "val/auc": 0.8})])
    assert _history(uri, run_id, "train/loss") == [(s, s / 10) for s in range(1, 9)]
    assert _history(uri, run_id, "val/auc") == [(4, 0.4), (8, 0.8)]


def test_an_attempt_that_cannot_read_the_run_logs_its_replay_again_and_trains_on(tmp_path, monkeypatch, caplog):
    import jobs.training.tracking as tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_uri_for_now(uri):
        run_id = _new_run(uri)
        _attempt(uri, run_id, [(1, {"train/loss": 0.1}), (2, {"train/loss": 0.2})])

        def unreadable(*_):
            raise OSError("the tracking server answered 503")

        monkeypatch.setattr(tracking, "last_steps", unreadable)
        logger = RunLogger(True, uri, run_id, system_metrics=False, backoff_s=0.01)
        logger.start()
        logger.metrics({"train/loss": 0.25}, step=2)
        logger.metrics({"train/loss": 0.3}, step=3)
        assert logger.flush(timeout=60)
        mlflow.end_run(status="RUNNING")
    assert _history(uri, run_id, "train/loss") == [(1, 0.1), (2, 0.2), (2, 0.25), (3, 0.3)]
    assert "MLflow get_run failed 3 times, skipped" in caplog.text
