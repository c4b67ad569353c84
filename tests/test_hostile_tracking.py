"""A tracking outage loses nothing: rank 0's metrics logged while the MLflow server is down reach it, in step order,
when it answers again; what it never takes is written to the run folder and said in one line; the training
thread never talks to the server itself. A real `mlflow server`, stopped and started again on the same port."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from mlflow.tracking import MlflowClient
from servers import free_port, mlflow_server

from jobs.tracking import tracking_uri_for_now
from jobs.training.tracking import UNSENT_FILE, RunLogger

pytestmark = pytest.mark.slow  # starts an MLflow server (twice)


def _history(uri: str, run_id: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, "train/loss")]


def _senders(monkeypatch) -> set[str]:
    """Names of the threads that send metrics or tags to MLflow."""
    names: set[str] = set()
    real = MlflowClient.log_batch

    def log_batch(self, *args, **kwargs):
        names.add(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    return names


def test_metrics_logged_during_an_outage_arrive_in_step_order_when_the_server_is_back(tmp_path, monkeypatch):
    backend, port = f"sqlite:///{tmp_path}/mlflow.db", free_port()
    with tracking_uri_for_now(f"http://127.0.0.1:{port}"):  # RunLogger.start sets the process's tracking URI
        _outage_then_back(backend, port, tmp_path, _senders(monkeypatch))


def _outage_then_back(backend: str, port: int, tmp_path, senders: set[str]) -> None:
    unsent = tmp_path / "run" / UNSENT_FILE
    with mlflow_server(backend, tmp_path, port=port) as uri:
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        logger = RunLogger(True, uri, run_id, system_metrics=False, backoff_s=0.05, unsent_path=unsent)
        logger.start()
        for step in (1, 2, 3):
            logger.metrics({"train/loss": step / 10}, step=step)
        assert logger.flush(timeout=120)
    for step in (4, 5, 6, 7, 8):  # the server is gone
        logger.metrics({"train/loss": step / 10}, step=step)
    logger.tags({"checkpoint.latest": "step8"})
    assert not logger.flush(timeout=1)  # kept, not sent, not dropped
    with mlflow_server(backend, tmp_path, port=port):
        for step in (9, 10):
            logger.metrics({"train/loss": step / 10}, step=step)
        logger.end()
        assert _history(uri, run_id) == [(s, s / 10) for s in range(1, 11)]
        assert MlflowClient(uri).get_run(run_id).data.tags["checkpoint.latest"] == "step8"
    assert not unsent.exists()
    assert senders == {"lma3d-mlflow-outbox"}, senders  # the training thread never waited on a request


def test_points_the_server_never_takes_are_written_to_the_run_folder_in_one_line(tmp_path, caplog):
    backend, port = f"sqlite:///{tmp_path}/mlflow.db", free_port()
    with tracking_uri_for_now(f"http://127.0.0.1:{port}"):
        logger, unsent = _server_gone_for_good(backend, port, tmp_path)
        with caplog.at_level(logging.WARNING, logger="lma3d.train.mlflow"):
            logger.end()
    kept = [json.loads(line) for line in unsent.read_text().splitlines()]
    assert [(p["key"], p["step"], p["value"]) for p in kept] == [
        (key, step, value) for step in (2, 3, 4) for key, value in (("train/loss", step / 10), ("train/lr", 1e-3))
    ]
    lines = [r.getMessage() for r in caplog.records if "did not take" in r.getMessage()]
    assert len(lines) == 1 and "6 metric/tag points" in lines[0] and str(unsent) in lines[0], lines


def _server_gone_for_good(backend: str, port: int, tmp_path) -> tuple[RunLogger, object]:
    """A logger that logged step 1 while the server was up, and steps 2-4 after it went away for good."""
    unsent = tmp_path / "run" / UNSENT_FILE
    with mlflow_server(backend, tmp_path, port=port) as uri:
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("gone")).info.run_id
        logger = RunLogger(True, uri, run_id, system_metrics=False, backoff_s=0.05, unsent_path=unsent,
                           end_flush_s=1)  # fmt: skip
        logger.start()
        logger.metrics({"train/loss": 0.1}, step=1)
        assert logger.flush(timeout=120)
    for step in (2, 3, 4):
        logger.metrics({"train/loss": step / 10, "train/lr": 1e-3}, step=step)
    return logger, unsent
