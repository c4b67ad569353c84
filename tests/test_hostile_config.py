"""Bad configs and inputs are one line, early: numbers checked when the config loads, every path `lma3d train`
reads checked in the driver before MLflow or Ray start (exit 2), and an infrastructure failure ends with one
summary line naming the stage and the log file holding the traceback (exit 1)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from tiny import synth_shards, tiny_overrides

from jobs.entry import entry, stage
from jobs.verbs.train import main as train_main


def _refused(capsys, argv: list[str], *needles: str) -> str:
    started = time.monotonic()
    code = train_main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert time.monotonic() - started < 30
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
def shards(tmp_path_factory: pytest.TempPathFactory, ray_local) -> Path:
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
