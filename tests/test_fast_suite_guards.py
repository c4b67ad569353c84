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
