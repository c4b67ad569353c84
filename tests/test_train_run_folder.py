"""Fast tests of a run folder's two checkpoint registries (Ray's snapshot, --no-ray's lma3d_checkpoints.json),
--no-ray's retention rule and the step-callback names; no Ray, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.run_folder import RunFolder, register_local
from jobs.training.callbacks import StepEvent, resolve


def _checkpoint(run: Path, step: int) -> str:
    name = f"checkpoint_step{step:09d}"
    (run / name).mkdir(parents=True)
    meta = {"format": "lma3d-deepspeed-v1", "tag": f"global_step{step}", "step": step}  # what its reader accepts
    (run / name / "lma3d_meta.json").write_text(json.dumps(meta))
    return name


def test_a_run_folder_counts_what_either_registry_lists(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6, 8):
        _checkpoint(run, step)
    ray_snapshot = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_step000000002"}]}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(ray_snapshot))
    register_local(run, "checkpoint_step000000006", {"val/auc": -1.0}, keep=5)
    _, metas = RunFolder(str(tmp_path), "run").registered()
    assert [m["step"] for m in metas] == [2, 6]  # 4 and 8: written, never registered


def test_register_local_keeps_the_k_best_by_val_auc_and_always_the_latest(tmp_path):
    run = tmp_path / "run"
    scores = {1: 0.7, 2: -1.0, 3: 0.9, 4: 0.5, 5: -1.0}  # -1: not validated
    for step, auc in scores.items():
        kept = register_local(run, _checkpoint(run, step), {"val/auc": auc}, keep=2)
    # best two: 3 (0.9) and 1 (0.7); the latest, 5, whatever its score
    assert [e["checkpoint_dir_name"][-1] for e in kept] == ["1", "3", "5"]
    assert sorted(p.name[-1] for p in run.glob("checkpoint_*")) == ["1", "3", "5"]


def test_register_local_breaks_ties_for_the_newer_checkpoint(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        kept = register_local(run, _checkpoint(run, step), {"val/auc": -1.0}, keep=2)
    assert [e["checkpoint_dir_name"][-1] for e in kept] == ["2", "3"]


def _record(event: StepEvent) -> None:
    pass


def test_step_callback_names_resolve_with_a_colon_or_a_dot():
    assert resolve("test_train_run_folder:_record") is _record
    assert resolve("test_train_run_folder._record") is _record


@pytest.mark.parametrize(
    "name, message",
    [("nodots", "not an importable name"), ("no_such_module_xyz:f", "cannot import"),
     ("json:no_such_function", "cannot import"), ("json:__doc__", "not callable")],
)  # fmt: skip
def test_bad_step_callback_names_fail_naming_the_entry(name, message):
    with pytest.raises(ValueError, match=f"train.step_callbacks: .*{message}"):
        resolve(name)


@pytest.mark.parametrize(
    ("reported", "score"),
    [(0.7, 0.7), (0, 0.0), (1, 1.0), (-1.0, None), (float("nan"), None), (None, None), (True, None), (1.5, None)],
)
def test_a_reported_score_is_an_auc_or_none(reported, score):
    from jobs.checkpoint_meta import validated_score

    assert validated_score(reported) == score


def test_the_run_folder_names_its_checkpoints_and_keeps_the_scheme_of_object_storage(tmp_path):
    folder = RunFolder("s3://bucket/runs/", "r1")
    assert folder.path == "s3://bucket/runs/r1"
    assert folder.checkpoint_path(12) == "s3://bucket/runs/r1/checkpoint_step000000012"
    assert folder.location("bucket/runs/r1/checkpoint_step000000012") == folder.checkpoint_path(12)
    local = RunFolder(str(tmp_path), "r1")
    fs, path = local.in_filesystem("lma3d_attempts")
    assert path == f"{tmp_path}/r1/lma3d_attempts" and local.location(path) == path


def test_a_registry_over_its_size_bound_is_refused_before_it_is_read(tmp_path):
    from jobs.consolidate import BadCheckpoint
    from jobs.run_folder import RAY_SNAPSHOT_FILE, REGISTRY_MAX_BYTES

    run = tmp_path / "run"
    run.mkdir()
    with open(run / RAY_SNAPSHOT_FILE, "wb") as f:  # sparse: no disk, and no memory unless it is read
        f.truncate(REGISTRY_MAX_BYTES + 1)
    with pytest.raises(BadCheckpoint, match=f"{RAY_SNAPSHOT_FILE}: {REGISTRY_MAX_BYTES + 1} bytes, over the"):
        RunFolder(str(tmp_path), "run").registered()
