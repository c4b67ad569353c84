"""Which training failures count as faults of the cluster (re-run from the checkpoint) and how they are named."""

from __future__ import annotations

import ray.exceptions

from jobs.training.faults import describe, is_out_of_memory, is_system_fault


class _ControllerFailed(Exception):
    """Shaped like Ray Train's controller errors: the real cause hangs off an attribute."""

    def __init__(self, **wrapped: BaseException) -> None:
        super().__init__("training failed")
        for name, error in wrapped.items():
            setattr(self, name, error)


def _chained(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


def test_an_out_of_memory_kill_wrapped_twice_is_named_as_the_memory_monitor():
    error = _ControllerFailed(
        controller_failure=_chained(RuntimeError("worker died"), ray.exceptions.OutOfMemoryError(""))
    )
    assert is_out_of_memory(error) and is_system_fault(error)
    assert describe(error) == "a worker was killed by Ray's memory monitor (out of host memory)"


def test_a_dead_node_behind_a_health_check_failure_is_a_system_fault():
    error = _ControllerFailed(health_check_failure=ray.exceptions.NodeDiedError("node 1 died"))
    assert is_system_fault(error) and not is_out_of_memory(error)
    assert describe(error) == "a worker or its node died"


def test_an_exception_of_the_training_code_is_not_a_system_fault_and_names_its_last_line():
    error = _chained(ValueError("bad batch\nlabel out of [0, 1]"), KeyError("x"))
    assert not is_system_fault(error)
    assert describe(error) == "ValueError: label out of [0, 1]"
