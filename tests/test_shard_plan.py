"""The shard job's batching: the same output whatever the number of tasks, and the shard contents the list order
fixes (the rule the job had before its tasks were batched), from bad records and duplicates included."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from rawtree import corrupt, write_agpil

from jobs.verbs.shard import main as shard_main
from pipeline.formats import RawItem, list_items, parse_item
from pipeline.record import Rejection
from pipeline.shards.config import ShardConfig
from pipeline.shards.job import BANK_PARTS, run
from pipeline.shards.plan import BANK_CHUNK, POINT_FILE_COST, Part, group_parts

N = 64
PER_SHARD = 3


def _row(kind: str) -> dict:
    return RawItem("agpil", "train", kind, 1, ("x",)).to_row()


def _part(index: int, images: int = 0, clouds: int = 0) -> Part:
    return Part("shard", "train", index, tuple([_row("image")] * images + [_row("triplet")] * clouds))


def test_runs_are_contiguous_cover_every_part_once_and_start_with_the_heaviest():
    parts = [_part(0, images=1), _part(1, images=1), _part(2, images=1), _part(3, images=1), _part(4, clouds=1),
             _part(5, clouds=1)]  # fmt: skip
    assert [p.cost for p in parts] == [1, 1, 1, 1, POINT_FILE_COST, POINT_FILE_COST]
    # mean run (4 + 2 * 6) / 2 = 8: the middles of parts 0-4 lie at 0.5, 1.5, 2.5, 3.5 and 4 + 3 = 7 (run 0),
    # part 5's at 10 + 3 = 13 (run 1); run 0 costs 10, run 1 costs 6.
    runs = group_parts(parts, tasks=2)
    assert [[p.index for p in run] for run in runs] == [[0, 1, 2, 3, 4], [5]]
    assert [[p.index for p in run] for run in group_parts(parts, tasks=1)] == [[0, 1, 2, 3, 4, 5]]
    assert [[p.index for p in run] for run in group_parts(parts, tasks=100)] == [[4], [5], [0], [1], [2], [3]]
    assert group_parts([], tasks=4) == []


def test_runs_number_at_most_the_tasks_and_each_is_within_half_a_part_of_the_mean():
    # 20 parts of cost 1 in 8 tasks: mean 2.5, so runs alternate 2 and 3 parts (middles 0.5 and 1.5 in run 0,
    # 2.5 to 4.5 in run 1, ...); cutting wherever the next part would pass the mean gave 10 runs of 2.
    runs = group_parts([_part(i, images=1) for i in range(20)], tasks=8)
    assert sorted(len(run) for run in runs) == [2, 2, 2, 2, 3, 3, 3, 3]
    assert [p.index for run in sorted(runs, key=lambda run: run[0].index) for p in run] == list(range(20))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Bad records in both splits and the bank, a duplicated image line and a cloud listed twice; more clouds than
    one bank chunk."""
    tree = write_agpil(tmp_path_factory.mktemp("raw"), objects=("Bag", "Chair", "Mug"), n_train_images=20,
                       points_per_object=BANK_CHUNK // 2, n_test=11, num_points=N)  # fmt: skip
    corrupt(tree.files["image_train"][4], "truncate")
    corrupt(tree.files["points_test"][2], "nan")
    corrupt(tree.files["points_train"][5], "non_numeric")
    for name in ("Img_Train", "Description_Train"):
        lines = tree.lists[name].read_text().splitlines()
        tree.lists[name].write_text("\n".join([*lines[:7], lines[1], *lines[7:]]) + "\n")
    lines = tree.lists["Point_Train"].read_text().splitlines()
    tree.lists["Point_Train"].write_text("\n".join([*lines, lines[0]]) + "\n")
    return tree


def _shard(tree, out: Path, tasks: int) -> dict:
    cfg = ShardConfig(samples_per_shard=PER_SHARD, max_bad_fraction=1.0)
    return run(tree.root, "agpil", out, cfg, num_points=N, tasks=tasks)


def _tar_keys(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return list(dict.fromkeys(m.name.split(".", 1)[0] for m in tar.getmembers()))


def _assert_same_output(a: Path, a_manifest: dict, b: Path, b_manifest: dict) -> None:
    """Equal manifests but for the creation time, the same files, every one but the manifest byte for byte."""
    assert {k: v for k, v in a_manifest.items() if k != "created"} == {
        k: v for k, v in b_manifest.items() if k != "created"
    }
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in files:
        if name.name != "manifest.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not any(BANK_PARTS in str(name) for name in files)


def test_one_task_and_many_tasks_write_the_same_bytes(tree, tmp_path, ray_local):
    one = _shard(tree, tmp_path / "one", tasks=1)
    many = _shard(tree, tmp_path / "many", tasks=7)
    _assert_same_output(tmp_path / "one", one, tmp_path / "many", many)


def test_no_ray_writes_the_same_bytes_as_the_ray_job(tree, tmp_path, ray_local):
    with_ray = _shard(tree, tmp_path / "ray", tasks=3)
    cfg = ShardConfig(samples_per_shard=PER_SHARD, max_bad_fraction=1.0)
    here = run(tree.root, "agpil", tmp_path / "here", cfg, num_points=N, use_ray=False)
    assert here["quarantined"] > 0 and here["point_bank"]["clouds"] > BANK_CHUNK  # bad records, several chunks
    _assert_same_output(tmp_path / "ray", with_ray, tmp_path / "here", here)


def test_no_ray_with_an_address_is_one_error_line(tree, tmp_path, capsys):
    code = shard_main(["--source", str(tree.root), "--out", str(tmp_path / "out"), "--no-ray", "--address", "auto"])
    assert code == 2
    assert "--no-ray shards in this process: --address needs Ray" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shards_hold_the_list_order_cut_every_samples_per_shard_less_bad_and_duplicates(tree, tmp_path, ray_local):
    manifest = _shard(tree, tmp_path / "out", tasks=5)
    # The reference: one plain pass over the list, in order, the second occurrence of a key dropped.
    first_seen, expected, clouds, rejected = set(), {}, [], 0
    for item in list_items(tree.root, "agpil"):
        record = parse_item(tree.root, item, N)
        if record.key in first_seen:
            rejected += 1  # the duplicate
            continue
        first_seen.add(record.key)
        if item.kind == "points":
            clouds.append(record)
        else:
            expected.setdefault(record.split, []).append(record)
    shards = {s["name"]: s for s in manifest["shards"]}
    for split, records in expected.items():
        for index in range(-(-len(records) // PER_SHARD)):
            cut = records[index * PER_SHARD : (index + 1) * PER_SHARD]
            name = f"{split}/shard-{index:06d}.tar"
            keys = [r.key for r in cut if not isinstance(r, Rejection)]
            assert _tar_keys(tmp_path / "out" / name) == keys and shards[name]["samples"] == len(keys), name
            rejected += len(cut) - len(keys)
        assert manifest["splits"][split]["shards"] == -(-len(records) // PER_SHARD)
    assert len(shards) == sum(-(-len(r) // PER_SHARD) for r in expected.values())
    good_clouds = [r for r in clouds if not isinstance(r, Rejection)]
    assert manifest["point_bank"]["clouds"] == len(good_clouds) == 3 * BANK_CHUNK // 2 - 1
    rejected += len(clouds) - len(good_clouds)
    quarantine = (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()
    assert manifest["quarantined"] == len(quarantine) == rejected == 5  # 3 bad records, 2 duplicates
    assert json.loads((tmp_path / "out" / "sizes.json").read_text()) == {n: s["samples"] for n, s in shards.items()}


def test_no_ray_with_an_address_is_refused_before_anything_is_written(tree, tmp_path):
    cfg = ShardConfig(samples_per_shard=PER_SHARD)
    with pytest.raises(ValueError, match="use_ray=False runs every part in this process: address 'auto' needs Ray"):
        run(tree.root, "agpil", tmp_path / "out", cfg, num_points=N, address="auto", use_ray=False)
    assert list(tmp_path.iterdir()) == []
