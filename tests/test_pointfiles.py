"""Point files for predict: .txt (22 columns or xyz), .npy, .ply (ascii / binary), resampling and the map back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.geometry import farthest_point_indices
from pipeline.pointfiles import PointFileError, read_point_file, resample

PIAD = Path(__file__).parent / "fixtures" / "piad"
XYZ = np.array([[0.0, 0.0, 0.0], [1.0, 0.5, -0.25], [-1.0, 2.0, 3.0], [0.5, -0.5, 0.125]], np.float32)


def _ply_header(fmt: str, n: int, extra: str = "") -> bytes:
    return (
        f"ply\nformat {fmt} 1.0\ncomment test\nelement vertex {n}\nproperty float x\nproperty float y\n"
        f"property float z\nproperty uchar red\n{extra}end_header\n"
    ).encode()


def test_piad_txt_gives_columns_2_to_4_as_xyz() -> None:
    xyz = read_point_file(PIAD / "Point_Test_Bag_1.txt")
    first = (PIAD / "Point_Test_Bag_1.txt").read_text().splitlines()[0].split()
    assert xyz.shape == (2048, 3) and xyz.dtype == np.float32
    np.testing.assert_allclose(xyz[0], [float(v) for v in first[2:5]], rtol=1e-6)


def test_plain_xyz_txt_with_commas_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "cloud.txt"
    path.write_text("# x y z\n" + "\n".join(",".join(str(v) for v in row) for row in XYZ) + "\n\n")
    np.testing.assert_array_equal(read_point_file(path), XYZ)


def test_npy_array(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", XYZ.astype(np.float64))
    np.testing.assert_array_equal(read_point_file(tmp_path / "c.npy"), XYZ)


@pytest.mark.parametrize("fmt,order", [("binary_little_endian", "<"), ("binary_big_endian", ">")])
def test_binary_ply_reads_xyz_and_skips_other_properties(tmp_path: Path, fmt: str, order: str) -> None:
    dtype = np.dtype([("x", order + "f4"), ("y", order + "f4"), ("z", order + "f4"), ("red", "u1")])
    rows = np.array([(*p, 7) for p in XYZ.tolist()], dtype=dtype)
    face = "element face 1\nproperty list uchar int vertex_indices\n"
    (tmp_path / "c.ply").write_bytes(_ply_header(fmt, 4, face) + rows.tobytes() + b"\x03" + bytes(12))
    np.testing.assert_array_equal(read_point_file(tmp_path / "c.ply"), XYZ)


def test_ascii_ply(tmp_path: Path) -> None:
    body = "".join(f"{x} {y} {z} 200\n" for x, y, z in XYZ.tolist())
    (tmp_path / "c.ply").write_bytes(_ply_header("ascii", 4) + body.encode())
    np.testing.assert_array_equal(read_point_file(tmp_path / "c.ply"), XYZ)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("c.txt", "1 2\n3 4\n", "line 1: 2 columns; expected 3"),
        ("c.txt", "1 2 3\n4 5\n", "line 2: 2 columns, expected 3"),
        ("c.txt", "1 2 3\n4 x 6\n", "line 2: 'x' is not a number"),
        ("c.txt", "1 2 3\nnan 5 6\n", "point 1 has a NaN"),
        ("c.txt", "1 2 3\n1 2 3\n", "all 2 points are identical"),
        ("c.txt", "", "no points"),
        ("c.xyz", "1 2 3\n", "unsupported point file type .xyz"),
        ("c.ply", "not a ply", "not a PLY file"),
    ],
)
def test_bad_point_files_name_the_problem(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(PointFileError, match="c\\.") as error:
        read_point_file(tmp_path / name)
    assert message in str(error.value)


def test_wrong_npy_shape_and_truncated_ply(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", np.zeros((4, 2)))
    with pytest.raises(PointFileError, match=r"expected an array \[N,3\].*\(4, 2\)"):
        read_point_file(tmp_path / "c.npy")
    (tmp_path / "c.ply").write_bytes(_ply_header("binary_little_endian", 4) + bytes(13 * 2))
    with pytest.raises(PointFileError, match="truncated: 2 of 4 vertices"):
        read_point_file(tmp_path / "c.ply")


def test_farthest_point_sampling_picks_the_extremes_first() -> None:
    line = np.array([[0.0, 0, 0], [1.0, 0, 0], [10.0, 0, 0], [4.0, 0, 0], [6.0, 0, 0]])
    # from point 0: farthest is 10 (idx 2); then the point farthest from {0, 10} is 4 or 6: 4 is 4 from 0, 6 is 4
    # from 10 -> tie, argmax takes the first (idx 3).
    assert farthest_point_indices(line, 3).tolist() == [0, 2, 3]


def test_numpy_farthest_point_sampling_mirrors_the_models_from_the_first_point() -> None:
    import torch

    from model.point_ops import farthest_point_sample

    xyz = np.random.default_rng(3).uniform(-1, 1, size=(400, 3)).astype(np.float32)
    in_model = farthest_point_sample(torch.from_numpy(xyz)[None], 64, "first")[0].tolist()
    assert farthest_point_indices(xyz.astype(np.float64), 64).tolist() == in_model


def test_resample_down_maps_every_input_point_to_its_nearest_sample() -> None:
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(500, 3))
    sampled = resample(xyz, 64)
    assert sampled.xyz.shape == (64, 3) and sampled.nearest.shape == (500,)
    brute = ((xyz[:, None, :] - sampled.xyz[None].astype(np.float64)) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(sampled.nearest, brute)


def test_resample_up_keeps_all_points_and_maps_them_to_themselves() -> None:
    xyz = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    sampled = resample(xyz, 32)
    assert sampled.xyz.shape == (32, 3)
    np.testing.assert_array_equal(sampled.xyz[:10], xyz)
    np.testing.assert_array_equal(sampled.nearest, np.arange(10))
