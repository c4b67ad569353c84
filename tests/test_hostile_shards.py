"""Hostile shard folders (issue 14, sections 2 and 3): every reader verifies what it reads, duplicates are
quarantined at shard time, and nothing outside the output folder changes.

Each test copies one shard folder built once for the module, breaks the copy as a hostile user would, and
runs the real reader on it (train loader, eval loader, the Ray Data test read, `lma3d inspect`, `lma3d shard`).
"""

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from rawtree import write_agpil

from jobs.verbs.inspect import main as inspect_main
from pipeline.loaders import eval_loader, train_loader
from pipeline.loaders.config import DataConfig
from pipeline.loaders.reading import CorruptShard, corrupt_shard_line
from pipeline.shards.config import ShardConfig
from pipeline.shards.job import run
from pipeline.shards.manifest import ManifestError, read_manifest

N = 64
TRAIN, TEST, CLOUDS_PER_OBJECT = 12, 8, 4


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    write_agpil(root / "raw", n_train_images=TRAIN, points_per_object=CLOUDS_PER_OBJECT, n_test=TEST, num_points=N)
    run(root / "raw", "agpil", root / "shards", ShardConfig(samples_per_shard=4), num_points=N, use_ray=False)
    return root / "shards"


@pytest.fixture()
def shards(built, tmp_path) -> Path:
    out = tmp_path / "shards"
    shutil.copytree(built, out)
    return out


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under root (except under `skip`): what "nothing changed" is compared on."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not (skip is not None and p.is_relative_to(skip))
    }


def manifest_of(shards: Path) -> dict:
    return json.loads((shards / "manifest.json").read_text())


def write_manifest(shards: Path, manifest: dict) -> None:
    (shards / "manifest.json").write_text(json.dumps(manifest, indent=2))


def entry(shards: Path, split: str, index: int = 0) -> dict:
    return [s for s in manifest_of(shards)["shards"] if s["split"] == split][index]


def member_offsets(tar_path: Path, suffix: str) -> list[tuple[int, int]]:
    """(data offset, size) of every member whose name ends with `suffix`."""
    with tarfile.open(tar_path) as tar:
        return [(m.offset_data, m.size) for m in tar.getmembers() if m.name.endswith(suffix)]


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def resign(shards: Path, name: str) -> None:
    """Record a shard's current sha256 and size in the manifest: a tamperer who also edits the manifest."""
    manifest = manifest_of(shards)
    for s in manifest["shards"]:
        if s["name"] == name:
            data = (shards / name).read_bytes()
            s["sha256"], s["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    write_manifest(shards, manifest)


def read_train(shards: Path, shuffle_buffer: int = 4, **data) -> list[dict]:
    cfg = DataConfig(shards=str(shards), batch_size=2, num_workers=0, shuffle_buffer=shuffle_buffer, pairs=2, **data)
    return list(train_loader(cfg, 32, 0, 1, epoch=0))


def read_test(shards: Path, **data) -> list[str]:
    cfg = DataConfig(shards=str(shards), eval_batch_size=3, **data)
    return [k for b in eval_loader(cfg, 32, 0, 1) for k, v in zip(b["key"], b["valid"]) if v]


@pytest.mark.slow  # reads through Ray Data, which starts a Ray
def test_flipped_bytes_in_test_arrays_fail_eval_and_the_ray_data_read_naming_the_shard(shards, tmp_path):
    name = entry(shards, "test")["name"]
    for offset, size in member_offsets(shards / name, ".label.npy"):  # every label array of the shard
        overwrite(shards / name, offset + size - 8, b"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f")  # 3.4e38: an impossible label
    before = snapshot(tmp_path)
    with pytest.raises(CorruptShard, match=f"^corrupt shard {name}: sha256 differs from the manifest$"):
        read_test(shards)

    from pipeline.loaders.raydata import read_test_shards

    with pytest.raises(Exception) as error:
        read_test_shards(shards).take_all()
    assert corrupt_shard_line(error.value) == f"corrupt shard {name}: sha256 differs from the manifest"
    assert snapshot(tmp_path) == before


def test_flipped_values_are_caught_at_read_even_with_a_matching_sha256(shards):
    name = entry(shards, "test")["name"]
    (offset, size), *_ = member_offsets(shards / name, ".label.npy")
    overwrite(shards / name, offset + size - 4, np.float32(6.49).tobytes())
    resign(shards, name)
    with pytest.raises(CorruptShard, match=f"corrupt shard {name}: sample .*: labels outside \\[0, 1\\]"):
        read_test(shards)
    (offset, size), *_ = member_offsets(shards / name, ".points.npy")
    overwrite(shards / name, offset + size - 4, np.float32(np.inf).tobytes())
    resign(shards, name)
    with pytest.raises(CorruptShard, match="non-finite coordinates"):
        read_test(shards)


def test_zeroed_jpeg_bytes_in_a_train_shard_fail_training_naming_the_shard(shards, tmp_path):
    name = entry(shards, "train", 1)["name"]
    offset, size = member_offsets(shards / name, ".jpg")[0]
    overwrite(shards / name, offset + size // 3, bytes(size // 3))
    before = snapshot(tmp_path)
    with pytest.raises(CorruptShard, match=f"^corrupt shard {name}: sha256 differs"):
        read_train(shards)
    assert snapshot(tmp_path) == before


def test_corrupted_points_arrow_fails_training_naming_it(shards, tmp_path):
    bank = shards / "points.arrow"
    overwrite(bank, bank.stat().st_size // 2, b"\x00\xff" * 64)
    before = snapshot(tmp_path)
    with pytest.raises(CorruptShard, match="^corrupt shard points.arrow: sha256 differs from the manifest$"):
        read_train(shards)
    assert snapshot(tmp_path) == before


def test_manifest_count_edits_are_refused(shards):
    manifest = manifest_of(shards)
    manifest["splits"]["train"]["samples"] = 4800  # the edit that made an epoch 800 batches instead of 80
    write_manifest(shards, manifest)
    with pytest.raises(ManifestError, match=f"splits.train.samples is 4800 but its shards hold {TRAIN}"):
        read_train(shards)
    # A consistent lie in manifest.json alone still disagrees with sizes.json ...
    manifest["splits"]["train"]["samples"] = TRAIN + 1
    next(s for s in manifest["shards"] if s["name"] == "train/shard-000000.tar")["samples"] += 1
    write_manifest(shards, manifest)
    with pytest.raises(ManifestError, match="sizes.json: train/shard-000000.tar holds 4 samples but manifest.json"):
        read_manifest(shards)
    # ... and one in both is caught by counting the shard's samples as it is read.
    sizes = json.loads((shards / "sizes.json").read_text())
    sizes["train/shard-000000.tar"] += 1
    (shards / "sizes.json").write_text(json.dumps(sizes))
    with pytest.raises(CorruptShard, match="train/shard-000000.tar: 4 samples, the manifest says 5"):
        read_train(shards)


def test_a_shard_name_escaping_the_folder_is_refused_in_one_line(shards, tmp_path, capsys):
    manifest = manifest_of(shards)
    name = manifest["shards"][0]["name"]
    manifest["shards"][0]["name"] = "../../../../etc/passwd"
    write_manifest(shards, manifest)
    before = snapshot(tmp_path)
    assert inspect_main([str(shards)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'../../../../etc/passwd' is not <split>/shard-NNNNNN.tar" in err
    with pytest.raises(ManifestError):
        read_train(shards)
    # a well-formed name that is a symlink out of the folder is refused too
    manifest["shards"][0]["name"] = name
    write_manifest(shards, manifest)
    (shards / name).unlink()
    (shards / name).symlink_to("/etc/passwd")
    with pytest.raises(ManifestError, match="resolves outside the shard folder"):
        read_manifest(shards)
    assert snapshot(tmp_path, skip=shards) == {k: v for k, v in before.items() if not k.startswith("shards/")}


def test_a_truncated_train_tar_fails_training_instead_of_losing_its_tail(shards):
    name = entry(shards, "train", 2)["name"]
    data = (shards / name).read_bytes()
    (shards / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptShard, match=f"^corrupt shard {name}: "):
        read_train(shards)


def test_a_flipped_tar_header_fails_training(shards):
    name = entry(shards, "train", 0)["name"]
    offset, _ = member_offsets(shards / name, ".json")[1]  # the second sample's json: its header precedes the data
    overwrite(shards / name, offset - 512 + 10, b"\xff")  # a byte of the member name in the header
    with pytest.raises(CorruptShard, match=f"^corrupt shard {name}: sha256 differs"):
        read_train(shards)


def test_a_repeated_key_in_a_tar_is_a_corrupt_shard_even_with_a_matching_sha256(shards):
    name = entry(shards, "test")["name"]
    with tarfile.open(shards / name) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first_key = members[0][0].name.split(".")[0]
    with tarfile.open(shards / name, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members[:-4] + members[:4]:  # the last sample replaced by a second copy of the first
            tar.addfile(info, io.BytesIO(data))
    resign(shards, name)
    with pytest.raises(CorruptShard, match=f"corrupt shard {name}: key {first_key} occurs twice"):
        read_test(shards)


def _reshard(tmp_path: Path, edit) -> tuple[dict, list[dict], Path]:
    raw = tmp_path / "raw"
    tree = write_agpil(raw, n_train_images=TRAIN, points_per_object=CLOUDS_PER_OBJECT, n_test=TEST, num_points=N)
    edit(tree)
    before = snapshot(tmp_path)
    manifest = run(raw, "agpil", tmp_path / "out", ShardConfig(samples_per_shard=4, max_bad_fraction=1.0), N)
    assert snapshot(tmp_path, skip=tmp_path / "out") == before
    lines = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert manifest["read"] == manifest["written"] + manifest["quarantined"] == manifest["written"] + len(lines)
    return manifest, lines, tmp_path / "out"


def _duplicate_line(list_file: Path, index: int, at: int | None = None) -> None:
    lines = list_file.read_text().splitlines()
    lines.insert(len(lines) if at is None else at, lines[index])
    list_file.write_text("\n".join(lines) + "\n")


def test_a_duplicated_list_line_is_quarantined_once_and_every_sample_survives(tmp_path):
    def edit(tree):
        for name in ("Img_Train", "Description_Train"):  # the aligned lists: one more (duplicate) item
            _duplicate_line(tree.lists[name], 2, at=5)

    manifest, lines, out = _reshard(tmp_path, edit)
    assert [line["reason"].split(":")[0] for line in lines] == ["duplicate"]
    assert manifest["read"] == TRAIN + 1 + TEST + 3 * CLOUDS_PER_OBJECT
    assert manifest["splits"]["train"]["samples"] == TRAIN
    keys = [k for b in read_train(out, shuffle_buffer=1) for k in b["key"]]
    assert len(keys) == len(set(keys)) == TRAIN  # one epoch in shard order: every sample once
    assert len(read_test(out)) == TEST


def test_a_cloud_listed_twice_is_stored_once(tmp_path):
    manifest, lines, out = _reshard(tmp_path, lambda tree: _duplicate_line(tree.lists["Point_Train"], 0))
    assert len(lines) == 1 and lines[0]["reason"].startswith("duplicate: Point_Train.txt:")
    assert manifest["point_bank"]["clouds"] == 3 * CLOUDS_PER_OBJECT
    assert all(count == CLOUDS_PER_OBJECT for _, count in manifest["point_bank"]["objects"].values())
    assert read_train(out)


def test_inspect_verifies_everything_and_lists_every_bad_shard_with_exit_2(shards, tmp_path, capsys):
    assert inspect_main([str(shards)]) == 0
    assert "verified 5 shards (20 samples)" in capsys.readouterr().out
    bad = [entry(shards, "train", 0)["name"], entry(shards, "test", 1)["name"], "points.arrow"]
    for name in bad:
        path = shards / name
        overwrite(path, path.stat().st_size // 2, b"\x13\x37")
    before = snapshot(tmp_path)
    assert inspect_main([str(shards), "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)["verification"]
    assert sorted(b["name"] for b in report["bad"]) == sorted(bad)
    assert report["samples"] == TRAIN + TEST - 4 - 4
    assert all(name in captured.err for name in bad) and captured.err.count("\n") == 1
    assert snapshot(tmp_path) == before


@pytest.mark.slow  # reads through Ray Data, which starts a Ray
def test_on_corrupt_shard_skip_drops_and_counts_the_bad_shards(shards):
    names = [entry(shards, "train", 1)["name"], entry(shards, "test", 0)["name"]]
    for name in names:
        overwrite(shards / name, 600, b"\x00" * 16)
    cfg = DataConfig(shards=str(shards), batch_size=2, num_workers=2, shuffle_buffer=4, pairs=2,
                     on_corrupt_shard="skip")  # fmt: skip
    loader = train_loader(cfg, 32, 0, 1, epoch=0)
    keys = [k for b in loader for k in b["key"]]
    assert len(keys) == len(loader) * 2 and loader.corrupt_shards == {names[0]}
    with tarfile.open(shards / names[0]) as tar:  # still a readable tar: only the checks tell it is corrupt
        skipped = {m.name.split(".")[0] for m in tar.getmembers()}
    assert not skipped & set(keys)
    test_keys = read_test(shards, on_corrupt_shard="skip")
    assert len(test_keys) == TEST - 4  # read = written - the skipped shard's samples

    from pipeline.loaders.raydata import read_test_shards

    assert len(read_test_shards(shards, "skip").take_all()) == TEST - 4


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory) -> Path:
    from tiny import NUM_POINTS

    from pipeline.synth.config import SynthConfig
    from pipeline.synth.generate import generate

    root = tmp_path_factory.mktemp("train")
    generate(SynthConfig(out=str(root / "raw"), train_images=24, test_samples=6, points_per_object=3,
                         num_points=NUM_POINTS, image_size=64))  # fmt: skip
    run(root / "raw", "agpil", root / "shards", ShardConfig(samples_per_shard=6), num_points=NUM_POINTS, use_ray=False)
    return root / "shards"


def _train_overrides(shards: Path, workdir: Path, *extra: str) -> list[str]:
    from tiny import tiny_overrides

    overrides = tiny_overrides(**{"data.shards": str(shards), "workdir": str(workdir)})
    return overrides + ["data.batch_size=2", "data.num_workers=0", "train.num_workers=1", "train.precision=fp32",
                        "train.max_steps=3", "train.log_every=1", "train.val_every=0", "mlflow.system_metrics=false",
                        *extra]  # fmt: skip


@pytest.mark.slow
def test_training_with_skip_logs_the_corrupt_shard_count_to_mlflow(train_shards, tmp_path):
    from mlflow.tracking import MlflowClient

    from jobs.experiment_config import ExperimentConfig
    from jobs.training.launcher import launch
    from jobs.typed_yaml import load

    shards = tmp_path / "shards"
    shutil.copytree(train_shards, shards)
    bad = entry(shards, "train", 2)["name"]
    overwrite(shards / bad, 700, b"\x00" * 32)
    overrides = _train_overrides(shards, tmp_path / "work", "data.on_corrupt_shard=skip", "train.num_workers=2")
    cfg = load(ExperimentConfig, None, overrides)  # 2 ranks: the count is gathered over both
    summary = launch(cfg, run_name="skip")
    assert summary.last_step == 3
    history = MlflowClient(cfg.tracking_uri).get_metric_history(summary.run_id, "data/corrupt_shards")
    assert sorted(m.step for m in history) == [1, 2, 3] and {m.value for m in history} <= {0.0, 1.0}
    assert history[-1].value == 1.0  # every shard is read to fill the 500-sample shuffle buffer: counted once


@pytest.mark.slow
def test_training_on_a_corrupt_shard_exits_2_with_one_line_naming_it(train_shards, tmp_path, capsys):
    from jobs.verbs.train import main as train_main

    shards = tmp_path / "shards"
    shutil.copytree(train_shards, shards)
    bad = entry(shards, "train", 0)["name"]
    overwrite(shards / bad, 700, b"\x00" * 32)
    before = snapshot(tmp_path, skip=tmp_path / "work")
    assert train_main(_train_overrides(shards, tmp_path / "work", "--run-name", "fail")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"lma3d train: error: corrupt shard {bad}: sha256 differs from the manifest"
    assert snapshot(tmp_path, skip=tmp_path / "work") == before


@pytest.mark.slow
def test_eval_on_flipped_test_arrays_exits_2_with_one_line_naming_the_shard(train_shards, tmp_path, capsys):
    import torch
    from tiny import tiny_model_config

    from jobs.verbs.eval import main as eval_main
    from model.lmaffordance3d import build_model
    from model.pretrained import save_pretrained

    shards = tmp_path / "shards"
    shutil.copytree(train_shards, shards)
    name = entry(shards, "test")["name"]
    for offset, size in member_offsets(shards / name, ".label.npy"):
        overwrite(shards / name, offset + size - 8, b"\x7f" * 8)
    torch.manual_seed(7)
    save_pretrained(build_model(tiny_model_config(), pretrained=False), tmp_path / "model")
    before = snapshot(tmp_path, skip=tmp_path / "out")
    args = ["--checkpoint", str(tmp_path / "model"), "--shards", str(shards), "--out", str(tmp_path / "out"),
            "--no-mlflow", f"workdir={tmp_path / 'work'}", "eval.num_actors=1", "eval.cpus_per_actor=0.5"]  # fmt: skip
    assert eval_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"lma3d eval: error: corrupt shard {name}: sha256 differs from the manifest"
    assert not (tmp_path / "out" / "metrics.json").exists()  # no MAE of 6.49, no metrics at all
    assert snapshot(tmp_path, skip=tmp_path / "out") == before
