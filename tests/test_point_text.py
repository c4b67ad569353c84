"""Point text files: the vectorised parse reads what Python's float() reads, to the bit, and every file it refuses
is read line by line, with the same values or the same named error. The reference is float() on str.split()."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from pipeline.formats.common import POINT_COLUMNS, BadRecord
from pipeline.formats.point_text import (
    _parse_by_line,
    _parse_vectorised,
    parse_point_rows,
    read_labelled_points,
    read_point_lines,
)

LABELS = slice(2, None)


def write_lines(tmp_path: Path, lines: list[str]) -> tuple[Path, list[tuple[int, str]]]:
    path = tmp_path / "Point_Train_Mug_1.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, read_point_lines(path, 64, "")


def float_reference(lines: list[str], numbers: slice) -> np.ndarray:
    return np.array([[float(t) for t in line.split()[numbers]] for line in lines], dtype=np.float64)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(((a.view(np.int64) == b.view(np.int64)) | (np.isnan(a) & np.isnan(b))).all())


def labelled_line(rng: random.Random, shape_id: str = "a1b2", obj: str = "Mug") -> str:
    formats = ["%.6f", "%.17g", "%r", "%.3e", "%.0f", "%+.4E"]
    values = [rng.choice(formats) % (rng.uniform(-1, 1) * 10 ** rng.randint(-40, 40)) for _ in range(20)]
    return " ".join([shape_id, obj, *values])


def test_a_clean_file_takes_the_vectorised_pass_and_gives_float_s_bits(tmp_path):
    rng = random.Random(0)
    lines = [labelled_line(rng) for _ in range(50)] + ["s o -0 +.5 5. 1e-400 1e400 -inf nan " + "0 " * 12 + "1"]
    path, rows = write_lines(tmp_path, lines)
    assert _parse_vectorised(rows, POINT_COLUMNS, LABELS) is not None
    heads, values = parse_point_rows(rows, POINT_COLUMNS, LABELS, path, "")
    assert heads == [tuple(line.split()[:2]) for line in lines]
    assert same_bits(values, float_reference(lines, LABELS))


def test_random_tokens_are_accepted_exactly_when_float_accepts_them_with_its_value(tmp_path):
    rng = random.Random(1)
    alphabet = "0123456789.+-eEnaifINFty_"
    tokens = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(1500)]
    tokens += ["nan", "-NaN", "Infinity", "+inf", "1e", "e1", "1.e5", ".e5", "+-1", "1..2", "00012", "1_0", "9" * 330]
    for token in tokens:
        line = f"id Mug {token} " + " ".join(["0.5"] * 19)
        path, rows = write_lines(tmp_path, [line])
        try:
            expected = float(token)
        except ValueError:
            with pytest.raises(BadRecord, match=r"line 1: .* is not a number \(column 3\)"):
                parse_point_rows(rows, POINT_COLUMNS, LABELS, path, "")
            continue
        _, values = parse_point_rows(rows, POINT_COLUMNS, LABELS, path, "")
        got = float(values[0, 0])
        assert got == expected or (math.isnan(got) and math.isnan(expected)), token
        assert math.copysign(1, got) == math.copysign(1, expected) or math.isnan(expected), token


@pytest.mark.parametrize(
    "token",
    ["1_5", "\uff11\uff12", "0.25\u00a0"],  # float() reads an underscore, fullwidth digits, a no-break space
    ids=["underscore", "fullwidth digits", "no-break space"],
)
def test_a_token_only_float_reads_is_read_line_by_line_with_float_s_value(tmp_path, token):
    rng = random.Random(2)
    lines = [labelled_line(rng) for _ in range(3)]
    lines[1] = " ".join(lines[1].split()[:4] + [token] + lines[1].split()[5:])
    path, rows = write_lines(tmp_path, lines)
    assert _parse_vectorised(rows, POINT_COLUMNS, LABELS) is None
    _, values = parse_point_rows(rows, POINT_COLUMNS, LABELS, path, "")
    assert same_bits(values, float_reference(lines, LABELS))


def test_a_separator_only_str_split_knows_gives_the_same_columns_as_the_line_parse(tmp_path):
    rng = random.Random(3)
    lines = [labelled_line(rng) for _ in range(3)]
    lines[2] = lines[2].replace(" ", "\x1f", 3).replace(" ", "\u3000", 2)
    path, rows = write_lines(tmp_path, lines)
    _, values = parse_point_rows(rows, POINT_COLUMNS, LABELS, path, "")
    assert same_bits(values, float_reference(lines, LABELS))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t[:-1], "line 2: 21 columns, expected 22"),
        (lambda t: [*t, "0"], "line 2: 23 columns, expected 22"),
        (lambda t: t[:6] + ["abc"] + t[7:], "line 2: 'abc' is not a number (column 7)"),
        (lambda t: t[:6] + ["1.0\x00"] + t[7:], "line 2: '1.0\\x00' is not a number (column 7)"),
        (lambda t: t[:6] + ["#"] + t[7:], "line 2: '#' is not a number (column 7)"),
        (lambda t: t[:6] + ["0x1p3"] + t[7:], "line 2: '0x1p3' is not a number (column 7)"),
    ],
    ids=["21 columns", "23 columns", "a word", "a NUL byte", "a comment sign", "a hex float"],
)
def test_a_bad_line_is_named_by_line_and_column(tmp_path, edit, message):
    rng = random.Random(4)
    lines = [labelled_line(rng) for _ in range(3)]
    lines[1] = " ".join(edit(lines[1].split()))
    path, rows = write_lines(tmp_path, lines)
    with pytest.raises(BadRecord, match="bad_columns") as error:
        parse_point_rows(rows, POINT_COLUMNS, LABELS, path, "")
    assert f"{path} {message}" in str(error.value)


def test_only_the_requested_columns_must_be_numbers(tmp_path):
    rng = random.Random(5)
    lines = [labelled_line(rng) for _ in range(3)]
    lines[0] = " ".join(lines[0].split()[:10] + ["label?"] + lines[0].split()[11:])
    path, rows = write_lines(tmp_path, lines)
    _, xyz = parse_point_rows(rows, POINT_COLUMNS, slice(2, 5), path, "")
    assert same_bits(xyz, float_reference(lines, slice(2, 5)))


def test_plain_xyz_lines_with_tabs_and_leading_spaces_take_the_vectorised_pass(tmp_path):
    lines = ["  0.5\t-1e-3   7", "\t1 2 3", "4.25 5 6e2"]
    path, rows = write_lines(tmp_path, lines)
    assert _parse_vectorised(rows, 3, slice(0, 3)) is not None
    heads, values = parse_point_rows(rows, 3, slice(0, 3), path, "")
    assert heads == []
    assert same_bits(values, float_reference(lines, slice(0, 3)))


def test_a_line_whose_object_differs_from_line_1_is_named(tmp_path):
    rng = random.Random(6)
    values = " ".join(f"{rng.uniform(0, 1):.6f}" for _ in range(20))
    lines = [f"a1b2 {'Bowl' if i in (2, 3) else 'Mug'} {values}" for i in range(5)]
    path, _ = write_lines(tmp_path, lines)
    with pytest.raises(BadRecord, match="mismatch") as error:
        read_labelled_points(path, 5, "")
    assert f"{path} line 3: object column 'Bowl' != 'Mug' of line 1" in str(error.value)


def test_damaged_files_give_the_line_parse_s_values_or_its_error(tmp_path):
    """Differential: random bytes inserted, replaced or cut in a clean file; the two passes never disagree."""
    rng = random.Random(7)
    clean = "\n".join(labelled_line(rng) for _ in range(20)).encode() + b"\n"
    junk = [b"\x00", b"\x1f", b"\x0b", b"\r", b"\t", b"  ", b"#", b"_", b",", b"e", b"+", b".", b"nan", b"x",
            "\u00a0".encode(), "\u3000".encode(), "\uff11".encode(), b"1e999"]  # fmt: skip

    def outcome(parse, rows, numbers):
        try:
            heads, values = parse(rows, POINT_COLUMNS, numbers, path, "")
            return heads, values.shape, values.tobytes()
        except BadRecord as e:
            return str(e)

    path, vectorised = tmp_path / "damaged.txt", 0
    for _ in range(400):
        data = bytearray(clean)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            data[at : at + rng.choice([0, 1, 3])] = rng.choice(junk)
        path.write_bytes(bytes(data))
        try:
            rows = read_point_lines(path, 64, "")
        except BadRecord:
            continue
        for numbers in (LABELS, slice(2, 5)):
            vectorised += _parse_vectorised(rows, POINT_COLUMNS, numbers) is not None
            assert outcome(parse_point_rows, rows, numbers) == outcome(_parse_by_line, rows, numbers), bytes(data)
    assert vectorised > 10  # some damage leaves a file the vectorised pass reads (a sign, a space, a tab)
