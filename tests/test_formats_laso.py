"""LASO reader: one triplet per annotation, questions, every applicable code, and the restricted unpickler."""

from __future__ import annotations

import csv
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from rawtree import RawTree, edit_laso, edit_laso_shape, write_laso

from pipeline.formats import RawItem, detect_format, iter_records, list_items, parse_item
from pipeline.formats.laso import UnsafePickleError
from pipeline.record import Record, Rejection

N = 16


def _pickled(path: Path) -> object:
    return pickle.loads(path.read_bytes())


def test_valid_tree_yields_one_triplet_per_annotation_with_mask_and_shape(tmp_path: Path) -> None:
    tree = write_laso(tmp_path / "laso", num_points=N)
    assert detect_format(tree.root) == "laso"
    records = list(iter_records(tree.root, num_points=N))
    assert [r.key for r in records] == tree.expected_keys["triplet"]
    annotations, shapes = _pickled(tree.lists["anno_train"]), _pickled(tree.lists["objects_train"])
    for index, record in enumerate(r for r in records if r.split == "train"):
        assert isinstance(record, Record) and record.kind == "triplet" and record.image is None
        np.testing.assert_array_equal(record.labels, annotations[index]["mask"])
        np.testing.assert_array_equal(record.xyz, shapes[annotations[index]["shape_id"]])
        assert record.shape_id == annotations[index]["shape_id"]
    mug = records[2]  # train annotation 2: class 'mug', affordance 'wrap_grasp'
    assert (mug.key, mug.object, mug.affordance) == ("Train_Mug_wrapgrasp_2", "Mug", "wrapgrasp")
    assert mug.label_column().shape == (N,)


def test_val_and_test_ask_question0_and_train_a_fixed_one_of_1_to_14(tmp_path: Path) -> None:
    tree = write_laso(tmp_path / "laso", num_points=N, per_split={"train": 9, "val": 2, "test": 2})
    first = list(iter_records(tree.root, num_points=N))
    again = list(iter_records(tree.root, num_points=N))
    for record, repeat in zip(first, again):
        assert len(record.extra["questions"]) == 15
        assert record.instruction == record.extra["questions"][record.extra["question_index"]]
        assert record.instruction == repeat.instruction
        if record.split == "train":
            assert 1 <= record.extra["question_index"] <= 14
        else:
            assert record.extra["question_index"] == 0 and record.instruction.startswith("Q0:")


def test_pull_is_accepted_as_a_laso_affordance(tmp_path: Path) -> None:
    tree = write_laso(tmp_path / "laso", num_points=N)
    edit_laso(tree, "val", 1, affordance="pull")  # val annotation 1 is a Chair
    with open(tree.lists["questions"], "a", newline="") as f:
        csv.writer(f).writerow(["chair", "pull", *(f"Q{i}: pull it" for i in range(15))])
    record = next(r for r in iter_records(tree.root, num_points=N) if r.key == "Val_Chair_pull_1")
    assert isinstance(record, Record) and record.instruction == "Q0: pull it"


def _nan_shape(tree: RawTree) -> None:
    xyz = _pickled(tree.lists["objects_train"])["train-chair-0"].copy()
    xyz[3, 1] = np.nan
    edit_laso_shape(tree, "train", "train-chair-0", xyz)


LASO_BREAKS: list[tuple[str, str, Callable[[RawTree], None], list[str]]] = [
    ("unknown class", "unknown_object", lambda t: edit_laso(t, "train", 0, class_="sofa"), ["Train_sofa_grasp_0"]),
    (
        "unknown affordance",
        "unknown_affordance",
        lambda t: edit_laso(t, "test", 1, affordance="fly"),
        ["Test_Chair_fly_1"],
    ),
    (
        "annotation lacks its mask",
        "bad_columns",
        lambda t: edit_laso(t, "val", 0, drop=("mask",)),
        ["Val_annoval_line0"],
    ),
    (
        "mask of the wrong length",
        "bad_point_count",
        lambda t: edit_laso(t, "train", 1, mask=np.zeros(N - 1, np.float32)),
        ["Train_Chair_sit_1"],
    ),
    (
        "mask above one",
        "label_range",
        lambda t: edit_laso(t, "train", 2, mask=np.full(N, 1.5, np.float32)),
        ["Train_Mug_wrapgrasp_2"],
    ),
    ("nan coordinate", "non_finite", _nan_shape, ["Train_Chair_sit_1"]),
    (
        "shape missing from objects pickle",
        "mismatch",
        lambda t: edit_laso_shape(t, "train", "train-bag-0", None),
        ["Train_Bag_grasp_0", "Train_Bag_lift_3"],
    ),
    ("no question row", "empty_instruction", lambda t: edit_laso(t, "test", 0, affordance="pull"), ["Test_Bag_pull_0"]),
]


@pytest.mark.parametrize("name, code, apply, keys", LASO_BREAKS, ids=[b[0] for b in LASO_BREAKS])
def test_broken_annotation_is_rejected_with_its_code_and_the_others_arrive(
    tmp_path: Path, name: str, code: str, apply: Callable[[RawTree], None], keys: list[str]
) -> None:
    tree = write_laso(tmp_path / "laso", num_points=N)
    apply(tree)
    results = list(iter_records(tree.root, num_points=N))
    rejections = [r for r in results if isinstance(r, Rejection)]
    assert [(r.key, r.reason.split(":")[0]) for r in rejections] == [(k, code) for k in keys]
    assert all("anno_" in r.reason and ".pkl" in r.reason for r in rejections)
    assert len([r for r in results if isinstance(r, Record)]) == tree.n_records - len(keys)


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("which", ["os.system", "builtins.eval"])
def test_pickle_asking_for_a_forbidden_global_is_refused_and_never_runs(tmp_path: Path, which: str) -> None:
    tree = write_laso(tmp_path / "laso", num_points=N)
    marker = tmp_path / "executed"
    payload = _RunsACommand(marker) if which == "os.system" else _CallsEval()
    tree.lists["anno_val"].write_bytes(pickle.dumps([payload]))
    forbidden = f"{os.system.__module__}.system" if which == "os.system" else "builtins.eval"
    with pytest.raises(UnsafePickleError, match=rf"anno_val\.pkl.*forbidden global {forbidden}"):
        list_items(tree.root)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_numpy_pickles_of_every_protocol_load(tmp_path: Path, protocol: int) -> None:
    tree = write_laso(tmp_path / "laso", num_points=N, protocol=protocol)
    assert all(isinstance(r, Record) for r in iter_records(tree.root, num_points=N))


def test_missing_objects_pickle_names_it(tmp_path: Path) -> None:
    tree = write_laso(tmp_path / "laso", num_points=N)
    tree.lists["objects_val"].unlink()
    with pytest.raises(FileNotFoundError, match="objects_val.pkl"):
        list_items(tree.root)


def test_raw_item_with_arrays_round_trips_through_a_ray_row(tmp_path: Path) -> None:
    tree = write_laso(tmp_path / "laso", num_points=N)
    item = list_items(tree.root)[0]
    again = RawItem.from_row(item.to_row())
    np.testing.assert_array_equal(again.payload["mask"], item.payload["mask"])
    assert parse_item(tree.root, again, N).key == tree.expected_keys["triplet"][0]


def test_numpy_1_spelling_of_array_globals_loads(tmp_path: Path) -> None:
    """numpy 1.x pickles name numpy.core.multiarray; numpy 2 writes numpy._core (protocol 2: text globals)."""
    tree = write_laso(tmp_path / "laso", num_points=N, protocol=2)
    for path in tree.lists.values():
        if path.suffix == ".pkl":
            data = path.read_bytes()
            assert b"numpy._core.multiarray" in data
            path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert all(isinstance(r, Record) for r in iter_records(tree.root, num_points=N))
