"""What the MLflow UI is given to show a training user, through MlflowClient on a real sqlite store: experiments
of the model-training kind, an eval run nested under the training run it evaluates with the duration of the
evaluation, and its per-object / per-affordance results as an MLflow table (columns as per_class.csv's)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jobs.evaluation import tracking as eval_tracking
from jobs.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, ensure_experiment, start_run, ui_url

NAN = float("nan")
METRICS = {  # what model.metrics.evaluate returns; Mug has no positive GT point, so its AUC / aIOU are NaN
    "auc": 0.8, "aiou": 0.4, "sim": 0.6, "mae": 0.3, "n": 3,
    "per_object": {"Bag": {"auc": 0.9, "aiou": 0.5, "sim": 0.7, "mae": 0.1, "n": 2},
                   "Mug": {"auc": NAN, "aiou": NAN, "sim": 0.0, "mae": 0.6, "n": 1}},
    "per_affordance": {"grasp": {"auc": 0.8, "aiou": 0.4, "sim": 0.6, "mae": 0.3, "n": 3}},
}  # fmt: skip


@pytest.fixture
def client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_experiments_are_created_and_marked_as_model_training_unless_a_kind_was_chosen(client, tmp_path) -> None:
    created = ensure_experiment(client, "lma3d/new", (tmp_path / "a").as_uri())
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    older = client.create_experiment("lma3d/older", (tmp_path / "b").as_uri())  # made before the tag existed
    assert ensure_experiment(client, "lma3d/older", None) == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND[1]
    chosen = client.create_experiment("lma3d/chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    ensure_experiment(client, "lma3d/chosen", None)
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # the user's choice


def test_the_eval_run_is_a_child_of_the_training_run_spanning_the_evaluation(client, tmp_path) -> None:
    uri = client.tracking_uri
    experiment = ensure_experiment(client, "lma3d/eval", (tmp_path / "art").as_uri())
    training = client.create_run(experiment, run_name="train").info.run_id
    began = int(time.time() * 1000) - 5000  # inference started 5 s before the run is created
    run_id = start_run(uri, parent_run_id=training, experiment="lma3d/eval", workdir=str(tmp_path),
                                     run_name="eval-step4", tags={}, start_time_ms=began)  # fmt: skip
    csv = tmp_path / "per_class.csv"
    csv.write_text("group,name\n")
    before_logging = int(time.time() * 1000)
    eval_tracking.log_results(uri, run_id, METRICS, 4, {"eval.batch_size": 3}, [csv], [])

    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == training and run.info.experiment_id == experiment
    assert run.info.status == "FINISHED" and run.info.start_time == began
    assert run.info.end_time >= before_logging and run.info.end_time - run.info.start_time >= 5000

    logged = json.loads(run.data.tags["mlflow.loggedArtifacts"])  # what the UI lists as the run's tables
    assert {"path": eval_tracking.TABLE_FILE, "type": "table"} in logged
    table = json.loads(Path(client.download_artifacts(run_id, eval_tracking.TABLE_FILE, str(tmp_path))).read_text())
    assert table["columns"] == ["group", "name", "auc", "aiou", "sim", "mae", "n"]
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [(r["group"], r["name"], r["n"]) for r in rows] == [("object", "Bag", 2), ("object", "Mug", 1),
                                                                ("affordance", "grasp", 3)]  # fmt: skip
    assert rows[0]["auc"] == pytest.approx(0.9) and rows[1]["auc"] is None  # NaN as JSON null, not a string
    assert {a.path for a in client.list_artifacts(run_id, "eval")} >= {"eval/per_class.csv", "eval/per_class.json"}


def test_the_ui_link_opens_the_model_training_view() -> None:
    assert (
        ui_url("sqlite:////w/mlflow.db", "3") == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    )
    assert ui_url("http://mlflow:5000/", "3", "ab12") == (
        "http://mlflow:5000/#/experiments/3/runs/ab12?workflowType=machine_learning"
    )


def test_a_registered_versions_link_opens_in_that_view_too() -> None:
    from jobs.tracking import version_url

    assert version_url("sqlite:////w/mlflow.db", "lma3d demo", "2") == (
        "http://127.0.0.1:5000/#/models/lma3d%20demo/versions/2?workflowType=machine_learning"
    )


def test_the_demo_ends_with_the_training_runs_page_in_that_view(client, tmp_path) -> None:
    from jobs.tracking import run_page
    from jobs.training.launcher import TrainSummary

    run = client.create_run(ensure_experiment(client, "lma3d/demo", (tmp_path / "art").as_uri()))
    page = run_page(client.tracking_uri, run.info.run_id)
    assert page == ui_url(client.tracking_uri, run.info.experiment_id, run.info.run_id)
    assert run_page(client.tracking_uri, None) is None
    assert run_page(client.tracking_uri, "0" * 32) is None  # a run this store does not hold: no line
    summary = TrainSummary("r", "/runs/r", client.tracking_uri, "lma3d/demo", run.info.run_id, "new")
    assert f"run page:   {page}" in summary.report().splitlines()  # lma3d train ends with the same link
