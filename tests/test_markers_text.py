"""A text check of the test suite itself: every marker pyproject.toml declares is used by some test file."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_text_check_every_declared_marker_is_used_by_a_test_file() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    names = [line.split(":")[0].strip() for line in declared]
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("*.py"))
    unused = [name for name in names if not re.search(rf"mark\.{name}\b|\"{name}\"", sources)]
    assert unused == [], f"markers declared in pyproject.toml that no test uses: {unused}"
