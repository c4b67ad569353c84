"""MLflow helpers every stage shares: reaching the store, the experiment, runs found by key or created with their
params, retries that warn instead of failing, the UI's links, and the run a job derived from a checkpoint (eval,
export) logs to. Each stage's own logging lives with it: training's RunLogger in jobs/training/tracking.py,
eval's results in jobs/evaluation/tracking.py."""

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

log = logging.getLogger("lma3d.mlflow")
T = TypeVar("T")

RUN_KEY_TAG = "lma3d.run_key"
"""`<storage_path>/<run name>`: how a resumed job finds its MLflow run."""
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
    return _ui_page(tracking_uri, f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else ""))


def version_url(tracking_uri: str, name: str, version: str) -> str:
    """A registered model version's page, in the model-training view (without the query the UI opens it in the
    GenAI view: checked in headless Chromium, MLflow 3.17)."""
    from urllib.parse import quote

    return _ui_page(tracking_uri, f"models/{quote(name, safe='')}/versions/{version}")


def _ui_page(tracking_uri: str, page: str) -> str:
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
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


SOURCE_TAG = "lma3d.source"
KIND_TAG = "lma3d.kind"


def choose_tracking_uri(configured: str, explicit: bool, recorded: str | None) -> str:
    """The user's explicit URI (config or $MLFLOW_TRACKING_URI) wins, then the one the checkpoint recorded,
    then the default (sqlite under the workdir)."""
    if explicit or not recorded:
        return configured
    return recorded


def explicit_tracking(cfg_uri: str) -> bool:
    return bool(cfg_uri or os.environ.get("MLFLOW_TRACKING_URI"))


def start_run(
    tracking_uri: str,
    *,
    parent_run_id: str | None,
    experiment: str,
    workdir: str,
    run_name: str,
    tags: dict[str, str],
    start_time_ms: int | None = None,
) -> str | None:
    """A child run of `parent_run_id` when it exists at tracking_uri, else a run in `experiment`; None if the
    server keeps failing. `start_time_ms` (epoch ms) backdates its start to when the work began: the run is
    created once there are results to log, so a failed evaluation leaves no run behind."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def create() -> str:
        client = MlflowClient(tracking_uri)
        all_tags = {"mlflow.source.git.commit": git_commit() or "", **tags}
        if parent_run_id:
            try:
                parent = client.get_run(parent_run_id)
            except MlflowException:
                log.warning("training run %s not found at %s: logging to a run of its own", parent_run_id, tracking_uri)
            else:
                all_tags |= {"mlflow.parentRunId": parent_run_id}
                return client.create_run(parent.info.experiment_id, start_time_ms, all_tags, run_name).info.run_id
        experiment_id = ensure_experiment(client, experiment, local_artifact_location(tracking_uri, workdir))
        return client.create_run(experiment_id, start_time_ms, all_tags, run_name).info.run_id

    return retry("create run", create)


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
