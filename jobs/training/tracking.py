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

import contextlib
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from jobs.entry import UserError
from jobs.training.tracking_outbox import CheckpointRecord, Outbox, Point

log = logging.getLogger("lma3d.train.mlflow")
T = TypeVar("T")

RUN_KEY_TAG = "lma3d.run_key"
"""`<storage_path>/<run name>`: how a resumed job finds its MLflow run."""
UNSENT_FILE = "mlflow-unsent.jsonl"
"""In the run folder: the metric and tag points MLflow did not take before the run ended (one JSON object a line)."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = (EXPERIMENT_KIND_TAG, "custom_model_development")
"""MLflow 3's experiment kind for model training ("Machine learning" in its UI), as opposed to genai_development."""
PARAM_BATCH = 100  # MLflow's log_batch limit on params per call
PARAM_KEY_MAX, PARAM_VALUE_MAX = 250, 6000  # MLflow's limits on a param's key and value


def mlflow_params(params: dict[str, Any]) -> list[Any]:
    """MLflow Param entities of `params`, keys and values cut to what MLflow accepts."""
    from mlflow.entities import Param

    return [Param(k[:PARAM_KEY_MAX], str(v)[:PARAM_VALUE_MAX]) for k, v in params.items()]


def local_artifact_location(tracking_uri: str, workdir: str) -> str | None:
    """For a local sqlite store, artifacts live beside it in <workdir>/mlartifacts (else the server decides)."""
    if tracking_uri.startswith("sqlite:"):
        return Path(workdir, "mlartifacts").resolve().as_uri()
    return None


def check_tracking_uri(tracking_uri: str, timeout: float = 5.0) -> None:
    """Raise UserError when the tracking store cannot be reached or created."""
    hint = "start the server or set MLFLOW_TRACKING_URI / mlflow.tracking_uri"
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise UserError(f"MLflow tracking server {tracking_uri}: /health answered {response.status}")
        except urllib.error.HTTPError as e:
            raise UserError(f"MLflow tracking server {tracking_uri}: /health answered {e.code}; {hint}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"MLflow tracking server {tracking_uri} is unreachable ({reason}); {hint}") from None
    elif tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"MLflow store {tracking_uri}: cannot create {folder} ({e.strerror})") from None
        if not os.access(folder, os.W_OK):
            raise UserError(f"MLflow store {tracking_uri}: {folder} is not writable")


# Set by the images (docker build --build-arg GIT_COMMIT=...) and by `lma3d submit` (the submitter's checkout):
# the code a Ray job runs has no .git beside it.
GIT_COMMIT_ENV = "LMA3D_GIT_COMMIT"


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD of the git checkout at `cwd`, else $LMA3D_GIT_COMMIT, else None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    return os.environ.get(GIT_COMMIT_ENV, "").strip() or None


def ray_submission_id() -> str | None:
    """The Ray job submission id when running as `ray job submit` / `lma3d submit` (else None)."""
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        return os.environ["RAY_JOB_SUBMISSION_ID"]
    try:
        job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    except json.JSONDecodeError:
        return None
    return (job_config.get("metadata") or {}).get("job_submission_id")


def ensure_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created if missing; either way marked a model-training experiment (EXPERIMENT_KIND)
    unless someone chose its kind already."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment {name!r} is deleted; restore it or choose mlflow.experiment")
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before this tag was set, or by hand
            retry("tag experiment kind", lambda: client.set_experiment_tag(experiment.experiment_id,
                                                                           *EXPERIMENT_KIND))  # fmt: skip
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location, tags=dict([EXPERIMENT_KIND]))


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The experiment's (or run's) page in the MLflow UI, in its model-training view: MLflow 3.17's UI picks the
    view from this `workflowType` query (else the user's last choice, GenAI at first), not from the experiment's
    kind tag. A local store's page is the one `mlflow ui` serves on its default address."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}/#/{page}?workflowType=machine_learning"


def run_page(tracking_uri: str, run_id: str | None) -> str | None:
    """The run's page in the model-training view (ui_url), None without a run or when the store cannot say."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not run_id:
        return None
    try:
        return ui_url(tracking_uri, MlflowClient(tracking_uri).get_run(run_id).info.experiment_id, run_id)
    except (MlflowException, OSError):
        return None


def find_run(client: Any, experiment_id: str, run_key: str) -> str | None:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", order_by=["attributes.start_time DESC"]
    )
    return runs[0].info.run_id if runs else None


def run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def create_run(
    client: Any, experiment_id: str, run_name: str, tags: dict[str, str], params: dict[str, Any], config_yaml: str
) -> str:
    """A new run holding the flattened params and the resolved config as config/config.yaml."""
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    items = mlflow_params(params)
    for start in range(0, len(items), PARAM_BATCH):
        client.log_batch(run_id, params=items[start : start + PARAM_BATCH])
    client.log_text(run_id, config_yaml, "config/config.yaml")
    return run_id


def retry(what: str, fn: Callable[[], T], attempts: int = 3, backoff_s: float = 1.0) -> T | None:
    """fn() with `attempts` tries and doubling backoff; on final failure a warning and None."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any tracking failure must not stop training
            if attempt == attempts:
                log.warning("MLflow %s failed %d times, skipped: %s", what, attempts, e)
                return None
            log.warning("MLflow %s failed (%s); retry %d/%d in %.0f s", what, e, attempt, attempts - 1, backoff_s)
            time.sleep(backoff_s)
            backoff_s *= 2
    return None


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
        at `step` linked to it; sent by the outbox like the metrics (jobs/training/checkpoint_models.py)."""
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


@contextlib.contextmanager
def tracking_uri_for_now(uri: str) -> Iterator[None]:
    """mlflow's fluent API (log_model) at `uri`, then the process as it was: mlflow.set_tracking_uri also sets
    $MLFLOW_TRACKING_URI, which would send every later run of this process (and its children) to `uri`."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_env, saved_uri = os.environ.get("MLFLOW_TRACKING_URI"), utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = saved_uri
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
