"""What a restored sweep does with a trial Tune brings back as unfinished: a trial whose training job had
finished (its MLflow child run FINISHED) is reported from its last checkpoint, not trained again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from jobs.checkpoint_meta import META_FILE, META_FORMAT
from jobs.experiment_config import ExperimentConfig
from jobs.run_folder import RAY_SNAPSHOT_FILE
from jobs.sweeping.runner import finished_result
from jobs.tracking import RUN_KEY_TAG


def _trial_folder(
    cfg: ExperimentConfig, name: str, steps: list[int], registered: list[int], metrics: object = None
) -> None:
    """A trial's Ray Train run folder: checkpoint folders at `steps` (their meta's metrics: `metrics`, else the
    step and a val/auc of step / 100), Ray's snapshot listing `registered`."""
    run = Path(cfg.storage_path, name)
    run.mkdir(parents=True)
    for step in steps:
        folder = run / f"checkpoint_step{step:09d}"
        folder.mkdir()
        meta = {"format": META_FORMAT, "tag": f"global_step{step}", "step": step,
                "metrics": {"step": step, "val/auc": step / 100} if metrics is None else metrics}
        (folder / META_FILE).write_text(json.dumps(meta))
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": f"checkpoint_step{s:09d}"} for s in registered]}
    (run / RAY_SNAPSHOT_FILE).write_text(json.dumps(snapshot))


def _child_run(cfg: ExperimentConfig, name: str, status: str | None) -> None:
    client = MlflowClient(cfg.tracking_uri)
    experiment = client.create_experiment(cfg.experiment_name)
    run = client.create_run(experiment, run_name=name, tags={RUN_KEY_TAG: f"{cfg.storage_path}/{name}"})
    if status:
        client.set_terminated(run.info.run_id, status)


@pytest.fixture
def cfg(tmp_path) -> ExperimentConfig:
    return ExperimentConfig(workdir=str(tmp_path))


def test_a_finished_trial_reports_the_metrics_of_its_last_registered_checkpoint(cfg):
    _trial_folder(cfg, "s-00000", steps=[4, 8, 12], registered=[4, 8])  # step 12: an attempt died writing it
    _child_run(cfg, "s-00000", "FINISHED")
    assert finished_result(cfg, "s-00000") == {"step": 8, "val/auc": 0.08}


@pytest.mark.parametrize("status", [None, "FAILED", "KILLED"])
def test_a_trial_whose_run_did_not_finish_is_trained(cfg, status):
    _trial_folder(cfg, "s-00001", steps=[4], registered=[4])
    _child_run(cfg, "s-00001", status)  # None: still RUNNING, as after a Ctrl-C
    assert finished_result(cfg, "s-00001") is None


def test_a_trial_without_a_run_folder_or_a_checkpoint_is_trained(cfg):
    assert finished_result(cfg, "s-00002") is None
    _trial_folder(cfg, "s-00003", steps=[], registered=[])
    _child_run(cfg, "s-00003", "FINISHED")
    assert finished_result(cfg, "s-00003") is None


def test_a_finished_trial_whose_checkpoint_metrics_are_damaged_goes_to_the_launcher(cfg):
    """Not reported to Tune as it is: the trial goes to launch(), which resumes its run at the last step."""
    _trial_folder(cfg, "s-00004", steps=[4], registered=[4], metrics="not a mapping")
    _child_run(cfg, "s-00004", "FINISHED")
    assert finished_result(cfg, "s-00004") is None
