"""The search space of lma3d sweep: distributions read and checked against the config, one-line errors before
Ray starts, trial values applied to the base config."""

from __future__ import annotations

import pytest

import pipeline.ray_session
from jobs.experiment_config import ExperimentConfig
from jobs.sweeping.space import apply_trial, candidate_values, check_space, read_space
from jobs.typed_yaml import ConfigError, to_dict
from jobs.verbs.sweep import main


def _space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_every_distribution_is_read_with_its_arguments(tmp_path):
    space = read_space(_space(tmp_path, """
train.lr: {loguniform: [1.0e-5, 1.0e-3]}
train.weight_decay: {uniform: [0.0, 0.1]}
data.batch_size: {choice: [4, 6]}
train.warmup_steps: {randint: [10, 20]}
"""))
    assert space == {
        "train.lr": ("loguniform", [1e-5, 1e-3]),
        "train.weight_decay": ("uniform", [0.0, 0.1]),
        "data.batch_size": ("choice", [4, 6]),
        "train.warmup_steps": ("randint", [10, 20]),
    }
    assert candidate_values("randint", [10, 20]) == [10, 19]  # upper bound exclusive
    check_space(space, to_dict(ExperimentConfig()), ExperimentConfig)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.lr: {loguniform: [1.0e-3, 1.0e-5]}", "train.lr: loguniform range [0.001, 1e-05] is empty"),
        ("train.lr: {loguniform: [0.0, 1.0]}", "train.lr: loguniform needs low > 0"),
        ("train.lr: {uniform: [1.0]}", "train.lr: uniform takes [low, high] numbers"),
        ("train.epochs: {randint: [1.5, 3]}", "train.epochs: randint takes integer bounds"),
        ("train.lr: {choice: []}", "train.lr: choice takes a non-empty list"),
        ("train.lr: {normal: [0, 1]}", "train.lr: expected one of"),
        ("train.lr: 0.1", "train.lr: expected one of"),
        ("[1, 2]", "a search space is a non-empty mapping"),
        ("train.lr: {uniform: [0, 1", "not valid YAML"),
    ],
)
def test_a_malformed_space_is_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=None) as error:
        read_space(_space(tmp_path, text))
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train.learning_rate: {uniform: [0.1, 0.2]}", "train.learning_rate"),  # unknown key
        ("data.batch_size: {choice: [4, large]}", "data.batch_size = 'large'"),  # wrong type
        ("train.zero_stage: {choice: [1, 5]}", "train.zero_stage = 5"),  # the config's own range check
    ],
)
def test_keys_and_values_are_checked_against_the_config(tmp_path, text, key):
    space = read_space(_space(tmp_path, text))
    with pytest.raises(ConfigError) as error:
        check_space(space, to_dict(ExperimentConfig()), ExperimentConfig)
    assert key in str(error.value) and "\n" not in str(error.value)


def test_a_bad_space_fails_the_command_before_ray_starts(tmp_path, monkeypatch, capsys):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for an invalid search space")

    monkeypatch.setattr(pipeline.ray_session, "ensure_ray", no_ray)
    space = _space(tmp_path, "train.nope: {uniform: [0.1, 0.2]}")
    assert main(["--search", str(space), "--trials", "2", f"workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.nope" in err[0]


def test_trial_values_land_in_a_copy_of_the_base_config():
    import numpy as np

    base = to_dict(ExperimentConfig())
    data = apply_trial(base, {"train.lr": np.float64(3e-4), "data.batch_size": np.int64(4)})
    assert data["train"]["lr"] == 3e-4 and type(data["data"]["batch_size"]) is int
    assert base["train"]["lr"] == ExperimentConfig().train.lr  # the base is untouched
