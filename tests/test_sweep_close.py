"""How the sweep closes its trials' MLflow child runs from Tune's status (the trials' launch() leaves a failed
or stopped run open, so the sweep is the runs' only closer: no late FAILED over its KILLED)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from jobs.sweeping.results import _close_child


@pytest.fixture
def client(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _child(client: MlflowClient, status: str | None = None):
    experiment = client.get_experiment_by_name("trials") or client.get_experiment(client.create_experiment("trials"))
    run = client.create_run(experiment.experiment_id)
    if status:
        client.set_terminated(run.info.run_id, status)
    return client.get_run(run.info.run_id)


@pytest.mark.parametrize(
    ("tune_status", "run_status", "interrupted", "row", "closed"),
    [
        ("TERMINATED", "RUNNING", False, "STOPPED", "KILLED"),  # stopped by the scheduler, fit() cut off
        ("ERROR", "RUNNING", False, "ERROR", "FAILED"),  # failed: its launch() left the run open
        ("TERMINATED", "FINISHED", False, "FINISHED", "FINISHED"),
        ("RUNNING", "RUNNING", True, "RUNNING", "RUNNING"),  # Ctrl-C: the resumed sweep continues this run
        ("ERROR", "RUNNING", True, "RUNNING", "RUNNING"),  # Ctrl-C: resume_errored runs it again, same run
    ],
)
def test_a_trial_run_is_closed_from_tunes_status(client, tune_status, run_status, interrupted, row, closed):
    child = _child(client, None if run_status == "RUNNING" else run_status)
    assert _close_child(client, child, tune_status, interrupted) == row
    after = client.get_run(child.info.run_id)
    assert after.info.status == closed
    assert ("lma3d.sweep.stopped" in after.data.tags) == (row == "STOPPED")


def test_an_errored_trial_run_is_closed_failed_with_its_error_line(client):
    child = _child(client)
    line = "RuntimeError: injected fault at step 1"
    assert _close_child(client, child, "ERROR", False, error=line) == "ERROR"
    after = client.get_run(child.info.run_id)
    assert after.info.status == "FAILED" and after.data.tags["lma3d.sweep.error"] == line


@pytest.mark.parametrize(
    ("rows", "status"),
    [
        (["ERROR", "ERROR"], "FAILED"),  # no trial finished: the sweep has no result
        (["ERROR", "FINISHED"], "FINISHED"),  # a result, with a failed trial beside it (the command exits 1)
        (["STOPPED", "ERROR"], "FINISHED"),  # a trial the scheduler stopped did report its metric
    ],
)
def test_the_parent_run_fails_when_no_trial_finished(client, rows, status):
    from jobs.sweeping.results import close_parent

    parent = _child(client)
    close_parent(client, parent.info.run_id, [{"trial": f"t{i}", "status": s} for i, s in enumerate(rows)])
    assert client.get_run(parent.info.run_id).info.status == status
