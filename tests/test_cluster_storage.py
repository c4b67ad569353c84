"""A cluster never gets node-local storage by accident: with a cluster address (--address, RAY_ADDRESS, or inside a
submitted job) an implicit <workdir>/runs, SQLite store or eval folder under a relative workdir is refused before
anything starts; explicit shared locations are accepted (train.storage_path as a file:// URI trains and resumes:
tests/test_train_distributed.py)."""

from __future__ import annotations

import pytest

from jobs.cluster_storage import check_eval_outputs, check_train_outputs, train_output_problems
from jobs.entry import UserError
from jobs.experiment_config import ExperimentConfig
from jobs.typed_yaml import load
from jobs.verbs.eval import main as eval_main
from jobs.verbs.train import main as train_main

CLUSTER_ENV = ("RAY_ADDRESS", "RAY_JOB_SUBMISSION_ID", "MLFLOW_TRACKING_URI")


@pytest.fixture
def no_cluster_env(monkeypatch, tmp_path):
    for key in CLUSTER_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)  # a relative workdir would land here: the test checks nothing did
    return tmp_path


def _cfg(*overrides: str) -> ExperimentConfig:
    return load(ExperimentConfig, None, list(overrides))


@pytest.mark.parametrize("env", ["RAY_ADDRESS", "RAY_JOB_SUBMISSION_ID"])
def test_train_on_a_cluster_without_storage_path_is_refused_before_anything_starts(
    no_cluster_env, monkeypatch, capsys, env
):
    monkeypatch.setenv(env, "127.0.0.1:1" if env == "RAY_ADDRESS" else "raysubmit_123")
    code = train_main(["train.max_steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2, err  # both node-local outputs, one line each
    assert err[0].startswith("lma3d train: error: train.storage_path is not set")
    assert err[1].startswith("lma3d train: error: mlflow.tracking_uri is not set")
    assert list(no_cluster_env.iterdir()) == []  # no work/, no runs/, no mlflow.db


def test_train_with_an_address_and_shared_storage_but_default_mlflow_names_the_tracking_uri(no_cluster_env, capsys):
    code = train_main(["--address", "127.0.0.1:1", "train.storage_path=s3://bucket/runs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "mlflow.tracking_uri is not set" in err[0]
    assert list(no_cluster_env.iterdir()) == []


def test_a_relative_sqlite_store_on_a_cluster_is_refused(no_cluster_env):
    with pytest.raises(UserError, match="mlflow.tracking_uri 'sqlite:///mlflow.db' is a relative SQLite file"):
        check_train_outputs(_cfg("train.storage_path=s3://b/runs", "mlflow.tracking_uri=sqlite:///mlflow.db"), "x:1")


def test_submit_train_reports_every_node_local_output_before_it_connects(no_cluster_env, capsys):
    from jobs.verbs.submit import main as submit_main

    # Nothing listens on port 1: a connection attempt would fail with exit 1, not 2.
    code = submit_main(["train", "--config", "demo", "train.max_steps=1", "--address", "http://127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2, err
    assert "train.storage_path is not set" in err[0] and "mlflow.tracking_uri is not set" in err[1]


def test_submit_train_refuses_a_config_error_before_it_connects(no_cluster_env, capsys):
    from jobs.verbs.submit import main as submit_main

    code = submit_main(["train", "--config", "demo", "train.lr=fast", "--address", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and "train.lr" in err and "Failed to connect" not in err


def test_a_sweep_on_a_cluster_is_refused_before_ray_starts(no_cluster_env, capsys):
    from jobs.verbs.sweep import main as sweep_main

    code = sweep_main(["--config", "demo", "--search", "demo", "--trials", "1", "--address", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2 and "train.storage_path is not set" in err[0], err
    assert list(no_cluster_env.iterdir()) == []


def test_a_relative_storage_path_on_a_cluster_is_refused(no_cluster_env):
    with pytest.raises(UserError, match="train.storage_path 'runs' is relative"):
        check_train_outputs(_cfg("train.storage_path=runs", "workdir=/shared/work"), "127.0.0.1:1")


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.storage_path=s3://bucket/runs", "mlflow.tracking_uri=http://mlflow:5000"],
        ["train.storage_path=gs://bucket/runs", "mlflow.tracking_uri=sqlite:////mnt/cluster_storage/mlflow.db"],
        ["train.storage_path=/mnt/cluster_storage/runs", "mlflow.tracking_uri=http://mlflow:5000"],
        ["workdir=/mnt/cluster_storage/work"],  # everything defaults under an absolute (mounted) workdir
    ],
)
def test_explicit_shared_storage_on_a_cluster_is_accepted(no_cluster_env, overrides):
    assert train_output_problems(_cfg(*overrides)) == []
    check_train_outputs(_cfg(*overrides), "127.0.0.1:1")


def test_mlflow_tracking_uri_from_the_environment_counts_as_explicit(no_cluster_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert train_output_problems(_cfg("train.storage_path=s3://bucket/runs")) == []


def test_without_a_cluster_the_workdir_defaults_stand(no_cluster_env):
    assert len(train_output_problems(_cfg())) == 2  # what a cluster would refuse ...
    check_train_outputs(_cfg(), None)  # ... is fine on this machine
    check_eval_outputs(_cfg(), None, True, None)


def test_eval_on_a_cluster_without_out_is_refused_before_anything_starts(no_cluster_env, monkeypatch, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    code = eval_main(["--checkpoint", "/nonexistent/checkpoint", "--shards", "/nonexistent/shards"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("lma3d eval: error: --out is not set"), err
    with pytest.raises(UserError, match="mlflow.tracking_uri is not set"):
        check_eval_outputs(_cfg(), "/mnt/cluster_storage/eval", True, "127.0.0.1:1")
    check_eval_outputs(_cfg(), "/mnt/cluster_storage/eval", False, "127.0.0.1:1")  # --no-mlflow, or URI recorded
    with pytest.raises(UserError, match="--out 'eval' is relative"):
        check_eval_outputs(_cfg("workdir=/mnt/w"), "eval", False, "127.0.0.1:1")
