"""Rank 0's metrics and tags on their way to MLflow: queued by the training loop, sent by one background thread.

Training never waits on tracking: `put` only appends to a queue. The sender thread sends the queue in order (a
metric keeps the step and time it was logged at), and when the server does not answer it keeps the points, waits
(doubling up to BACKOFF_MAX_S) and tries again, so an outage of the tracking server delays points instead of losing
them. The queue is bounded (MAX_PENDING points); past the bound, and whatever is still unsent when the run ends
(`close` waits at most its timeout), goes to a JSON-lines file in the run folder, announced in one line.

A kept checkpoint travels the same queue (CheckpointRecord, sent on its own): its LoggedModel is created and the
validation metrics measured on it are logged linked to it (jobs/checkpoint_models.py), in order with the
points around it. A server that refuses LoggedModels for good (4xx: an MLflow 2 server) still gets the metrics.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("lma3d.train.mlflow")

MAX_PENDING = 100_000  # points kept in memory while the server is away (~100 bytes each)
BATCH_METRICS, BATCH_TAGS = 1000, 100  # MLflow's log_batch limits per request
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class Point:
    """A metric value (`tag` False) or a tag (`tag` True; `value` is its string)."""

    key: str
    value: Any
    step: int
    timestamp_ms: int
    tag: bool = False


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint to record as a LoggedModel of the run, with the validation metrics measured on it (logged on
    the run too: they are not sent as Points)."""

    name: str
    step: int
    path: str
    metrics: dict[str, float]
    timestamp_ms: int
    kind: str = "checkpoint"  # tells it from a Point in the unsent file


Item = Point | CheckpointRecord


class Outbox:
    def __init__(self, tracking_uri: str, run_id: str, unsent_path: Path | None, backoff_s: float = 1.0) -> None:
        self.tracking_uri, self.run_id, self.unsent_path = tracking_uri, run_id, unsent_path
        self.backoff_s = backoff_s
        self.pending: deque[Item] = deque()
        self.models_refused = False  # the server answered 4xx to a LoggedModel call: metrics only from then on
        self.spilled = 0
        self.sending = 0  # points taken off the queue by a request in flight
        self.failing_since: float | None = None
        self.closed = False
        self.wake = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="lma3d-mlflow-outbox", daemon=True)
        self.thread.start()

    def put(self, points: list[Item]) -> None:
        with self.wake:
            room = MAX_PENDING - len(self.pending)
            self.pending.extend(points[:room])
            if len(points) > room:
                self._spill(points[room:])
            self.wake.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until everything put so far was sent (True) or `timeout` passed (False)."""
        deadline = time.monotonic() + timeout
        with self.wake:
            while self.pending or self.sending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.wake.wait(min(left, 0.5))
        return True

    def close(self, timeout: float) -> int:
        """Send what is left within `timeout`, stop the thread, write the rest to the unsent file; returns how
        many points did not reach MLflow (spilled ones included)."""
        self.flush(timeout)
        with self.wake:
            self.closed = True
            self.wake.notify_all()
        self.thread.join(timeout=5)
        with self.wake:
            rest = list(self.pending)
            self.pending.clear()
        if rest:
            self._spill(rest)
        if self.spilled:
            where = self.unsent_path or "nowhere (no local run folder)"
            log.warning("MLflow at %s did not take %d metric/tag points of run %s: written to %s",
                        self.tracking_uri, self.spilled, self.run_id, where)  # fmt: skip
        return self.spilled

    # ---- the sender thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        from mlflow.tracking import MlflowClient

        client, backoff = MlflowClient(self.tracking_uri), self.backoff_s
        while True:
            with self.wake:
                while not self.pending and not self.closed:
                    self.wake.wait()
                if self.closed:
                    return
                batch = self._take()
            try:
                self._send(client, batch)
            except Exception as e:  # noqa: BLE001 - any failure of the server: keep the points, try again later
                with self.wake:
                    self.pending.extendleft(reversed(batch))
                    self.sending = 0
                    if self.failing_since is None:
                        self.failing_since = time.monotonic()
                        log.warning("MLflow at %s does not answer (%s): keeping %d points, sending them when it "
                                    "answers again", self.tracking_uri, _first_line(e), len(self.pending))  # fmt: skip
                    deadline = time.monotonic() + backoff
                    while not self.closed and time.monotonic() < deadline:  # put() notifies too: keep waiting
                        self.wake.wait(deadline - time.monotonic())
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            with self.wake:
                self.sending = 0
                if self.failing_since is not None:
                    log.info("MLflow answers again after %.0f s: sending the kept points",
                             time.monotonic() - self.failing_since)  # fmt: skip
                    self.failing_since = None
                self.wake.notify_all()
            backoff = self.backoff_s

    def _take(self) -> list[Item]:
        """The next request's points, in queue order: up to MLflow's limits of metrics and tags; a checkpoint alone."""
        if self.pending and isinstance(self.pending[0], CheckpointRecord):
            self.sending = 1
            return [self.pending.popleft()]
        batch, metrics, tags = [], 0, 0
        while self.pending:
            point = self.pending[0]
            if isinstance(point, CheckpointRecord):
                break
            if (tags if point.tag else metrics) >= (BATCH_TAGS if point.tag else BATCH_METRICS):
                break
            batch.append(self.pending.popleft())
            tags, metrics = tags + point.tag, metrics + (not point.tag)
        self.sending = len(batch)
        return batch

    def _send(self, client: Any, batch: list[Item]) -> None:
        from mlflow.entities import Metric, RunTag

        if isinstance(batch[0], CheckpointRecord):
            self._send_checkpoint(client, batch[0])
            return
        metrics = [Metric(p.key, float(p.value), p.timestamp_ms, p.step) for p in batch if not p.tag]
        tags = [RunTag(p.key, str(p.value)) for p in batch if p.tag]
        client.log_batch(self.run_id, metrics=metrics, tags=tags)

    def _send_checkpoint(self, client: Any, record: CheckpointRecord) -> None:
        from mlflow.entities import Metric

        from jobs import checkpoint_models

        if not self.models_refused:
            try:
                checkpoint_models.record(client, self.run_id, record.name, record.step, record.path, record.metrics,
                                         record.timestamp_ms)  # fmt: skip
                return
            except Exception as e:
                if not _refused_for_good(e):
                    raise  # the server is away: kept and sent again
                self.models_refused = True
                log.warning("MLflow at %s does not take LoggedModels (%s): checkpoints stay run tags only",
                            self.tracking_uri, _first_line(e))  # fmt: skip
        metrics = [Metric(k, float(v), record.timestamp_ms, record.step) for k, v in record.metrics.items()]
        if metrics:
            client.log_batch(self.run_id, metrics=metrics)

    def _spill(self, points: list[Item]) -> None:
        self.spilled += len(points)
        if self.unsent_path is None:
            return
        try:
            self.unsent_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.unsent_path, "a") as out:
                out.writelines(json.dumps(asdict(p)) + "\n" for p in points)
        except OSError as e:
            log.warning("could not write unsent MLflow points to %s: %s", self.unsent_path, e)


def _refused_for_good(error: BaseException) -> bool:
    """A 4xx answer other than 429 (the request itself is refused: sending it again changes nothing)."""
    status = getattr(error, "get_http_status_code", lambda: 500)()
    return 400 <= status < 500 and status != 429


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"
