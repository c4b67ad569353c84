"""Fixtures shared by the test modules: one local Ray session, and one torch thread per test process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (rawtree, tiny, servers) import as top-level modules


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for every test that needs one (started once: each start costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The 2 cores are shared with Ray workers and servers: OpenMP threads spinning against other processes make
    tiny forwards orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
