"""One bad record never takes the job down, or the machine (issue 14 section 4).

Each hostile input becomes one quarantine line with its reason, costs bounded memory, and the records around it
still arrive; the shard job over a tree mixing them all keeps read = written + quarantined.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from rawtree import write_agpil, write_laso

from pipeline import pointfiles
from pipeline.formats import iter_records, list_items, parse_item
from pipeline.formats.common import POINT_LINE_BYTES
from pipeline.formats.safe_pickle import UnsafePickleError, safe_loads
from pipeline.pointfiles import PointFileError, read_point_file
from pipeline.record import Record, Rejection
from pipeline.shards.config import ShardConfig
from pipeline.shards.job import _parse_rows, run

N = 16


def _rejections(root: Path) -> dict[str, str]:
    """key -> reason of every rejection of a tree."""
    return {r.key: r.reason for r in iter_records(root, num_points=N) if isinstance(r, Rejection)}


def _records(root: Path) -> set[str]:
    return {r.key for r in iter_records(root, num_points=N) if isinstance(r, Record)}


def _nested_json(depth: int) -> str:
    return '{"Description": ' + "[" * depth + "]" * depth + "}"


def _snapshot(folder: Path, skip: Path) -> dict[str, str]:
    """sha256 of every file under folder except under `skip` (symlinks by their target text)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if skip in path.parents or path == skip:
            continue
        if path.is_symlink():
            out[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_json_nested_100000_deep_is_bad_json_and_the_others_arrive(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    tree.files["annotation_train"][0].write_text(_nested_json(100_000))
    bad = tree.expected_keys["image"][0]
    rejections = _rejections(tree.root)
    assert list(rejections) == [bad] and rejections[bad].startswith("bad_json:")
    assert "nested too deep" in rejections[bad]
    assert _records(tree.root) == {k for keys in tree.expected_keys.values() for k in keys} - {bad}


def test_oversized_point_file_is_refused_from_its_size_without_being_parsed(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    path = tree.files["points_train"][0]
    line = path.read_text().splitlines()[0] + "\n"
    path.write_text(line * (4_000_000 // len(line)))  # ~4 MB of valid lines: 250x the 16 points expected
    item = next(i for i in list_items(tree.root) if i.kind == "points")
    tracemalloc.start()
    rejection = parse_item(tree.root, item, N)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert isinstance(rejection, Rejection) and rejection.key == tree.expected_keys["points"][0]
    assert rejection.reason.startswith("too_large:")
    assert f"over the {N * POINT_LINE_BYTES}-byte limit for {N} points" in rejection.reason
    assert peak < 100_000  # the 4 MB file was never read into memory
    assert list(_rejections(tree.root)) == [rejection.key]


def test_more_rows_than_expected_are_counted_before_any_line_is_parsed(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    tree.files["points_train"][1].write_text("x\n" * (N * 20))  # small, too many rows, not even numbers
    reason = _rejections(tree.root)[tree.expected_keys["points"][1]]
    assert reason.startswith("bad_point_count:") and f"{N * 20} points, more than {N}" in reason


def test_predict_point_file_over_its_limit_is_refused_before_parsing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pointfiles, "MAX_POINTS", 100)
    path = tmp_path / "big.txt"
    path.write_text("0.1 0.2 0.3\n" * 10_000)  # 120 kB: more than 100 lines of 512 bytes could be
    with pytest.raises(PointFileError, match=f"over the {100 * POINT_LINE_BYTES}-byte limit for 100 points"):
        read_point_file(path)
    path.write_text("0.1 0.2 0.3\n" * 101)
    with pytest.raises(PointFileError, match="101 points, more than 100"):
        read_point_file(path)


# Hand-assembled pickles (protocol 2 opcodes) that allocate far more than their size if obeyed.
_BYTEARRAY_BOMB = b"\x80\x02cbuiltins\nbytearray\nJ" + struct.pack("<i", 1_500_000_000) + b"\x85R."
_NDARRAY_BOMB = b"\x80\x02cnumpy\nndarray\nJ" + struct.pack("<i", 1_500_000_000) + b"\x85\x85R."
_RECONSTRUCT_BOMB = (
    b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ"
    + struct.pack("<i", 1_500_000_000)
    + b"\x85U\x01b\x87R."
)
_BYTEARRAY8_CLAIM = b"\x80\x05\x96" + struct.pack("<Q", 1_500_000_000) + b"."
# A plain float32 array whose state claims 10^9 elements for 4 bytes of data.
_STATE_LIE = pickle.dumps(np.zeros(1, np.float32), protocol=2).replace(b"K\x01\x85", b"J\x00\xca\x9a;\x85", 1)
BOMBS = {
    "bytearray(1.5e9)": (_BYTEARRAY_BOMB, "bytearray"),
    "ndarray((1.5e9,))": (_NDARRAY_BOMB, "ndarray"),
    "_reconstruct of 1.5e9 bytes": (_RECONSTRUCT_BOMB, "_reconstruct"),
    "BYTEARRAY8 claiming 1.5e9 bytes": (_BYTEARRAY8_CLAIM, "bytearray of 1500000000 bytes"),
    "array state claiming 1e9 elements": (_STATE_LIE, "numpy array of 4000000000 bytes from 4 bytes"),
}


@pytest.mark.parametrize("name", BOMBS)
def test_pickle_allocation_bomb_is_refused_with_little_memory(tmp_path: Path, name: str) -> None:
    data, names = BOMBS[name]
    tree = write_laso(tmp_path / "laso", num_points=N)
    tree.lists["anno_val"].write_bytes(data)
    tracemalloc.start()
    with pytest.raises(UnsafePickleError, match=rf"anno_val\.pkl: refused to load.*{names}"):
        list_items(tree.root)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000


def test_memo_index_bomb_costs_no_memory() -> None:
    """LONG_BINPUT 50,000,000: the C unpickler allocates and clears a 400 MB memo for these 9 bytes."""
    data = b"\x80\x04Nr" + struct.pack("<I", 50_000_000) + b"."
    tracemalloc.start()
    assert safe_loads(data, "memo") is None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000


def test_object_dtype_is_refused_before_numpy_sees_its_state() -> None:
    """numpy crashes the process on an object array whose state lies about its shape: never get there."""
    state = pickle.dumps(np.array([1, 2], dtype=object), protocol=2)
    with pytest.raises(UnsafePickleError, match="object dtype"):
        safe_loads(state, "objects")


def test_pickle_over_its_byte_cap_is_refused_unread(tmp_path: Path) -> None:
    from pipeline.formats.safe_pickle import safe_load_pickle

    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(list(range(1000))))
    with pytest.raises(UnsafePickleError, match="over the 100-byte limit"):
        safe_load_pickle(path, max_bytes=100)


def test_value_beyond_float32_is_non_finite(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    path = tree.files["points_train"][3]
    lines = path.read_text().splitlines()
    tokens = lines[4].split()
    tokens[3] = "1e39"  # finite in float64, inf in float32
    lines[4] = " ".join(tokens)
    path.write_text("\n".join(lines) + "\n")
    reason = _rejections(tree.root)[tree.expected_keys["points"][3]]
    assert reason.startswith("non_finite:") and "line 5" in reason

    laso = write_laso(tmp_path / "laso", num_points=N)
    shapes = pickle.loads(laso.lists["objects_test"].read_bytes())
    shape_id = next(iter(shapes))
    shapes[shape_id] = shapes[shape_id].astype(np.float64)
    shapes[shape_id][2, 0] = 1e39
    laso.lists["objects_test"].write_bytes(pickle.dumps(shapes, protocol=4))
    reasons = {r.reason.split(":")[0] for r in iter_records(laso.root, num_points=N) if isinstance(r, Rejection)}
    assert reasons == {"non_finite"}

    cloud = tmp_path / "cloud.txt"
    cloud.write_text("0 0 0\n1 1e39 1\n")
    with pytest.raises(PointFileError, match="point 1 has a NaN, infinite or beyond-float32"):
        read_point_file(cloud)


def _link_outside(path: Path, outside: Path) -> None:
    """Move a tree's file outside the root and leave a symlink to it in its place."""
    target = outside / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, target)
    path.symlink_to(target)


LINKED = [("image_train", 0, "image"), ("points_train", 0, "points"), ("annotation_train", 1, "image"),
          ("points_test", 0, "triplet")]  # fmt: skip


@pytest.mark.parametrize("files,index,kind", LINKED)
def test_symlink_escaping_the_root_is_path_escape(tmp_path: Path, files: str, index: int, kind: str) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    _link_outside(tree.files[files][index], tmp_path / "outside")
    bad = tree.expected_keys[kind][index]
    rejections = _rejections(tree.root)
    assert list(rejections) == [bad] and rejections[bad].startswith("path_escape:")
    assert "is a symlink resolving to" in rejections[bad] and str(tmp_path / "outside") in rejections[bad]


def test_symlink_to_a_folder_outside_the_root_is_path_escape(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    folder = tree.root / "Point" / "Test"
    shutil.move(folder, tmp_path / "outside")
    folder.symlink_to(tmp_path / "outside")
    reasons = {r.reason.split(":")[0] for r in iter_records(tree.root, num_points=N) if isinstance(r, Rejection)}
    assert reasons == {"path_escape"}


def test_symlink_inside_the_root_is_followed(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    path = tree.files["image_train"][0]
    moved = tree.root / "elsewhere" / path.name
    moved.parent.mkdir()
    shutil.move(path, moved)
    path.symlink_to(moved)
    assert _rejections(tree.root) == {}


def test_laso_pickle_symlinked_outside_the_root_is_path_escape(tmp_path: Path) -> None:
    tree = write_laso(tmp_path / "laso", num_points=N)
    _link_outside(tree.lists["anno_train"], tmp_path / "outside")
    with pytest.raises(ValueError, match=r"^path_escape: anno_train\.pkl is a symlink resolving to .*outside"):
        list_items(tree.root)


def test_row_that_cannot_be_read_becomes_a_parse_error_line(tmp_path: Path) -> None:
    tree = write_agpil(tmp_path / "raw", num_points=N)
    rows = [item.to_row() for item in list_items(tree.root)[:3]]
    rows[1]["payload"] = b"\x80\x04not a pickle"
    records, rejections = _parse_rows(str(tree.root), rows, N)
    assert len(records) == 2 and len(rejections) == 1
    assert rejections[0]["reason"].startswith("parse_error: ") and "is not a readable pickle" in rejections[0]["reason"]
    assert rejections[0]["sources"] == rows[1]["paths"]
    assert [r.key for r in records] == [tree.expected_keys["image"][0], tree.expected_keys["image"][2]]


def test_shard_job_over_hostile_records_quarantines_each_and_keeps_the_rest(tmp_path: Path, ray_local) -> None:
    tree = write_agpil(tmp_path / "raw", n_train_images=9, points_per_object=3, n_test=6, num_points=N)
    tree.files["annotation_train"][0].write_text(_nested_json(100_000))
    tree.files["annotation_train"][1].write_text('{"Description": "grasp \\ud800 here"}')  # a lone surrogate
    line = tree.files["points_train"][0].read_text().splitlines()[0] + "\n"
    tree.files["points_train"][0].write_text(line * (2_000_000 // len(line)))
    test_cloud = tree.files["points_test"][0]
    lines = test_cloud.read_text().splitlines()
    lines[0] = " ".join([*lines[0].split()[:2], "1e39", *lines[0].split()[3:]])
    test_cloud.write_text("\n".join(lines) + "\n")
    _link_outside(tree.files["image_train"][4], tmp_path / "outside")
    expected = {
        tree.expected_keys["image"][0]: "bad_json",
        tree.expected_keys["image"][1]: "bad_json",
        tree.expected_keys["points"][0]: "too_large",
        tree.expected_keys["triplet"][0]: "non_finite",
        tree.expected_keys["image"][4]: "path_escape",
    }
    before = _snapshot(tmp_path, tmp_path / "out")
    manifest = run(tree.root, "agpil", tmp_path / "out", ShardConfig(samples_per_shard=4, max_bad_fraction=1.0), N)
    lines = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert {q["key"]: q["reason"].split(":")[0] for q in lines} == expected
    assert manifest["read"] == tree.n_records == manifest["written"] + manifest["quarantined"]
    assert manifest["written"] == tree.n_records - len(expected)
    assert _snapshot(tmp_path, tmp_path / "out") == before


def test_laso_field_nested_100000_deep_is_bad_columns_and_the_others_arrive(tmp_path: Path) -> None:
    tree = write_laso(tmp_path / "laso", num_points=N)
    annotations = pickle.loads(tree.lists["anno_train"].read_bytes())
    annotations[1]["shape_id"] = "Q" * 11  # replaced below by a list nested 100,000 deep
    data = pickle.dumps(annotations, protocol=2)
    depth = 100_000
    placeholder = b"X\x0b\x00\x00\x00" + b"Q" * 11
    assert data.count(placeholder) == 1
    tree.lists["anno_train"].write_bytes(data.replace(placeholder, b"]" * depth + b"a" * (depth - 1)))
    results = list(iter_records(tree.root, num_points=N))
    rejections = [r for r in results if isinstance(r, Rejection)]
    assert [r.reason.split(":")[0] for r in rejections] == ["bad_columns"] and "shape_id is a list" in rejections[
        0
    ].reason
    assert len(results) - 1 == sum(isinstance(r, Record) for r in results) == tree.n_records - 1
