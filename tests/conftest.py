"""Fixtures shared by the test modules: one local Ray session, and one torch thread per test process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (rawtree, tiny, servers) import as top-level modules
from ray_cluster import ensure_auth_token  # noqa: E402

# Ray starts its workers at nice 15 so that its own daemons win. Beside other work at nice 0 (a busy machine), a
# niced worker gets a few percent of a core: a DeepSpeed build measured 6 CPU-seconds in 4 minutes beside two busy
# loops. Every Ray the tests start (in-process, `ray start`, a CLI's own) runs its workers at the tests' priority.
os.environ.setdefault("RAY_worker_niceness", "0")
# Ray Train's controller polls its workers every 2 s and starts a preemption watcher (one more process) per run:
# a finished tiny run waited up to 2 s to be noticed. Measured on one ZeRO-2 launch: 19.8 -> 16.5 s.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
ensure_auth_token()  # before any Ray of the session (ray.init, a CLI's, `ray start`) would write one of its own


pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts the session's Ray is slow, marked or not: `-m "not slow"` (make test-fast) starts no Ray."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_ray(request):
    """A test not marked slow that leaves a Ray running it did not find (ray.data and ray.init start one on first
    use) fails: `-m "not slow"` stays Ray-free. The Ray is shut down, so the next offender is caught too."""
    ray = sys.modules.get("ray")
    running_before = ray is not None and ray.is_initialized()  # the session's Ray, started by an earlier slow test
    yield
    ray = sys.modules.get("ray")
    slow = request.node.get_closest_marker("slow") is not None
    if ray is not None and not slow and not running_before and ray.is_initialized():
        ray.shutdown()
        pytest.fail(f"{request.node.nodeid} started Ray: mark it slow", pytrace=False)


_process_groups_started = 0
"""torch.distributed.init_process_group calls in this process: every DeepSpeed engine starts one (deepspeed.comm
initialises torch.distributed), a `--no-ray` run included, even one that destroys its group before it returns."""
_init_process_group = torch.distributed.init_process_group


def _counted_init_process_group(*args, **kwargs):
    global _process_groups_started
    _process_groups_started += 1
    return _init_process_group(*args, **kwargs)


torch.distributed.init_process_group = _counted_init_process_group


@pytest.fixture(autouse=True)
def _fast_tests_start_no_deepspeed(request):
    """A test not marked slow that starts a process group (DeepSpeed, or torch.distributed by hand) fails."""
    before = _process_groups_started
    yield
    if request.node.get_closest_marker("slow") is None and _process_groups_started != before:
        pytest.fail(f"{request.node.nodeid} started a torch.distributed process group (DeepSpeed): mark it slow",
                    pytrace=False)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for every test that needs one (started once: each start costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _placement_groups_given_back():
    """After each test, the placement groups still held in its Ray are removed. Ray Train V2 keeps a failed run's
    controller, and with it the workers' placement group, alive until the driver exits (a CLI run exits; this test
    session does not): a test that makes training fail on purpose would otherwise starve every later run of
    the session's 2 CPUs."""
    yield
    import ray

    if not ray.is_initialized():
        return
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table

    for pg_id, info in placement_group_table().items():
        if info["state"] == "CREATED":
            ray.util.remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(pg_id)))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The 2 cores are shared with Ray workers and servers: OpenMP threads spinning against other processes make
    tiny forwards orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
