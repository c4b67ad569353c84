"""Bad configs and inputs are one line, early: numbers checked when the config loads, every path `lma3d train`
reads checked in the driver before MLflow or Ray start (exit 2), and an infrastructure failure ends with one
summary line naming the stage and the log file holding the traceback (exit 1)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from capped import Capped, run_verb
from tiny import synth_shards, tiny_overrides

from jobs.entry import entry, stage
from jobs.sweeping.space import read_space
from jobs.typed_yaml import ConfigError
from jobs.verbs.train import main as train_main


def _refused(capsys, argv: list[str], *needles: str) -> str:
    from unittest import mock

    # Refused before Ray or an MLflow run: reaching either raises here, which would end as exit 1, not 2.
    with (
        mock.patch("pipeline.ray_session.ensure_ray", side_effect=AssertionError("Ray reached before the refusal")),
        mock.patch("jobs.tracking.create_run", side_effect=AssertionError("MLflow run created first")),
    ):
        code = train_main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lr=.nan", "train.lr must be a finite number, got nan"),
        ("train.lr=1e300", "train.lr must be in (0, 1], got 1e+300"),
        ("train.lr=-1e-4", "train.lr must be in (0, 1]"),
        ("train.max_steps=-3", "train.max_steps must be >= 0, got -3"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.weight_decay=.inf", "train.weight_decay must be a finite number, got inf"),
        ("train.betas=[0.9, 1.5]", "train.betas must both be in [0, 1)"),
        ("data.max_bad_fraction=2", "data.max_bad_fraction must be in [0, 1]"),
        ("model.sa1_radii=[0.1, .nan, 0.4]", "model.sa1_radii[1] must be a finite number"),
        ("eval.cpus_per_actor=-1", "eval.cpus_per_actor a finite number > 0"),
    ],
)
def test_a_number_out_of_range_is_refused_when_the_config_loads(tmp_path, capsys, override, needle) -> None:
    _refused(capsys, [f"workdir={tmp_path}", override], needle)
    assert not (tmp_path / "runs").exists()


def test_missing_data_shards_is_one_line_before_anything_starts(tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere"
    _refused(capsys, [f"workdir={tmp_path}", f"data.shards={missing}"], "data.shards", str(missing), "no such folder")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_missing_resnet_weights_is_one_line_before_anything_starts(shards, tmp_path, capsys) -> None:
    args = tiny_overrides(**{"data.shards": str(shards), "workdir": str(tmp_path)})
    _refused(capsys, [*args, f"model.resnet_weights={tmp_path / 'r18.pth'}"], "model.resnet_weights", "does not exist")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_shards(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_more_pairs_than_clouds_per_object_is_refused(shards, tmp_path, capsys) -> None:
    args = tiny_overrides(**{"data.shards": str(shards), "workdir": str(tmp_path)})
    _refused(capsys, [*args, "data.pairs=4"], "data.pairs=4", "holds 3 clouds of")


@pytest.mark.slow
def test_a_manifest_shard_name_outside_the_folder_is_refused(shards, tmp_path, capsys) -> None:
    copy = shutil.copytree(shards, tmp_path / "shards")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["name"] = "../../../../etc/passwd"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    args = tiny_overrides(**{"data.shards": str(copy), "workdir": str(tmp_path)})
    _refused(capsys, args, "manifest.json", "'../../../../etc/passwd' is not <split>/shard-NNNNNN.tar")


@pytest.mark.slow
def test_a_manifest_that_is_not_json_is_refused(shards, tmp_path, capsys) -> None:
    copy = shutil.copytree(shards, tmp_path / "shards")
    (copy / "manifest.json").write_text('{"splits": ')
    args = tiny_overrides(**{"data.shards": str(copy), "workdir": str(tmp_path)})
    _refused(capsys, args, str(copy / "manifest.json"), "is not readable JSON")


@entry("probe")
def _probe(argv: list[str]) -> int:
    """A verb whose Ray stage fails in a worker, as a failing Ray Data or Ray Train stage does."""
    import ray

    @ray.remote
    def read_block() -> None:
        raise OSError("disk /mnt/shared is full\nsecond line of detail")

    with stage("Ray probe stage"):
        ray.get(read_block.remote())
    return 0


@pytest.mark.slow
def test_a_failed_ray_stage_is_one_summary_line_naming_the_stage_and_the_log(
    ray_local, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("LMA3D_LOG_DIR", str(tmp_path / "logs"))
    assert _probe([]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("lma3d probe: error: Ray probe stage failed: OSError: disk /mnt/shared is full (")
    logs = list((tmp_path / "logs").glob("probe-*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0]
    text = logs[0].read_text()
    assert "second line of detail" in text and "read_block" in text and "Traceback" in text


# ---------------------------------------------------------------- bounded config and search-space reads (issue 32)
# Bombs run in a child under a 4 GB address-space cap (tests/capped.py): one that gets through dies there.


def laughs(levels: int = 9, width: int = 10) -> str:
    """A billion-laughs YAML flow sequence: a few hundred bytes, width ** levels leaves once aliases are expanded."""
    items = ["&l0 lol"] + [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


def _bounded(run: Capped, *needles: str) -> str:
    """One line, exit 2, in bounded memory; a read that never ends is killed at run_verb's timeout (exit -9)."""
    print(f"\n[bounded] peak {run.peak_mb:.0f} MB, {run.seconds:.1f} s: {run.lines[-1:]}")
    assert run.code == 2 and len(run.lines) == 1, (run.code, run.stderr[-2000:])
    assert len(run.lines[0]) < 600 and run.peak_mb < 1500
    for needle in needles:
        assert needle in run.lines[0], run.lines[0]
    return run.lines[0]


def test_an_alias_bomb_as_train_lr_is_one_short_line(tmp_path) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(f"train:\n  lr: {laughs()}\n")
    _bounded(run_verb("train", "--config", str(config), f"workdir={tmp_path}"), str(config), "train.lr", "alias")


def test_an_alias_bomb_in_an_override_is_one_short_line(tmp_path) -> None:
    _bounded(run_verb("train", f"workdir={tmp_path}", f"train.lr={laughs()}"), "train.lr", "alias")


def test_dev_zero_as_base_is_refused_unread(tmp_path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text("base: /dev/zero\ntrain:\n  lr: 0.001\n")
    _bounded(run_verb("train", "--config", str(config), f"workdir={tmp_path}"), "/dev/zero", "not a regular file")


def test_a_fifo_as_base_is_refused_without_blocking(tmp_path) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    config = tmp_path / "exp.yaml"
    config.write_text("base: pipe.yaml\n")
    run = run_verb("train", "--config", str(config), f"workdir={tmp_path}")
    _bounded(run, "pipe.yaml", "not a regular file")


def test_a_config_over_the_size_limit_is_refused_from_its_size(tmp_path, capsys) -> None:
    config = tmp_path / "big.yaml"
    config.write_text("train:\n  lr: 0.001\n" + "# padding\n" * 200_000)  # 2 MB, valid YAML
    _refused(capsys, ["--config", str(config), f"workdir={tmp_path}"], str(config), "bytes, over the")


def test_a_base_chain_3000_deep_is_one_line(tmp_path, capsys) -> None:
    for i in range(3000):
        (tmp_path / f"c{i}.yaml").write_text(f"base: c{i + 1}.yaml\n" if i < 2999 else "train:\n  lr: 0.001\n")
    _refused(capsys, ["--config", str(tmp_path / "c0.yaml"), f"workdir={tmp_path}"], "c0.yaml", "base:", "deep")


def test_yaml_nested_100000_deep_is_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "deep.yaml"
    config.write_text("train:\n  lr: " + "[" * 100_000 + "]" * 100_000 + "\n")
    _refused(capsys, ["--config", str(config), f"workdir={tmp_path}"], str(config), "nested deeper than")


def test_a_long_value_is_truncated_in_the_error_line(tmp_path, capsys) -> None:
    config = tmp_path / "long.yaml"
    config.write_text("train:\n  lr: [" + ", ".join(["0.1"] * 50_000) + "]\n")
    line = _refused(capsys, ["--config", str(config), f"workdir={tmp_path}"], "train.lr must be a number")
    assert len(line) < 600, len(line)


def test_an_alias_bomb_as_a_choice_value_is_one_short_line(tmp_path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(f"train.lr: {{choice: [0.001, {laughs()}]}}\n")
    run = run_verb("sweep", "--search", str(space), "--trials", "1", f"workdir={tmp_path}")
    _bounded(run, str(space), "train.lr", "alias")


def test_a_choice_of_a_million_values_is_refused_from_the_file_size(tmp_path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {choice: [" + ", ".join(["0.001"] * 1_000_000) + "]}\n")
    run = run_verb("sweep", "--search", str(space), "--trials", "1", f"workdir={tmp_path}")
    _bounded(run, str(space), "bytes, over the")


def test_dev_zero_as_search_space_is_refused_unread(tmp_path) -> None:
    run = run_verb("sweep", "--search", "/dev/zero", "--trials", "1", f"workdir={tmp_path}")
    _bounded(run, "/dev/zero", "not a regular file")


def test_a_choice_of_5000_values_is_refused_before_any_is_checked(tmp_path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {choice: [" + ", ".join(["0.001"] * 5000) + "]}\n")
    with pytest.raises(ConfigError) as error:  # by the reader: check_space, which builds a config per value, never runs
        read_space(space)
    assert f"{space}: train.lr: choice has 5000 values, at most 1000" in str(error.value)


def test_a_choice_value_nested_40_deep_is_refused(tmp_path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {choice: [" + "[" * 40 + "0.1" + "]" * 40 + "]}\n")
    with pytest.raises(ConfigError, match="nested deeper than") as error:
        read_space(space)
    assert str(space) in str(error.value) and "\n" not in str(error.value)


def test_a_flat_config_of_349000_nodes_stops_composing_at_the_budget(tmp_path) -> None:
    """Under the size limit but over the node budget without any alias: refused after 100,000 nodes are composed
    (composing all 349,000 took 15 s and 500 MB)."""
    config = tmp_path / "flat.yaml"
    config.write_text("train:\n  lr: [" + ", ".join(["1"] * 349_000) + "]\n")
    run = run_verb("train", "--config", str(config), f"workdir={tmp_path}")
    _bounded(run, str(config), "train.lr: more than 100000 YAML nodes")
