"""The endpoint's parsing and bounds without Ray (issue 32): every hostile body of tests/hostile_payloads.py through
the server's own parse and prepare functions, in one child process under a 4 GB address-space cap (a bomb that gets
through is a MemoryError there, never the machine's memory), plus in-process checks that the bounds do not refuse
what they should accept. tests/test_hostile_endpoint.py sends the same bodies to a real `lma3d serve`."""

from __future__ import annotations

import base64
import json

import hostile_payloads as hp
import numpy as np
import pytest
from capped import run_python

from jobs.serving.api import BadRequest, parse_json
from pipeline.pointfiles import MAX_POINTS

CASES = {**hp.JSON_CASES, **hp.FORM_CASES}
RUNNER = "import sys; sys.path.insert(0, 'tests'); import hostile_payloads; hostile_payloads.run_cases(sys.argv[1:])"
MEMORY_MB = 256  # what refusing any case may add to the parser's resident memory (the 16 MB bodies included)


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    child = run_python("-c", RUNNER, *CASES, timeout=900)
    lines = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    assert child.code == 0 and len(lines) == len(CASES), child.stderr[-3000:]
    for line in lines:
        print(f"\n[parser] {line}")
    return {line["case"]: line for line in lines}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_body_is_refused_with_one_line(outcomes: dict[str, dict], case: str) -> None:
    got = outcomes[case]
    assert got["outcome"] == "refused", got
    assert CASES[case][1] in got["message"] and "\n" not in got["message"], got
    assert got["peak_mb"] - got["start_mb"] < MEMORY_MB, got


def test_strings_holding_json_syntax_are_not_counted_as_structure() -> None:
    """Brackets, quotes and backslashes inside strings are text: the depth and point counts skip them."""
    instruction = 'Lift it [[[[{{{ "quoted" \\ ]]]] \\" }'
    request = parse_json(hp.body(instruction=instruction, note="[" * 500))
    assert request.instruction == instruction and request.points.shape == (len(hp.XYZ), 3)


def test_points_up_to_the_cap_are_accepted_and_one_more_is_refused() -> None:
    """Counted before the list is parsed, the cap is the same one point files have (pipeline.pointfiles)."""
    rng = np.random.default_rng(0)
    at_cap = rng.random((MAX_POINTS, 3)).round(3)
    text = json.dumps(at_cap.tolist())
    assert parse_json(hp.raw_body(text)).points.shape == (MAX_POINTS, 3)
    with pytest.raises(BadRequest, match=f"{MAX_POINTS + 1} points, more than the {MAX_POINTS}"):
        parse_json(hp.raw_body(text[:-1] + ", [0, 0, 0]]"))
    npy = hp.npy_bytes(np.zeros((MAX_POINTS + 1, 3), np.float32))
    with pytest.raises(BadRequest, match=f"{MAX_POINTS + 1} points, more than the {MAX_POINTS}"):
        parse_json(hp.body(base64.b64encode(npy).decode()))


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([[0, 1, 2]] * 3 + [[0, 1]], "expected an array [N,3]: row 3 holds 2 values"),
        ([[0, 1, 2]] * 3 + [None], "row 3 is None (NoneType), not [x, y, z]"),
        ([0.0] * 600, "row 0 is 0.0 (float), not [x, y, z]"),
        ([[0, 1, 2]] * 3 + [[0, None, 2]], "row 3 holds None (NoneType), not a number"),
        ([[0, 1, 2]] * 3 + [[0, [1], 2]], "body: JSON nested 4 deep, deeper than the 3 levels"),
        ([[0, 1, 2]] * 3 + [[0, float("nan"), 2]], "row 3 has a NaN or infinite value"),
    ],
)
def test_points_that_are_not_rows_of_three_numbers_are_refused(points: list, message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_json(hp.body(points))
    assert message in str(refused.value)


def test_an_npy_header_must_claim_the_bytes_it_holds() -> None:
    with pytest.raises(BadRequest, match=r"header claims shape \(4096, 3\) float64: 98304 bytes, the data holds 12"):
        parse_json(hp.body(base64.b64encode(hp.npy_claiming((4096, 3), "<f8")).decode()))


def test_a_flat_list_of_millions_of_numbers_is_refused_before_parsing() -> None:
    """No [x, y, z] rows to count, but more JSON values than any request of at most MAX_POINTS points holds."""
    with pytest.raises(BadRequest, match="JSON values, more than the"):
        parse_json(hp.raw_body("[" + ",".join(["0"] * (4 * MAX_POINTS + 100)) + "]"))
