"""lma3d predict on the real PIAD sample: valid .npy / .ply / .png; batch mode; one clear error line per bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_model_config

from jobs.verbs.predict import main as predict_main

PIAD = Path(__file__).parent / "fixtures" / "piad"
IMAGE, POINTS = PIAD / "Img_Test_Bag_lift_1.jpg", PIAD / "Point_Test_Bag_1.txt"
INSTRUCTION = "Lift the bag by its handles."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.lmaffordance3d import build_model
    from model.pretrained import save_pretrained

    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("exported")
    save_pretrained(build_model(tiny_model_config(), pretrained=False), out)
    return out


def read_ascii_ply(path: Path) -> tuple[list[str], np.ndarray]:
    """An independent reader: header lines and the vertex rows as floats."""
    text = path.read_text().splitlines()
    end = text.index("end_header")
    count = int(next(line.split()[2] for line in text[:end] if line.startswith("element vertex")))
    rows = np.array([[float(v) for v in line.split()] for line in text[end + 1 :]])
    assert rows.shape[0] == count
    return text[:end], rows


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = predict_main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_on_the_piad_sample_writes_npy_ply_and_png(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--model", str(model_dir), "--image", str(IMAGE), "--points", str(POINTS), "--instruction", INSTRUCTION]
    code, _, err = run([*args, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    stem = "Img_Test_Bag_lift_1"
    values = np.load(tmp_path / f"{stem}.npy")
    assert values.shape == (2048,) and values.dtype == np.float32
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all() and values.std() > 0

    header, rows = read_ascii_ply(tmp_path / f"{stem}_Pred.ply")
    assert header[1] == "format ascii 1.0"
    assert [line.split()[-1] for line in header if line.startswith("property")] == [
        "x", "y", "z", "red", "green", "blue", "quality",
    ]  # fmt: skip
    xyz = np.loadtxt(POINTS, usecols=(2, 3, 4))
    np.testing.assert_allclose(rows[:, :3], xyz, atol=1e-6)
    np.testing.assert_allclose(rows[:, 6], values, atol=1e-6)
    # grey (190,190,190) at 0 to red (255,0,0) at 1, by hand
    np.testing.assert_allclose(rows[:, 3], np.rint(190 + 65 * values), atol=1)
    np.testing.assert_allclose(rows[:, 4], np.rint(190 * (1 - values)), atol=1)
    np.testing.assert_array_equal(rows[:, 4], rows[:, 5])

    with Image.open(tmp_path / f"{stem}.png") as png:
        # 3 panels (image + 2 views) of 3.2 in + 0.6 in margin, 3.8 in high, at 100 dpi
        assert png.format == "PNG" and png.size == (1020, 380)


def test_predict_is_deterministic(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--model", str(model_dir), "--image", str(IMAGE), "--points", str(POINTS), "--instruction", INSTRUCTION]
    for out in ("a", "b"):
        assert run([*args, "--out", str(tmp_path / out), "--name", "s"], capsys)[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "s.npy"), np.load(tmp_path / "b" / "s.npy"))


def test_any_point_count_maps_back_to_every_input_point(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    few = np.loadtxt(POINTS, usecols=(2, 3, 4))[::17]  # 121 points, fewer than the model's 256
    np.save(tmp_path / "few.npy", few)
    args = ["--model", str(model_dir), "--image", str(IMAGE), "--points", str(tmp_path / "few.npy")]
    code, _, err = run([*args, "--instruction", INSTRUCTION, "--out", str(tmp_path / "o"), "--name", "f"], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "o" / "f.npy").shape == (121,)


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, Path, str]]:
    not_image = tmp_path / "not_image.jpg"
    not_image.write_text("hello")
    columns = tmp_path / "columns.txt"
    columns.write_text("1 2 3 4\n5 6 7 8\n")
    nan = tmp_path / "nan.txt"
    nan.write_text("0 0 0\n1 nan 1\n2 2 2\n")
    return {
        "bad image": (not_image, POINTS, "not_image.jpg: not an image PIL can decode"),
        "wrong columns": (IMAGE, columns, "columns.txt line 1: 4 columns"),
        "NaN": (IMAGE, nan, "nan.txt: point 1 has a NaN"),
        "missing points": (IMAGE, tmp_path / "absent.ply", "absent.ply: no such point file"),
    }


@pytest.mark.parametrize("case", ["bad image", "wrong columns", "NaN", "missing points"])
def test_a_corrupt_input_is_one_clear_error_line(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    image, points, message = _bad_inputs(tmp_path)[case]
    args = ["--model", str(model_dir), "--image", str(image), "--points", str(points), "--instruction", INSTRUCTION]
    code, _, err = run([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith("lma3d predict: error: ")
    assert message in err


def test_batch_list_reports_each_bad_line_and_predicts_the_rest(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = _bad_inputs(tmp_path)
    lines = [f"{IMAGE}\t{POINTS}\t{INSTRUCTION}", f"{bad['NaN'][0]}\t{bad['NaN'][1]}\tgrasp it"]
    lines += [f"{bad['bad image'][0]}\t{bad['bad image'][1]}\tgrasp it", f"{IMAGE}\t{POINTS}"]
    listing = tmp_path / "inputs.tsv"
    listing.write_text("# image points instruction\n" + "\n".join(lines) + "\n")
    code, out, err = run(["--model", str(model_dir), "--batch", str(listing), "--instruction", "open it", "--out",
                          str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 2
    errors = err.strip().splitlines()
    assert len(errors) == 3 and "nan.txt: point 1 has a NaN" in errors[0] and "not_image.jpg" in errors[1]
    assert "2 of 4 inputs failed" in errors[2]
    assert sorted(p.name for p in (tmp_path / "o").glob("*.npy")) == ["0002_Img_Test_Bag_lift_1.npy",
                                                                      "0005_Img_Test_Bag_lift_1.npy"]  # fmt: skip


def test_batch_folder_pairs_images_points_and_instructions_by_name(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(IMAGE, folder / "bag.jpg")
    shutil.copy(POINTS, folder / "bag.txt")
    (folder / "bag.instruction.txt").write_text(INSTRUCTION)
    code, out, err = run(["--model", str(model_dir), "--batch", str(folder), "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["bag.npy", "bag.png", "bag_Pred.ply"]
