"""jobs/training/launcher.py _check_gpus: a training run that asks for GPUs the Ray cluster does not have fails
with one line, at once on a local Ray and after train.gpu_wait_s on a cluster (real local Ray, no GPU)."""

from __future__ import annotations

import time

import pytest
from tiny import tiny_overrides

from jobs.entry import UserError
from jobs.experiment_config import ExperimentConfig
from jobs.training.launcher import _check_gpus
from jobs.typed_yaml import load

pytestmark = pytest.mark.slow


def _cfg(**train) -> ExperimentConfig:
    return load(ExperimentConfig, None, tiny_overrides() + [f"train.{k}={v}" for k, v in train.items()])


def _count_polls(monkeypatch) -> list[float]:
    """The times at which _check_gpus asks Ray for the cluster's resources (the real answer is returned)."""
    import ray

    polls, real = [], ray.cluster_resources
    monkeypatch.setattr(ray, "cluster_resources", lambda: polls.append(time.monotonic()) or real())
    return polls


def test_gpu_run_on_a_cluster_without_gpus_fails_after_gpu_wait_s(ray_local, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address = ray.get_runtime_context().gcs_address  # joined as a cluster: GPUs could still be added
    assert ray.cluster_resources().get("GPU", 0) == 0
    polls = _count_polls(monkeypatch)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"0 GPU\(s\) for train.num_workers=2 after waiting train.gpu_wait_s=1 s"):
        _check_gpus(_cfg(use_gpu="true", num_workers=2, gpu_wait_s=1), address, poll_s=0.2)
    # It waited the whole gpu_wait_s, polling every poll_s, and then stopped: each sleep lasts at least what it
    # asked for, so a 1 s wait at 0.2 s holds at most 1 + 5 polls however slow the machine is.
    assert polls[-1] - start >= 1.0
    assert 2 <= len(polls) <= 6, len(polls)


def test_gpu_run_on_a_local_ray_without_gpus_fails_at_once(ray_local, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    polls = _count_polls(monkeypatch)
    with pytest.raises(UserError, match="this machine's Ray has 0 GPU"):
        _check_gpus(_cfg(use_gpu="true", gpu_wait_s=60), None)
    assert len(polls) == 1  # asked once, no waiting


def test_cpu_run_does_not_wait(ray_local):
    _check_gpus(_cfg(gpu_wait_s=60), "127.0.0.1:1")  # use_gpu false: nothing to check, returns at once
