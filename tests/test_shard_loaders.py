"""lma3d shard (a real local Ray) and the loaders: round trip, quarantine, determinism, rank/worker rules."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from rawtree import CORRUPTIONS, corrupt, write_agpil, write_laso, write_piad

from jobs.verbs.shard import main as shard_main
from pipeline.formats import iter_records
from pipeline.loaders import eval_loader, train_loader
from pipeline.loaders.config import DataConfig
from pipeline.loaders.reading import CorruptShard, ShardPolicy, iter_samples
from pipeline.loaders.transforms import normalize_points
from pipeline.record import Rejection
from pipeline.shards.config import ShardConfig
from pipeline.shards.job import run
from pipeline.shards.manifest import shard_entries

N = 64


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    tree = write_agpil(
        root, objects=("Bag", "Chair", "Mug"), n_train_images=24, points_per_object=4, n_test=10, num_points=N
    )
    out = tmp_path_factory.mktemp("shards") / "out"
    manifest = run(root, "agpil", out, ShardConfig(samples_per_shard=4), num_points=N, use_ray=False)
    return tree, out, manifest


def _members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read(), m.mtime) for m in tar.getmembers()]


def test_round_trip_gives_the_raw_values_for_every_sample(sharded):
    tree, out, manifest = sharded
    records = {r.key: r for r in iter_records(tree.root, "agpil", num_points=N)}
    seen = 0
    for entry in shard_entries(manifest, out):
        for sample in iter_samples(entry):
            record = records[sample["__key__"]]
            meta = json.loads(sample["json"])
            assert sample["jpg"] == record.image
            assert meta["instruction"] == record.instruction and meta["object"] == record.object
            if record.kind == "triplet":
                np.testing.assert_array_equal(np.load(io.BytesIO(sample["points.npy"])), record.xyz)
                np.testing.assert_array_equal(np.load(io.BytesIO(sample["label.npy"])), record.label_column())
            seen += 1
    assert seen == 24 + 10
    assert manifest["read"] == manifest["written"] + manifest["quarantined"] == 24 + 10 + 12


def test_tar_members_are_contiguous_dot_free_keys_with_no_wall_clock(sharded):
    _, out, manifest = sharded
    test_shard = out / next(s["name"] for s in manifest["shards"] if s["split"] == "test")
    names = [name for name, _, mtime in _members(test_shard) if mtime == 0]
    keys = [n.split(".", 1)[0] for n in names]
    assert len(names) == len(_members(test_shard))
    assert keys == sorted(keys, key=keys.index) and len(set(keys)) == len(keys) // 4  # 4 members per test sample


def test_rerun_gives_byte_identical_shards_and_existing_output_is_refused(sharded, tmp_path):
    tree, out, manifest = sharded
    with pytest.raises(FileExistsError):
        run(tree.root, "agpil", out, ShardConfig(samples_per_shard=4), num_points=N)
    again = run(tree.root, "agpil", tmp_path / "again", ShardConfig(samples_per_shard=4), num_points=N)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]
    assert (tmp_path / "again" / "points.arrow").read_bytes() == (out / "points.arrow").read_bytes()


IMAGE_CORRUPTIONS = ("delete", "directory", "binary", "truncate", "truncate_tail")
POINT_CORRUPTIONS = ("drop_column", "non_numeric", "nan", "label_range", "extra_line", "object_column")
TEXT_CORRUPTIONS = ("bad_json", "no_description", "empty_description")


def test_every_corruption_is_quarantined_with_its_reason_and_good_samples_arrive(tmp_path, ray_local):
    assert set(IMAGE_CORRUPTIONS + POINT_CORRUPTIONS + TEXT_CORRUPTIONS) | {"no_object_box"} == set(CORRUPTIONS)
    tree = write_agpil(tmp_path / "raw", objects=("Bag", "Chair", "Mug"), n_train_images=12, points_per_object=4,
                       n_test=8, num_points=N)  # fmt: skip
    broken = list(zip(tree.files["image_train"], IMAGE_CORRUPTIONS))
    broken += list(zip(tree.files["points_test"], POINT_CORRUPTIONS))
    broken += list(zip(tree.files["annotation_train"][6:], TEXT_CORRUPTIONS))
    for path, how in broken:
        corrupt(path, how)
    cfg = ShardConfig(samples_per_shard=4, max_bad_fraction=1.0)
    manifest = run(tree.root, "agpil", tmp_path / "out", cfg, num_points=N)
    lines = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert manifest["quarantined"] == len(lines) == len(broken)
    assert manifest["read"] == manifest["written"] + manifest["quarantined"]
    quarantined_sources = {s for line in lines for s in line["sources"]}
    assert {str(p.relative_to(tree.root)) for p, _ in broken} <= quarantined_sources
    assert all(":" in line["reason"] for line in lines)
    good = sum(1 for r in iter_records(tree.root, "agpil", num_points=N) if not isinstance(r, Rejection))
    assert manifest["written"] == good == tree.n_records - len(broken)


def test_cli_exits_nonzero_above_the_bad_fraction(tmp_path, ray_local, capsys):
    tree = write_agpil(tmp_path / "raw", n_train_images=6, points_per_object=3, n_test=2, num_points=N)
    corrupt(tree.files["image_train"][0], "truncate")
    code = shard_main(["--source", str(tree.root), "--out", str(tmp_path / "out"), "--num-points", str(N)])
    assert code == 1 and "max-bad-fraction" in capsys.readouterr().out


@pytest.mark.parametrize("writer", [write_piad, write_laso])
def test_piad_and_laso_trees_shard_the_same_way(tmp_path, ray_local, writer):
    tree = writer(tmp_path / "raw", num_points=N)
    manifest = run(tree.root, "auto", tmp_path / "out", ShardConfig(samples_per_shard=4), num_points=N)
    assert manifest["quarantined"] == 0 and manifest["written"] == tree.n_records


def test_real_piad_fixture_shards_and_reads_back(tmp_path, ray_local):
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "piad"
    root = tmp_path / "piad"
    for split in ("Train", "Test"):
        for kind in ("Img", "Box", "Point"):
            (root / f"{kind}_{split}.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "Img_Test.txt").write_text(str(fixture / "Img_Test_Bag_lift_1.jpg") + "\n")
    (root / "Box_Test.txt").write_text(str(fixture / "Img_Test_Bag_lift_1.json") + "\n")
    (root / "Point_Test.txt").write_text(str(fixture / "Point_Test_Bag_1.txt") + "\n")
    for kind in ("Img", "Box", "Point"):
        (root / f"{kind}_Train.txt").write_text("")
    manifest = run(root, "piad", tmp_path / "out", ShardConfig(samples_per_shard=4))
    assert manifest["written"] == 1 and manifest["quarantined"] == 0
    batch = next(iter(eval_loader(DataConfig(shards=str(tmp_path / "out")), 224, 0, 1)))
    assert batch["points"].shape == (1, 1, 3, 2048) and batch["object"] == ["Bag"] and batch["affordance"] == ["lift"]


def test_eval_loader_covers_the_test_set_once_across_ranks_with_padding_marked(sharded):
    _, out, manifest = sharded
    cfg = DataConfig(shards=str(out), eval_batch_size=3)
    for world in (1, 2, 3):
        keys, batches = [], []
        for rank in range(world):
            loader = eval_loader(cfg, 32, rank, world)
            got = list(loader)
            batches.append(len(got))
            assert len(got) == len(loader)
            keys += [k for b in got for k, v in zip(b["key"], b["valid"]) if v]
        assert len(set(batches)) == 1
        assert sorted(keys) == sorted(set(keys)) and len(keys) == manifest["splits"]["test"]["samples"]


def test_train_loader_gives_equal_batches_per_rank_from_the_manifest(sharded):
    _, out, _ = sharded
    cfg = DataConfig(shards=str(out), batch_size=4, num_workers=2, shuffle_buffer=5, pairs=3)
    counts = []
    for rank in range(2):
        loader = train_loader(cfg, 32, rank, 2, epoch=0)
        batches = list(loader)
        counts.append(len(batches))
        assert len(batches) == len(loader) == 24 // (2 * 4)
        b = batches[0]
        assert (
            b["image"].shape == (4, 3, 32, 32) and b["points"].shape == (4, 3, 3, N) and b["label"].shape == (4, 3, N)
        )
    assert counts[0] == counts[1]


def test_two_ranks_by_two_workers_read_disjoint_shards(sharded, tmp_path):
    tree, _, _ = sharded
    out = tmp_path / "eight"  # 24 samples in 8 shards: 2 shards for each of the 4 streams, exactly its quota
    run(tree.root, "agpil", out, ShardConfig(samples_per_shard=3), num_points=N)
    cfg = DataConfig(shards=str(out), batch_size=3, num_workers=2, shuffle_buffer=1)
    keys = [k for rank in range(2) for b in train_loader(cfg, 32, rank, 2, epoch=0) for k in b["key"]]
    assert len(keys) == len(set(keys)) == 24


def test_pairing_is_reproducible_without_replacement_and_changes_with_the_epoch(sharded):
    _, out, _ = sharded
    cfg = DataConfig(shards=str(out), batch_size=4, num_workers=0, shuffle_buffer=4, pairs=3)
    first = [b["points"] for b in train_loader(cfg, 32, 0, 1, epoch=0)]
    again = [b["points"] for b in train_loader(cfg, 32, 0, 1, epoch=0)]
    other = [b["points"] for b in train_loader(cfg, 32, 0, 1, epoch=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    for sample in first[0]:
        assert len({tuple(cloud.flatten()[:6].tolist()) for cloud in sample}) == 3


def test_points_are_centred_in_the_unit_sphere():
    xyz = np.random.default_rng(0).normal(5, 3, (100, 3)).astype(np.float32)
    out = normalize_points(xyz)
    assert out.shape == (3, 100) and np.allclose(out.mean(1), 0, atol=1e-5)
    assert np.sqrt((out**2).sum(0)).max() == pytest.approx(1.0)


def test_truncated_shard_is_a_corrupt_shard_named_in_one_line(sharded, tmp_path, caplog):
    # Before verification a truncated tar gave "1 bad" and its first samples; now the whole shard is corrupt.
    _, out, manifest = sharded
    entry = shard_entries(manifest, out)[0]
    broken = tmp_path / "train"
    broken.mkdir()
    data = entry.path.read_bytes()
    (broken / entry.path.name).write_bytes(data[: len(data) // 2 + 100])
    entry = type(entry)(**{**entry.__dict__, "path": broken / entry.path.name})
    with pytest.raises(CorruptShard, match=f"corrupt shard {entry.name}: ") as error:
        list(iter_samples(entry))
    assert "\n" not in str(error.value)
    skipping = ShardPolicy("skip")
    assert list(iter_samples(entry, skipping)) == [] and list(skipping.corrupt) == [entry.name]
    assert entry.name in caplog.text
