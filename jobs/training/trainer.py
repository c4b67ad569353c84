"""The Ray Train side of `lma3d train`: the TorchTrainer of a run, and its re-runs after faults Ray did not retry.

Ray Train 2.60 (Train V2) retries a lost worker up to FailureConfig.max_failures, but an OOM kill by Ray's memory
monitor (and the faults around it) ends fit() instead; fit() here runs it again with the same RunConfig, so it
resumes from the latest registered checkpoint, and counts the failures of every attempt against one budget.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from jobs.entry import JobFailed
from jobs.training import faults
from jobs.training.run_spec import RunSpec

log = logging.getLogger("lma3d.train")
# Secrets and endpoints the workers need to reach MLflow and its artifact store (passed via runtime_env).
FORWARDED_ENV = (
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_S3_IGNORE_TLS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
)  # fmt: skip


def train_with_ray(spec: RunSpec, callbacks: list) -> Any:
    """TorchTrainer.fit(), run again with the same RunConfig (so from the latest registered checkpoint) after a
    system fault Ray did not retry, while the failures of all attempts stay within train.max_failures."""
    budget, failures = spec.cfg.train.max_failures, 0
    counted = faults.count_attempts(spec.folder)  # attempts of earlier jobs of a resumed run
    while True:
        attempt = torch_trainer(spec, budget - failures, callbacks)
        try:
            return attempt.fit()
        except Exception as e:
            attempts = faults.count_attempts(spec.folder)
            failures += max(1, attempts - counted)  # every attempt of a failed fit() failed
            counted = attempts
            if not faults.is_system_fault(e):
                raise
            if failures > budget:
                raise JobFailed(
                    f"training stopped: {faults.describe(e)}; {failures} failure(s) with train.max_failures="
                    f"{budget}. Continue from the latest checkpoint with --resume latest"
                ) from e
            log.warning(
                "%s and Ray did not retry it: re-running the run from its latest checkpoint (failure %d of "
                "train.max_failures=%d)", faults.describe(e), failures, budget,
            )  # fmt: skip


def torch_trainer(spec: RunSpec, max_failures: int, callbacks: list[Any]) -> Any:
    """The TorchTrainer of `spec`'s run, its workers given `spec` itself; `callbacks` are Ray Train's, in its
    controller (the spec's step callbacks run in the workers' loop: jobs/training/callbacks.py)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.training.ray_worker import train_func
    from jobs.training.torch_backend import FaultTolerantTorchConfig

    cfg, train = spec.cfg, spec.cfg.train
    resources = {"CPU": train.cpus_per_worker, **({"GPU": 1} if train.use_gpu else {})}
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if not train.use_gpu:
        env_vars["DS_ACCELERATOR"] = "cpu"  # must be set before deepspeed is imported in the worker
    return TorchTrainer(
        train_func,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker=resources,
            placement_strategy=train.placement_strategy,
        ),
        torch_config=FaultTolerantTorchConfig(backend="nccl" if train.use_gpu else "gloo"),
        run_config=RunConfig(
            name=spec.folder.name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            # Ray keeps the `keep_checkpoints` best by val/auc AND always the latest reported one (never
            # deleted), so the resume point is the newest checkpoint whatever its score.
            checkpoint_config=CheckpointConfig(
                num_to_keep=train.keep_checkpoints, checkpoint_score_attribute="val/auc", checkpoint_score_order="max"
            ),
            worker_runtime_env={"env_vars": env_vars},
            callbacks=callbacks,
        ),
    )
