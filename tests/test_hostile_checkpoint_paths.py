"""A checkpoint's lma3d_meta.json and `latest` name the folder its weights are read from: every reader (`lma3d
export`, `lma3d eval`, resume, the run folder's listing) goes through the one validated reader
(jobs.checkpoint_meta.read_meta), and a tag that leaves the checkpoint folder is one line, exit 2, with
nothing consolidated from elsewhere (issue 32).

The checkpoints here are hand-made in the ZeRO-0 layout (one mp_rank_00_model_states.pt holding the module):
consolidation reads them as it reads DeepSpeed's, without DeepSpeed or Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from capped import run_verb
from tiny import tiny_model_config

from jobs.checkpoint_meta import META_FILE, META_FORMAT
from jobs.consolidate import consolidate
from jobs.run_folder import LOCAL_REGISTRY_FILE, LOCAL_REGISTRY_FORMAT, RunFolder
from jobs.verbs.eval import main as eval_main
from jobs.verbs.export import main as export_main
from model.lmaffordance3d import build_model

ELSEWHERE = "../../other/ck/global_step240"


def write_checkpoint(folder: Path, step: int, weights: dict[str, torch.Tensor], **meta) -> Path:
    tag = f"global_step{step}"
    (folder / tag).mkdir(parents=True)
    torch.save({"module": weights}, folder / tag / "mp_rank_00_model_states.pt")
    (folder / "latest").write_text(tag)
    record = {"format": META_FORMAT, "tag": tag, "step": step,
              "config": {"model": dataclasses.asdict(tiny_model_config())}} | meta  # fmt: skip
    (folder / META_FILE).write_text(json.dumps(record))
    return folder


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(tiny_model_config(), pretrained=False).trainable_state_dict()


@pytest.fixture
def checkpoint(tmp_path: Path, weights) -> Path:
    """tmp/runs/r/checkpoint_step2, and a complete other checkpoint at tmp/runs/other/ck (what ELSEWHERE names)."""
    write_checkpoint(tmp_path / "runs" / "other" / "ck", 240, {k: v + 1 for k, v in weights.items()})
    return write_checkpoint(tmp_path / "runs" / "r" / "checkpoint_step2", 2, weights)


def edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps(meta | changes))


def _export_refused(checkpoint: Path, tmp_path: Path, capsys, *needles: str) -> str:
    out = tmp_path / "exported"
    code = export_main(["--checkpoint", str(checkpoint), "--out", str(out), f"workdir={tmp_path}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, lines)
    assert lines[0].startswith("lma3d export: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def test_a_clean_hand_made_checkpoint_exports(checkpoint, weights, tmp_path, capsys) -> None:
    """The layout the refusals below start from is one export accepts."""
    code = export_main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "exported"), f"workdir={tmp_path}"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "exported" / "model.safetensors").is_file()


@pytest.mark.parametrize("tag", [ELSEWHERE, "ABSOLUTE", 5, "global_step2/../../../other/ck/global_step240"])
def test_a_meta_tag_leaving_the_checkpoint_is_refused_by_export(checkpoint, tmp_path, capsys, tag) -> None:
    if tag == "ABSOLUTE":
        tag = str(tmp_path / "runs" / "other" / "ck" / "global_step240")
    edit_meta(checkpoint, tag=tag)
    _export_refused(checkpoint, tmp_path, capsys, str(checkpoint / META_FILE), f"tag {tag!r} is not global_step<N>")


def test_an_empty_tag_with_latest_leaving_the_checkpoint_is_refused(checkpoint, tmp_path, capsys) -> None:
    edit_meta(checkpoint, tag="")
    (checkpoint / "latest").write_text(ELSEWHERE)
    _export_refused(checkpoint, tmp_path, capsys, str(checkpoint / META_FILE), "tag '' is not global_step<N>")


def test_a_tag_folder_symlinked_out_of_the_checkpoint_is_refused(checkpoint, tmp_path, capsys) -> None:
    other = tmp_path / "runs" / "other" / "ck" / "global_step240"
    edit_meta(checkpoint, tag="global_step240")
    os.symlink(other, checkpoint / "global_step240")
    _export_refused(checkpoint, tmp_path, capsys, "global_step240", "resolves outside")


def test_latest_leaving_the_checkpoint_is_refused_by_consolidation(checkpoint) -> None:
    (checkpoint / "latest").write_text(ELSEWHERE)
    with pytest.raises(ValueError, match=f"latest names {ELSEWHERE!r}, not global_step<N>"):
        consolidate(checkpoint)


@pytest.mark.parametrize(("kind", "needle"), [("sparse", "bytes, over the"), ("devzero", "not a regular file")])
def test_a_meta_of_gigabytes_is_refused_unread(checkpoint, tmp_path, kind, needle) -> None:
    meta = checkpoint / META_FILE
    if kind == "sparse":
        os.truncate(meta, 5 << 30)  # 5 GiB of holes after the real JSON: nothing on disk
    else:
        meta.unlink()
        os.symlink("/dev/zero", meta)
    run = run_verb("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), f"workdir={tmp_path}")
    print(f"\n[bounded] peak {run.peak_mb:.0f} MB, {run.seconds:.1f} s: {run.lines[-1:]}")
    assert run.code == 2 and len(run.lines) == 1, (run.code, run.stderr[-2000:])
    assert str(meta) in run.lines[0] and needle in run.lines[0]
    assert run.peak_mb < 1500


def test_eval_refuses_an_escaping_tag_before_ray_starts(checkpoint, tmp_path, capsys, monkeypatch) -> None:
    import jobs.evaluation.job

    def no_ray(*_args, **_kwargs):
        raise AssertionError("Ray started: the checkpoint was accepted")

    monkeypatch.setattr(jobs.evaluation.job, "ensure_ray", no_ray)
    shards = tmp_path / "shards"  # a valid manifest (eval reads it first); the tar is never opened here
    (shards / "test").mkdir(parents=True)
    (shards / "test" / "shard-000000.tar").write_bytes(bytes(1024))
    entry = {"name": "test/shard-000000.tar", "split": "test", "samples": 1, "bytes": 1024,
             "sha256": hashlib.sha256(bytes(1024)).hexdigest()}  # fmt: skip
    (shards / "manifest.json").write_text(json.dumps({"format_version": 2, "shards": [entry],
        "splits": {"test": {"samples": 1, "shards": 1}}, "config": {"num_points": 256}}))  # fmt: skip
    (shards / "sizes.json").write_text(json.dumps({entry["name"]: 1}))
    edit_meta(checkpoint, tag=ELSEWHERE)
    code = eval_main(["--checkpoint", str(checkpoint), "--shards", str(shards), "--no-mlflow",
                      "--out", str(tmp_path / "eval"), f"workdir={tmp_path}"])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "is not global_step<N>" in lines[0], (code, lines)


def test_the_run_folder_listing_reads_metas_through_the_validated_reader(checkpoint) -> None:
    run = checkpoint.parent
    registry = {"format": LOCAL_REGISTRY_FORMAT, "checkpoints": [{"checkpoint_dir_name": checkpoint.name}]}
    (run / LOCAL_REGISTRY_FILE).write_text(json.dumps(registry))
    assert [m["step"] for m in RunFolder(str(run.parent), run.name).registered()[1]] == [2]
    edit_meta(checkpoint, tag=5)
    with pytest.raises(ValueError, match="tag 5 is not global_step<N>") as error:
        RunFolder(str(run.parent), run.name).registered()
    assert META_FILE in str(error.value)
