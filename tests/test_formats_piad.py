"""PIAD reader: the real IAGNet sample parsed to known values, boxes, the instruction template, every code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rawtree import write_piad
from test_formats_agpil import BREAKS, Break, check_break

from pipeline.formats import detect_format, iter_records
from pipeline.formats.piad import instruction
from pipeline.record import Record, Rejection

FIXTURE = Path(__file__).parent / "fixtures" / "piad"
N = 16


def piad_root_for_fixture(root: Path, layout: bool) -> Path:
    """A PIAD root whose test lists hold the one real sample: copies in the Img/Point/Box layout (relative
    entries) or absolute paths to the fixture files; the train lists are empty."""
    root.mkdir(parents=True)
    names = {"Img": "Img_Test_Bag_lift_1.jpg", "Point": "Point_Test_Bag_1.txt", "Box": "Img_Test_Bag_lift_1.json"}
    folders = {"Img": "Img/Test/Bag/lift", "Point": "Point/Test/Bag", "Box": "Box/Test/Bag/lift"}
    for kind, name in names.items():
        entry = str(FIXTURE / name)
        if layout:
            (root / folders[kind]).mkdir(parents=True)
            shutil.copyfile(FIXTURE / name, root / folders[kind] / name)
            entry = f"{folders[kind]}/{name}"
        (root / f"{kind}_Test.txt").write_text(entry + "\n")
        (root / f"{kind}_Train.txt").write_text("")
    return root


@pytest.mark.parametrize("layout", [True, False], ids=["copied-into-layout", "absolute-paths"])
def test_real_sample_parses_to_its_known_values(tmp_path: Path, layout: bool) -> None:
    root = piad_root_for_fixture(tmp_path / "piad", layout)
    assert detect_format(root) == "piad"
    [record] = list(iter_records(root))
    assert isinstance(record, Record), record
    assert (record.key, record.kind, record.split) == ("Test_Bag_lift_1", "triplet", "test")
    assert (record.object, record.affordance) == ("Bag", "lift")
    assert record.shape_id == "cbc1512b28e9ed382bef451de0ed6949"
    assert record.xyz.shape == (2048, 3) and record.labels.shape == (2048, 17)
    np.testing.assert_allclose(record.xyz[0], [-0.103517324, -0.31549773, -0.049982727], rtol=1e-6)
    np.testing.assert_allclose(record.labels[0, :4], [0.37299466, 0.58815277, 0.0, 0.029272454], rtol=1e-6)
    assert not record.labels[0, 4:].any()
    # docs/original.md §2.2, counted from IAGNet's Demo file: lift has 128 non-zero points, 29 of them >= 0.5
    lift = record.label_column()
    assert (np.count_nonzero(lift), int((lift >= 0.5).sum())) == (128, 29)
    assert record.extra["image"] == {"width": 408, "height": 612, "mode": "RGB", "format": "JPEG"}
    assert record.image == (FIXTURE / "Img_Test_Bag_lift_1.jpg").read_bytes()
    boxes = record.extra["boxes"]
    np.testing.assert_allclose(
        boxes["subject"], [122.42176870748301, 43.53741496598639, 355.7551020408164, 599.3197278911565]
    )
    np.testing.assert_allclose(
        boxes["object"], [123.10204081632656, 320.40816326530614, 233.98639455782313, 455.78231292517006]
    )
    assert record.instruction == "Where would you lift this bag?"


def test_instruction_template_spells_wrapgrasp_and_splits_camel_case_objects() -> None:
    assert instruction("TrashCan", "wrapgrasp") == "Where would you wrap your hand around this trash can?"
    assert instruction("StorageFurniture", "open") == "Where would you open this storage furniture?"
    assert instruction("Mug", "pour") == "Where would you pour this mug?"


def test_box_corners_are_sorted_and_a_missing_subject_is_zero(tmp_path: Path) -> None:
    tree = write_piad(tmp_path / "raw", num_points=N)
    box = tree.files["annotation_train"][0]
    box.write_text(json.dumps({"shapes": [{"label": "object", "points": [[20, 15], [4, 3]]}]}))
    record = next(r for r in iter_records(tree.root, num_points=N) if r.key == tree.expected_keys["image"][0])
    assert record.extra["boxes"] == {"subject": [0.0, 0.0, 0.0, 0.0], "object": [4.0, 3.0, 20.0, 15.0]}


def test_non_finite_box_corner_is_rejected(tmp_path: Path) -> None:
    tree = write_piad(tmp_path / "raw", num_points=N)
    tree.files["annotation_test"][1].write_text('{"shapes": [{"label": "object", "points": [[NaN, 1], [2, 3]]}]}')
    rejections = [r for r in iter_records(tree.root, num_points=N) if isinstance(r, Rejection)]
    assert [(r.key, r.reason.split(":")[0]) for r in rejections] == [(tree.expected_keys["triplet"][1], "non_finite")]
    assert "Box_Test.txt line 2" in rejections[0].reason


def test_valid_tree_yields_image_point_and_triplet_records_with_boxes(tmp_path: Path) -> None:
    tree = write_piad(tmp_path / "raw", num_points=N)
    records = list(iter_records(tree.root, num_points=N))
    assert all(isinstance(r, Record) for r in records)
    for kind, keys in tree.expected_keys.items():
        assert [r.key for r in records if r.kind == kind] == keys
    assert all(set(r.extra["boxes"]) == {"subject", "object"} for r in records if r.kind != "points")


@pytest.mark.parametrize("brk", [b for b in BREAKS if "piad" in b.formats], ids=lambda b: b.name)
def test_broken_file_is_rejected_with_its_code_and_the_others_arrive(tmp_path: Path, brk: Break) -> None:
    check_break(write_piad(tmp_path / "raw", num_points=N), brk)
