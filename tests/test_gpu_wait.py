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


def test_gpu_run_on_a_cluster_without_gpus_fails_after_gpu_wait_s(ray_local, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address = ray.get_runtime_context().gcs_address  # joined as a cluster: GPUs could still be added
    assert ray.cluster_resources().get("GPU", 0) == 0
    start = time.monotonic()
    with pytest.raises(UserError, match=r"0 GPU\(s\) for train.num_workers=2 after waiting train.gpu_wait_s=1 s"):
        _check_gpus(_cfg(use_gpu="true", num_workers=2, gpu_wait_s=1), address, poll_s=0.2)
    assert 1.0 <= time.monotonic() - start < 10.0


def test_gpu_run_on_a_local_ray_without_gpus_fails_at_once(ray_local, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start = time.monotonic()
    with pytest.raises(UserError, match="this machine's Ray has 0 GPU"):
        _check_gpus(_cfg(use_gpu="true", gpu_wait_s=60), None)
    assert time.monotonic() - start < 5.0


def test_cpu_run_does_not_wait(ray_local):
    _check_gpus(_cfg(gpu_wait_s=60), "127.0.0.1:1")  # use_gpu false: nothing to check, returns at once
