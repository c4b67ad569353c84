"""`--config NAME` finds the shipped configs from any folder (a path is a path; a missing config lists the
shipped names), and `1e-5` is a number wherever a user writes one: config files, overrides, search spaces."""

from __future__ import annotations

import pytest

import pipeline.ray_session
from jobs.experiment_config import ExperimentConfig
from jobs.sweeping.space import read_space
from jobs.typed_yaml import load
from jobs.verbs.train import main as train


@pytest.mark.parametrize(("name", "expected"), [("demo", "emb_dim: 128"), ("agpil/full_seen", "view: full")])
def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch, capsys, name, expected):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        train(["--config", name, "--print-config"])
    assert done.value.code == 0
    assert expected in capsys.readouterr().out


def test_a_path_is_a_path_and_a_name_is_a_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.yaml").write_text("model: {emb_dim: 256, num_heads: 4}\n")
    for given, emb_dim in (("demo.yaml", 256), (str(tmp_path / "demo.yaml"), 256), ("demo", 128)):
        with pytest.raises(SystemExit):
            train(["--config", given, "--print-config"])
        assert f"emb_dim: {emb_dim}" in capsys.readouterr().out, given


@pytest.mark.parametrize("given", ["dmeo", "configs/demo.yaml", "agpil/full_sen"])
def test_a_missing_config_is_one_line_listing_the_shipped_names(tmp_path, monkeypatch, capsys, given):
    monkeypatch.chdir(tmp_path)  # configs/demo.yaml is a path: relative to this folder, where there is none
    monkeypatch.setattr(pipeline.ray_session, "ensure_ray", lambda *a, **k: pytest.fail("Ray started"))
    assert train(["--config", given]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and given in err[0], err
    assert all(name in err[0] for name in ("demo", "agpil/full_seen", "agpil/rotation_unseen")), err[0]
    assert "agpil/base" not in err[0]  # the shared recipe is not an experiment


@pytest.mark.parametrize("where", ["config file", "override", "search space"])
def test_1e_5_is_a_float_everywhere(tmp_path, where):
    if where == "search space":
        path = tmp_path / "space.yaml"
        path.write_text("train.lr: {loguniform: [1e-5, 1e-3]}\ntrain.weight_decay: {choice: [0, 1e-2]}\n")
        space = read_space(path)
        assert space["train.lr"] == ("loguniform", [1e-5, 1e-3])
        assert space["train.weight_decay"] == ("choice", [0, 1e-2])
        assert isinstance(space["train.weight_decay"][1][1], float)
        return
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {lr: 1e-5, betas: [0.9, 1e-3]}\n" if where == "config file" else "{}\n")
    overrides = ["train.lr=1e-5", "train.betas=[0.9, 1e-3]"] if where == "override" else []
    cfg = load(ExperimentConfig, path, overrides)
    assert cfg.train.lr == 1e-5 and cfg.train.betas == (0.9, 1e-3)


def test_names_are_found_in_the_installed_share_folder_too(tmp_path):
    from jobs.resources import SPACES, find_config, shipped_names

    source, installed = tmp_path / "src", tmp_path / "share"  # a `pip install .`: no source tree
    for name in ("configs/demo", "configs/agpil/full_seen", "configs/agpil/base", "configs/sweeps/demo"):
        (installed / name).parent.mkdir(parents=True, exist_ok=True)
        (installed / f"{name}.yaml").write_text("{}\n")
    roots = (source, installed)
    assert shipped_names(roots=roots) == ["agpil/full_seen", "demo"]
    assert find_config("agpil/full_seen", roots=roots) == installed / "configs" / "agpil" / "full_seen.yaml"
    assert find_config("demo", SPACES, roots) == installed / "configs" / "sweeps" / "demo.yaml"
    with pytest.raises(FileNotFoundError, match="shipped: demo$"):
        find_config("agpil", SPACES, roots)
