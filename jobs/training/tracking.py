"""MLflow for `lma3d train`: one run per training job.

The driver checks the tracking server before Ray starts (an unreachable server is a clear error, not a
failure ten minutes into the job), creates the experiment and the run (or finds the run of a resumed
job) and logs params + the resolved YAML. Rank 0 of the workers then attaches to that run id
(`mlflow.start_run(run_id=...)`, system metrics on) and logs metrics, tags and weights. Metrics and tags go
through an outbox sent by a background thread (tracking_outbox.py): training never waits on the server, and an
outage delays points instead of losing them; other calls are retried with backoff and only warned about, so a
flaky server never kills training.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from jobs.tracking import retry
from jobs.training.tracking_outbox import CheckpointRecord, Outbox, Point

log = logging.getLogger("lma3d.train.mlflow")

UNSENT_FILE = "mlflow-unsent.jsonl"
"""In the run folder: the metric and tag points MLflow did not take before the run ended (one JSON object a line)."""


class RunLogger:
    """Rank 0's handle on the job's MLflow run; on other ranks every method is a no-op."""

    def __init__(
        self,
        enabled: bool,
        tracking_uri: str,
        run_id: str,
        system_metrics: bool = True,
        backoff_s: float = 1.0,
        unsent_path: Path | None = None,
        end_flush_s: float = 60.0,
    ) -> None:
        self.enabled = enabled and bool(run_id)
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.system_metrics, self.backoff_s = system_metrics, backoff_s
        self.unsent_path, self.end_flush_s = unsent_path, end_flush_s
        self.outbox: Outbox | None = None
        self.started = False
        self.logged_through: dict[str, int] = {}  # key -> last step the run holds for it (earlier attempts)
        self.replay_noted = False

    def start(self, node_id: str | None = None) -> None:
        if not self.enabled:
            return
        # MLflow's own HTTP retries back off for minutes; ours are shorter and never raise.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        import mlflow

        def start() -> bool:
            mlflow.set_tracking_uri(self.tracking_uri)
            if self.system_metrics and node_id:
                mlflow.system_metrics.set_system_metrics_node_id(node_id)
            if not _active(self.run_id):
                mlflow.start_run(run_id=self.run_id, log_system_metrics=self.system_metrics)
            return True

        self.started = bool(retry("start_run", start, backoff_s=self.backoff_s))
        if not self.started:
            log.warning("MLflow run %s could not be attached: this attempt trains without tracking", self.run_id)
            return
        steps = retry("get_run", lambda: last_steps(self.tracking_uri, self.run_id), backoff_s=self.backoff_s)
        self.logged_through = steps or {}  # unread: replayed steps are logged again
        self.outbox = Outbox(self.tracking_uri, self.run_id, self.unsent_path, backoff_s=self.backoff_s)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log `metrics` at `step`, except a key an earlier attempt of this run already logged at `step` or later.

        A resumed attempt trains the steps after its checkpoint again; the replay restores the RNG and the data
        position, so its values are those already logged (bitwise on CPU) and logging them again would only
        put a second point at the same step in MLflow."""
        if not self.started:
            return
        now = int(time.time() * 1000)
        self.outbox.put([Point(k, float(v), step, now) for k, v in self._fresh(metrics, step).items()])

    def checkpoint(self, name: str, step: int, path: str, metrics: dict[str, float]) -> None:
        """The kept checkpoint `name` (at `path`) as a LoggedModel of the run, with `metrics` (its validation) logged
        at `step` linked to it; sent by the outbox like the metrics (jobs/checkpoint_models.py)."""
        if self.started:
            now = int(time.time() * 1000)
            self.outbox.put([CheckpointRecord(name, step, path, self._fresh(metrics, step), now)])

    def _fresh(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        """`metrics` less the keys an earlier attempt of this run already logged at `step` or later."""
        fresh = {k: float(v) for k, v in metrics.items() if step > self.logged_through.get(k, -1)}
        if len(fresh) < len(metrics) and not self.replay_noted:
            log.info("step %d: already logged by an earlier attempt of this run; replayed steps are not logged again",
                     step)  # fmt: skip
            self.replay_noted = True
        return fresh

    def tags(self, tags: dict[str, Any]) -> None:
        if self.started and tags:
            now = int(time.time() * 1000)
            self.outbox.put([Point(k, str(v), 0, now, tag=True) for k, v in tags.items()])

    def dataset_inputs(self, shards: str, manifest: dict[str, Any], contexts: list[str]) -> None:
        """The shard folder's splits as the run's dataset inputs (jobs.dataset_inputs); logging it again on a resumed
        attempt changes nothing."""
        if self.started and manifest:
            from mlflow.tracking import MlflowClient

            from jobs.dataset_inputs import log_shard_inputs

            client = MlflowClient(self.tracking_uri)
            retry("log_inputs", lambda: log_shard_inputs(client, self.run_id, shards, manifest, contexts),
                  backoff_s=self.backoff_s)  # fmt: skip

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` for the metrics and tags logged so far to reach MLflow; True when they did."""
        return self.outbox is None or self.outbox.flush(timeout)

    def artifact(self, local_path: str | Path, artifact_path: str) -> None:
        if self.started:
            import mlflow

            retry(
                f"log_artifact {artifact_path}",
                lambda: mlflow.log_artifact(str(local_path), artifact_path),
                backoff_s=self.backoff_s,
            )

    def end(self, status: str = "FINISHED") -> None:
        if self.started:
            import mlflow

            self.outbox.close(self.end_flush_s)

            retry("end_run", lambda: mlflow.end_run(status=status), backoff_s=self.backoff_s)
            self.started = False


def last_steps(tracking_uri: str, run_id: str) -> dict[str, int]:
    """Each metric key of the run and the highest step it was logged at (one call: the run's latest metrics)."""
    from mlflow.tracking import MlflowClient

    # RunData.metrics keeps values only; its proto keeps each latest metric's step (the highest: MLflow orders
    # a key's points by step first).
    return {m.key: m.step for m in MlflowClient(tracking_uri).get_run(run_id).data.to_proto().metrics}


def _active(run_id: str) -> bool:
    import mlflow

    run = mlflow.active_run()
    return run is not None and run.info.run_id == run_id
