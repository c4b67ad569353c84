"""Dataset statistics (pipeline/stats.py) and `lma3d inspect` (tables, JSON, manifest folders, exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rawtree import RawTree, corrupt, write_agpil, write_laso

from jobs.verbs.inspect import main
from pipeline.names import AFFORDANCE_INDEX
from pipeline.stats import dataset_stats

N = 16


@pytest.fixture()
def broken_tree(tmp_path: Path) -> RawTree:  # noqa: ANN201
    """Default AGPIL tree (6 train images, 3 clouds each of Bag/Chair/Mug, 4 test triplets) with train image 0
    (Bag grasp) truncated and train cloud 1 (Bag 2) holding a NaN."""
    tree = write_agpil(tmp_path / "raw", num_points=N)
    corrupt(tree.files["image_train"][0], "truncate_tail")
    corrupt(tree.files["points_train"][1], "nan")
    return tree


def test_stats_count_records_per_split_kind_object_and_affordance(broken_tree: RawTree) -> None:
    stats = dataset_stats(broken_tree.root, num_points=N)
    assert stats["format"] == "agpil" and stats["items"] == 19
    assert stats["records"] == {"test": {"triplet": 4}, "train": {"image": 5, "points": 8}}
    assert stats["total_records"] == 17 and stats["total_rejections"] == 2
    # good images: Chair sit, Mug wrapgrasp, Bag lift, Chair move, Mug grasp
    # tests: Bag grasp, Chair sit, Mug wrapgrasp, Bag lift
    assert stats["objects"]["Bag"] == {"image": 1, "points": 2, "triplet": 2}
    assert stats["objects"]["Chair"] == {"image": 2, "points": 3, "triplet": 1}
    assert stats["affordances"]["sit"] == {"image": 1, "triplet": 1}
    assert stats["affordances"]["grasp"] == {"image": 1, "triplet": 1}


def test_stats_count_rejections_per_code_with_examples(broken_tree: RawTree) -> None:
    stats = dataset_stats(broken_tree.root, num_points=N)
    assert stats["rejections"] == {"bad_image": 1, "non_finite": 1}
    assert [r["key"] for r in stats["rejection_examples"]] == ["Train_Bag_grasp_1", "Train_Bag_2"]
    assert stats["duplicate_keys"] == 0


def test_point_checks_match_an_independent_read_of_the_good_files(broken_tree: RawTree) -> None:
    stats = dataset_stats(broken_tree.root, num_points=N)
    good = [p for i, p in enumerate(broken_tree.files["points_train"]) if i != 1] + broken_tree.files["points_test"]
    tables = [np.loadtxt(p, usecols=range(2, 22)) for p in good]
    xyz = np.concatenate([t[:, :3] for t in tables])
    assert stats["points"]["point_counts"] == {str(N): 12}
    np.testing.assert_allclose(stats["points"]["xyz_min"], xyz.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(stats["points"]["xyz_max"], xyz.max(axis=0), atol=1e-6)
    # test triplet GT = the image's affordance column of the test cloud (Bag grasp, Chair sit, Mug wrapgrasp, Bag lift)
    for table, affordance in zip(tables[-4:], ["grasp", "sit", "wrapgrasp", "lift"]):
        fraction = np.mean(table[:, 3 + AFFORDANCE_INDEX[affordance]] >= 0.5)
        summary = stats["points"]["triplet_positive_fraction"][affordance]
        assert summary["n"] == 1 and summary["mean"] == pytest.approx(fraction)
    # bank: Bag clouds support grasp/lift/contain/open; one of the three is rejected
    assert stats["points"]["bank_positive_fraction"]["open"]["n"] == 2
    assert "sit" in stats["points"]["bank_positive_fraction"] and "cut" not in stats["points"]["bank_positive_fraction"]


def test_image_checks_count_sizes_modes_and_formats(broken_tree: RawTree) -> None:
    images = dataset_stats(broken_tree.root, num_points=N)["images"]
    assert images == {"images": 9, "sizes": {"32x24": 5, "40x30": 4}, "modes": {"RGB": 9}, "formats": {"JPEG": 9}}


def test_laso_stats_have_triplets_and_no_images(tmp_path: Path) -> None:
    stats = dataset_stats(write_laso(tmp_path / "laso", num_points=N).root, num_points=N)
    assert stats["records"] == {"test": {"triplet": 2}, "train": {"triplet": 4}, "val": {"triplet": 2}}
    assert stats["images"]["images"] == 0 and stats["points"]["clouds"] == 8


def test_cli_prints_tables_and_exits_0_despite_rejections(
    broken_tree: RawTree, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(broken_tree.root), "--num-points", str(N)]) == 0
    out = capsys.readouterr().out
    assert "records per split" in out and "rejections per reason" in out
    assert "bad_image" in out and "Img_Train.txt line 1" in out


def test_cli_json_is_the_stats_document(broken_tree: RawTree, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(broken_tree.root), "--format", "agpil", "--num-points", str(N), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["records"] == {"test": {"triplet": 4}, "train": {"image": 5, "points": 8}}
    assert document["rejections"] == {"bad_image": 1, "non_finite": 1}


def test_cli_missing_root_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]


def test_cli_missing_list_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    tree.lists["Img_Test"].unlink()
    assert main([str(tree.root), "--num-points", str(N)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Img_Test.txt" in err[0]


def test_cli_misaligned_lists_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    tree.lists["Description_Train"].write_text("")
    assert main([str(tree.root), "--num-points", str(N)]) == 2
    assert "Description_Train.txt (0 entries)" in capsys.readouterr().err


def test_cli_reads_a_shard_folder_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A shard folder is now verified against its manifest's schema and hashes, so it is a real one (written
    # with the shard job's tar writer), not a free-form JSON document.
    from pipeline.shards.samples import write_tar

    meta = json.dumps({"object": "Bag", "affordance": "grasp", "instruction": "grasp it"}).encode()
    samples = [(f"Train_Bag_grasp_{i}", {"jpg": b"\xff\xd8 not decoded by inspect", "json": meta}) for i in (1, 2)]
    size, sha = write_tar(tmp_path / "train" / "shard-000000.tar", samples)
    counts = {"train": {"samples": 2, "shards": 1, "objects": {"Bag": 2}, "affordances": {"grasp": 2}}}
    manifest = {
        "format_version": 2, "source_format": "agpil", "config": {"num_points": 16}, "splits": counts,
        "point_bank": None, "read": 2, "written": 2, "quarantined": 0,
        "shards": [{"name": "train/shard-000000.tar", "split": "train", "samples": 2, "sha256": sha, "bytes": size}],
    }  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "sizes.json").write_text(json.dumps({"train/shard-000000.tar": 2}))
    assert main([str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == counts
    assert summary["shard_totals"] == {"train": {"shards": 1, "samples": 2, "bytes": size}}
    assert summary["verification"] == {"shards": 1, "samples": 2, "bad": [], "point_bank": None}
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train.samples" in out and "shard totals" in out
