"""tests/conftest.py keeps `-m "not slow"` free of Ray and DeepSpeed: a test that starts either without the slow
marker fails, named. Run here on a throwaway test file in a child pytest that loads the project's conftest."""

from __future__ import annotations

import shutil
from pathlib import Path

TESTS = Path(__file__).parent

STARTS_A_PROCESS_GROUP = """
import pytest
import torch.distributed as dist
from servers import free_port


def _group():  # what every DeepSpeed engine does first (deepspeed.comm -> torch.distributed)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    dist.destroy_process_group()


def test_unmarked_starts_a_group():
    _group()


@pytest.mark.slow
def test_marked_starts_a_group():
    _group()
"""


def test_an_unmarked_test_that_starts_a_process_group_fails_and_a_slow_one_passes(pytester):
    for helper in ("conftest.py", "ray_cluster.py", "servers.py"):
        shutil.copy(TESTS / helper, pytester.path / helper)
    pytester.makepyfile(test_group=STARTS_A_PROCESS_GROUP)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)  # the unmarked test's body passes; its teardown check fails it
    result.stdout.fnmatch_lines(["*test_unmarked_starts_a_group started a torch.distributed process group*"])
    assert "test_marked_starts_a_group started" not in result.stdout.str()


ONE_GROUP = """
import os
import pytest

pytestmark = pytest.mark.xdist_group("expensive")


@pytest.fixture(scope="module")
def expensive():
    with open("setups.txt", "a") as out:
        out.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")


@pytest.mark.parametrize("i", range(4))
def test_grouped(expensive, i):
    pass
"""


def test_make_tests_loadgroup_runs_a_grouped_modules_fixture_once(pytester):
    # `make test` is `pytest -n 2 --dist loadgroup`: a module marked with one xdist_group runs in one process, so its
    # module fixture (a two-node training run, a served model) starts once. pytest 9.2 broke that silently
    # (pytest-xdist#1386); this fails if the installed pair groups nothing.
    pytester.makepyfile(test_one_group=ONE_GROUP, test_others="def test_other():\n    pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    assert len((pytester.path / "setups.txt").read_text().split()) == 1
