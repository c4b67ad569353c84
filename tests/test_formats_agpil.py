"""AGPIL reader: records from a valid tree, one rejection per broken file (every code), list-level errors.

BREAKS (also used by test_formats_piad.py) breaks a default tree from tests/rawtree.py one way each.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rawtree import RawTree, corrupt, move_listed, set_list_entry, write_agpil, write_image_point_tree

from pipeline.formats import RawItem, detect_format, iter_records, list_items, parse_item
from pipeline.formats.common import CODES, POINT_LINE_BYTES
from pipeline.record import Record, Rejection

N = 16  # points per cloud in these tests


@dataclass(frozen=True)
class Break:
    """`apply(tree)` breaks a default tree and returns (key of the expected rejection, the expected
    record key that therefore does not arrive)."""

    name: str
    code: str
    apply: Callable[[RawTree], tuple[str, str]]
    formats: tuple[str, ...] = ("agpil", "piad")


def _file(files: str, index: int, how: str) -> Callable[[RawTree], tuple[str, str]]:
    kind = {"image_train": "image", "annotation_train": "image", "points_train": "points"}.get(files, "triplet")

    def apply(tree: RawTree) -> tuple[str, str]:
        corrupt(tree.files[files][index], how)
        return tree.expected_keys[kind][index], tree.expected_keys[kind][index]

    return apply


def _move(list_name: str, index: int, to: str, key: str | None = None) -> Callable[[RawTree], tuple[str, str]]:
    kind = "points" if list_name == "Point_Train" else "image"

    def apply(tree: RawTree) -> tuple[str, str]:
        move_listed(tree, list_name, index, to)
        return key or tree.expected_keys[kind][index], tree.expected_keys[kind][index]

    return apply


def _oversize(tree: RawTree) -> tuple[str, str]:
    """Train cloud 2 padded with blank lines past N lines x POINT_LINE_BYTES: refused from its size."""
    path = tree.files["points_train"][2]
    with open(path, "a") as f:
        f.write("\n" * (tree.num_points * POINT_LINE_BYTES))
    return tree.expected_keys["points"][2], tree.expected_keys["points"][2]


def _escape(tree: RawTree) -> tuple[str, str]:
    set_list_entry(tree.lists["Img_Train"], 0, "../elsewhere/Img/Train/Bag/grasp/Img_Train_Bag_grasp_1.jpg")
    return tree.expected_keys["image"][0], tree.expected_keys["image"][0]


def _cross_objects(tree: RawTree) -> tuple[str, str]:
    """Test triplet 0 (a Bag image) gets triplet 1's Chair cloud."""
    set_list_entry(tree.lists["Point_Test"], 0, str(tree.files["points_test"][1].relative_to(tree.root)))
    return tree.expected_keys["triplet"][0], tree.expected_keys["triplet"][0]


SOFA_IMAGE = "Img/Train/Sofa/sit/Img_Train_Sofa_sit_2.jpg"
SOFA_CLOUD = "Point/Train/Sofa/Point_Train_Sofa_1.txt"
FLY_IMAGE = "Img/Train/Bag/fly/Img_Train_Bag_fly_1.jpg"
MISFILED_IMAGE = "Img/Train/Chair/grasp/Img_Train_Bag_grasp_1.jpg"
BREAKS: tuple[Break, ...] = (
    Break("missing image", "missing_file", _file("image_train", 1, "delete")),
    Break("missing train cloud", "missing_file", _file("points_train", 4, "delete")),
    Break("missing test cloud", "missing_file", _file("points_test", 2, "delete")),
    Break("missing annotation", "missing_file", _file("annotation_train", 0, "delete")),
    Break("image is a folder", "unreadable_file", _file("image_train", 2, "directory")),
    Break("point file not text", "unreadable_file", _file("points_train", 0, "binary")),
    Break("jpeg truncated after its headers", "bad_image", _file("image_train", 3, "truncate_tail")),
    Break("jpeg cut in half", "bad_image", _file("image_test", 1, "truncate")),
    Break("garbage test image", "bad_image", _file("image_test", 0, "binary")),
    Break("short row", "bad_columns", _file("points_train", 5, "drop_column")),
    Break("non-numeric value", "bad_columns", _file("points_test", 1, "non_numeric")),
    Break("truncated point file", "bad_point_count", _file("points_train", 6, "truncate")),
    Break("one point too many", "bad_point_count", _file("points_test", 3, "extra_line")),
    Break("point file over its size limit", "too_large", _oversize),
    Break("nan coordinate", "non_finite", _file("points_train", 7, "nan")),
    Break("label above one", "label_range", _file("points_test", 0, "label_range")),
    Break("object column disagrees with name", "mismatch", _file("points_train", 8, "object_column")),
    Break("test image and cloud objects differ", "mismatch", _cross_objects),
    Break("unknown object image", "unknown_object", _move("Img_Train", 1, SOFA_IMAGE, "Train_Sofa_sit_2")),
    Break("unknown object cloud", "unknown_object", _move("Point_Train", 0, SOFA_CLOUD, "Train_Sofa_1")),
    Break("unknown affordance", "unknown_affordance", _move("Img_Train", 0, FLY_IMAGE, "Train_Bag_fly_1")),
    Break("name breaks the pattern", "bad_name", _move("Img_Train", 0, "Img/photo_1.jpg", "Train_ImgTrain_line1")),
    Break("folder disagrees with name", "bad_name", _move("Img_Train", 0, MISFILED_IMAGE)),
    Break("split disagrees with list", "bad_name", _move("Point_Train", 3, "Point_Test_Chair_7.txt", "Train_Chair_7")),
    Break("path escapes the root", "path_escape", _escape),
    Break("no Description key", "empty_instruction", _file("annotation_train", 1, "no_description"), ("agpil",)),
    Break("empty Description", "empty_instruction", _file("annotation_test", 2, "empty_description"), ("agpil",)),
    Break("unparsable annotation JSON", "bad_json", _file("annotation_train", 2, "bad_json")),
    Break("no object box", "bad_json", _file("annotation_test", 0, "no_object_box"), ("piad",)),
)  # fmt: skip


def check_break(tree: RawTree, brk: Break) -> None:
    """Exactly one rejection with the break's code and key; every other expected record still arrives."""
    rejected_key, lost_key = brk.apply(tree)
    results = list(iter_records(tree.root, num_points=tree.num_points))
    rejections = [r for r in results if isinstance(r, Rejection)]
    assert [(r.key, r.reason.split(":")[0]) for r in rejections] == [(rejected_key, brk.code)]
    assert ".txt line " in rejections[0].reason  # names the list file and line
    expected = [k for keys in tree.expected_keys.values() for k in keys if k != lost_key]
    assert sorted(r.key for r in results if isinstance(r, Record)) == sorted(expected)


@pytest.mark.parametrize("brk", [b for b in BREAKS if "agpil" in b.formats], ids=lambda b: b.name)
def test_broken_file_is_rejected_with_its_code_and_the_others_arrive(tmp_path: Path, brk: Break) -> None:
    check_break(write_agpil(tmp_path / "raw", num_points=N), brk)


def test_breaks_cover_every_rejection_code() -> None:
    # parse_error is the guard for exceptions no check anticipates: tests/test_hostile_records.py covers it
    assert {b.code for b in BREAKS} | {"parse_error"} == set(CODES)


def test_valid_tree_yields_every_record_with_kind_key_and_fields(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    records = list(iter_records(tree.root, num_points=N))
    assert all(isinstance(r, Record) for r in records)
    for kind, keys in tree.expected_keys.items():
        assert [r.key for r in records if r.kind == kind] == keys
    image = next(r for r in records if r.kind == "image")
    assert (image.split, image.object, image.affordance) == ("train", "Bag", "grasp")
    assert image.instruction == "Show me where to grasp the bag."
    assert Image.open(io.BytesIO(image.image)).size == (32, 24) and image.extra["image"]["format"] == "JPEG"
    cloud = next(r for r in records if r.kind == "points")
    assert cloud.xyz.shape == (N, 3) and cloud.labels.shape == (N, 17) and cloud.xyz.dtype == np.float32
    triplet = next(r for r in records if r.kind == "triplet")
    assert triplet.split == "test" and triplet.labels.shape == (N, 17) and triplet.image is not None
    assert triplet.label_column().shape == (N,)


def test_point_values_equal_the_file_text(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    path = tree.files["points_train"][4]  # Chair cloud 2
    table = np.loadtxt(path, usecols=range(2, 22))
    record = next(r for r in iter_records(tree.root, num_points=N) if r.key == "Train_Chair_2")
    np.testing.assert_allclose(record.xyz, table[:, :3], rtol=0, atol=1e-6)
    np.testing.assert_allclose(record.labels, table[:, 3:], rtol=0, atol=1e-6)
    assert record.shape_id == path.read_text().split()[0] and record.object == "Chair"


def test_absolute_list_entries_are_read(tmp_path: Path) -> None:
    tree = write_image_point_tree(tmp_path / "raw", "agpil", num_points=N, absolute=True)
    assert all(isinstance(r, Record) for r in iter_records(tree.root, num_points=N))


def test_unknown_prefix_is_retried_from_the_layout_folder(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    set_list_entry(tree.lists["Img_Train"], 0, "Data/Full_view/Seen/Img/Train/Bag/grasp/Img_Train_Bag_grasp_1.jpg")
    assert all(isinstance(r, Record) for r in iter_records(tree.root, num_points=N))


def test_blank_lines_in_lists_are_skipped(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    text = tree.lists["Point_Train"].read_text()
    tree.lists["Point_Train"].write_text("\n" + text.replace("\n", "\n\n", 2))
    assert len([r for r in iter_records(tree.root, num_points=N) if isinstance(r, Record)]) == tree.n_records


def test_missing_root_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_items(tmp_path / "nowhere", "agpil")


def test_missing_list_file_names_it(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    tree.lists["Point_Test"].unlink()
    with pytest.raises(FileNotFoundError, match="Point_Test.txt"):
        list_items(tree.root)


def test_aligned_lists_of_different_lengths_name_both_files_and_counts(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N, n_test=4)
    lines = tree.lists["Description_Test"].read_text().splitlines()
    tree.lists["Description_Test"].write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(ValueError, match=r"Img_Test.txt \(4 entries\).*Description_Test.txt \(3 entries\)"):
        list_items(tree.root)


def test_detect_format_tells_formats_apart_and_refuses_an_unknown_root(tmp_path: Path) -> None:
    assert detect_format(write_agpil(tmp_path / "a", num_points=N, n_train_images=1, n_test=1).root) == "agpil"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format(tmp_path / "empty")


def test_raw_item_round_trips_through_a_ray_row(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    for item in list_items(tree.root):
        row = item.to_row()
        assert all(isinstance(v, str | int | bytes | list) for v in row.values())
        again = RawItem.from_row(row)
        assert again == item
        assert parse_item(tree.root, again, N).key == parse_item(tree.root, item, N).key
