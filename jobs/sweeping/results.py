"""What a sweep leaves behind: the MLflow parent run (search space, trials table, best trial's metrics), the
trials' child runs closed with their real status, trials.csv and best.json."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs import tracking
from jobs.checkpoint_meta import CHECKPOINT_TAG_PREFIX, SCORE_KEY, validated_score

SWEEP_KIND = "sweep"
TRIAL_COLUMNS = (
    "trial", "status", "reports", "best", "best_step", "last", "run_name", "mlflow_run_id", "checkpoint", "error"
)
ERROR_TAG = "lma3d.sweep.error"
"""On an errored trial's child run: the error's root cause, one line (jobs.entry.root_cause)."""
FAILED_TRIALS_TAG = "lma3d.sweep.failed_trials"
"""On the parent run: `<trial>: <error>` per errored trial, one a line."""


@dataclass
class SweepSummary:
    folder: Path
    parent_run_id: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    interrupted: bool = False

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The trials that errored (each row's `error` says why)."""
        return [t for t in self.trials if t["status"] == "ERROR"]

    def table(self, keys: list[str]) -> str:
        header = f"{'trial':<14}{'status':<10}{'reports':>8}{'best':>9}{'last':>9}  " + "  ".join(keys)
        lines = [header]
        for t in self.trials:
            values = "  ".join(_short(t["overrides"].get(k)) for k in keys)
            lines.append(
                f"{t['trial']:<14}{t['status']:<10}{t['reports']:>8}{_short(t['best']):>9}{_short(t['last']):>9}  "
                + values
            )
        return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def start_parent_run(cfg: Any, spec: Any, space: dict[str, tuple[str, list[Any]]]) -> str:
    """The sweep's MLflow run: tagged as a sweep, the search space as an artifact."""
    import yaml
    from mlflow.tracking import MlflowClient

    uri = cfg.tracking_uri
    tracking.check_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = tracking.ensure_experiment(
        client, cfg.experiment_name, tracking.local_artifact_location(uri, cfg.workdir)
    )
    tags = {"lma3d.kind": SWEEP_KIND, "mlflow.source.name": "lma3d sweep", "lma3d.sweep": spec.name}
    params = {"sweep.trials": spec.trials, "sweep.metric": spec.metric, "sweep.mode": spec.mode,
              "sweep.scheduler": spec.scheduler, "sweep.grace_period": spec.grace_period}  # fmt: skip
    run_id = tracking.create_run(client, experiment_id, spec.name, tags, params, "")
    text = yaml.safe_dump({k: {kind: args} for k, (kind, args) in space.items()}, sort_keys=False)
    client.log_text(run_id, text, "sweep/search_space.yaml")
    return run_id


def summarise(grid: Any, spec: Any, setup: dict[str, Any], folder: Path) -> SweepSummary:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(setup["tracking_uri"])
    children = _children(client, setup)
    summary = SweepSummary(folder, setup["parent_run_id"])
    # Ctrl-C leaves trials neither terminated (finished or stopped by the scheduler) nor errored.
    summary.interrupted = grid.num_terminated + grid.num_errors < spec.trials
    states = _trial_states(grid)
    for result in grid:
        summary.trials.append(_trial_row(result, spec, setup, children, client, summary.interrupted, states))
    summary.trials.sort(key=lambda t: t["trial"])
    ranked = [t for t in summary.trials if not math.isnan(t["best"])]
    if ranked:
        pick = max if spec.mode == "max" else min
        summary.best = pick(ranked, key=lambda t: t["best"])
    _write(summary, spec, setup, client)
    return summary


def _children(client: Any, setup: dict[str, Any]) -> dict[str, Any]:
    """The sweep's child runs by their run key (`<runs folder>/<run name>`)."""
    parent = client.get_run(setup["parent_run_id"])
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{setup['parent_run_id']}'"
    )
    return {r.data.tags.get(tracking.RUN_KEY_TAG): r for r in runs}


def _trial_states(grid: Any) -> dict[str, str]:
    """Tune's status of each trial (TERMINATED: finished or stopped by the scheduler; ERROR; PENDING; RUNNING).
    ResultGrid keeps them on its analysis object only (num_terminated / num_errors read the same list)."""
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    return {t.trial_id: t.status for t in trials}


def _trial_row(
    result: Any, spec: Any, setup: dict, children: dict, client: Any, interrupted: bool, states: dict[str, str]
) -> dict[str, Any]:
    """One trial from its MLflow child run (the record that survives a restore: Tune's own result frame of a
    trial finished before a Ctrl-C is not reloaded) and Tune's view of its status and values."""
    from jobs.entry import root_cause

    trial_id = (result.metrics or {}).get("trial_id") or _trial_id(result.path)
    run_name = f"{setup['name']}-{trial_id}"
    child = children.get(f"{setup['runs']}/{run_name}")
    history = _history(client, child, spec.metric)
    pick = max if spec.mode == "max" else min
    best_step, best_value = pick(history, key=lambda sv: sv[1]) if history else (None, float("nan"))
    error = root_cause(result.error) if result.error is not None else None
    tune_status = states.get(trial_id, "ERROR" if result.error else None)
    return {
        "trial": trial_id,
        "status": _close_child(client, child, tune_status, interrupted, error),
        "reports": len(history),
        "best": best_value,
        "best_step": best_step,
        "last": history[-1][1] if history else float("nan"),
        "run_name": run_name,
        "mlflow_run_id": child.info.run_id if child else None,
        "checkpoint": _checkpoint_at(client, child, best_step),
        "overrides": {k: _plain(v) for k, v in (result.config or {}).get("overrides", {}).items()},
        "metrics": _metrics_at(client, child, best_step),
        "error": error,
    }


def _trial_id(path: str) -> str:
    """`run_trial_<experiment>_<n>_...` (Tune's trial folder name) -> `<experiment>_<n>`."""
    parts = Path(path).name.split("_")
    return "_".join(parts[2:4]) if len(parts) >= 4 else Path(path).name


def _history(client: Any, child: Any, metric: str) -> list[tuple[int, float]]:
    """(step, value) of `metric` in step order, one per step (a resumed trial may log a step twice)."""
    if child is None:
        return []
    by_step = {m.step: m.value for m in client.get_metric_history(child.info.run_id, metric)}
    unvalidated = (lambda v: validated_score(v) is None) if metric == SCORE_KEY else math.isnan
    return [(s, v) for s, v in sorted(by_step.items()) if not unvalidated(v)]


def _checkpoint_at(client: Any, child: Any, step: int | None) -> str | None:
    """The kept checkpoint of `step` from the run's `checkpoint/<dir>` tags."""
    if child is None or step is None:
        return None
    for key, value in client.get_run(child.info.run_id).data.tags.items():
        if key.startswith(CHECKPOINT_TAG_PREFIX):
            entry = json.loads(value)
            if entry.get("step") == step:
                return entry.get("path")
    return None


def _metrics_at(client: Any, child: Any, step: int | None) -> dict[str, float]:
    """The training job's metrics logged at `step` (validation and training ones)."""
    if child is None or step is None:
        return {}
    values = {}
    for key in client.get_run(child.info.run_id).data.metrics:
        at_step = [m.value for m in client.get_metric_history(child.info.run_id, key) if m.step == step]
        if at_step:
            values[key] = at_step[-1]
    return values


def _close_child(
    client: Any, child: Any, tune_status: str | None, interrupted: bool, error: str | None = None
) -> str:
    """The trial's status, its child run closed to match. A trial the scheduler stopped is TERMINATED for Tune
    but its fit() was cut off (the run is left RUNNING): closed here as KILLED and tagged; an errored trial's run is
    closed FAILED, tagged with `error` (its root cause). After a Ctrl-C a running trial is left RUNNING: the resumed
    sweep continues it in the same run."""
    if child is None:
        return "ERROR" if tune_status == "ERROR" else "PENDING"
    status = child.info.status
    if status == "RUNNING" and interrupted:
        return "RUNNING"
    if tune_status == "TERMINATED" and status != "FINISHED":
        client.set_tag(child.info.run_id, "lma3d.sweep.stopped", "early (scheduler)")
        client.set_terminated(child.info.run_id, "KILLED")
        return "STOPPED"
    if tune_status == "ERROR" and status in ("RUNNING", "FAILED"):  # launch() leaves its run open (runner.py)
        if error:
            client.set_tag(child.info.run_id, ERROR_TAG, error[:MAX_TAG])
        if status == "RUNNING":
            client.set_terminated(child.info.run_id, "FAILED")
        return "ERROR"
    return {"FINISHED": "FINISHED", "FAILED": "ERROR", "KILLED": "STOPPED"}.get(status, status)


MAX_TAG = 5000
"""MLflow's limit on a tag value's length."""


def close_parent(client: Any, parent: str, trials: list[dict[str, Any]]) -> str:
    """Close the sweep's run: FAILED when no trial finished (none FINISHED, none stopped by the scheduler after
    reporting), else FINISHED; the errored trials and why as a tag. Returns the status."""
    failed = [t for t in trials if t["status"] == "ERROR"]
    if failed:
        lines = "\n".join(f"{t['trial']}: {t.get('error') or 'error'}" for t in failed)
        client.set_tag(parent, FAILED_TRIALS_TAG, lines[:MAX_TAG])
    status = "FINISHED" if any(t["status"] in ("FINISHED", "STOPPED") for t in trials) else "FAILED"
    client.set_terminated(parent, status)
    return status


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _write(summary: SweepSummary, spec: Any, setup: dict, client: Any) -> None:
    from mlflow.entities import Metric

    folder = summary.folder
    with (folder / "trials.csv").open("w", newline="") as f:
        keys = sorted({k for t in summary.trials for k in t["overrides"]})
        writer = csv.DictWriter(f, fieldnames=[*TRIAL_COLUMNS, *keys])
        writer.writeheader()
        for t in summary.trials:
            writer.writerow({**{c: t[c] for c in TRIAL_COLUMNS}, **t["overrides"]})
    parent = summary.parent_run_id
    client.log_artifact(parent, str(folder / "trials.csv"), "sweep")
    if summary.best is not None:
        best = summary.best
        document = {
            "sweep": setup["name"],
            "metric": spec.metric,
            "mode": spec.mode,
            "value": best["best"],
            "trial": best["trial"],
            "overrides": best["overrides"],
            "checkpoint": best["checkpoint"],
            "step": best["best_step"],
            "mlflow_run_id": best["mlflow_run_id"],
            "tracking_uri": setup["tracking_uri"],
            "metrics": best["metrics"],
        }
        (folder / "best.json").write_text(json.dumps(document, indent=2) + "\n")
        client.log_artifact(parent, str(folder / "best.json"), "sweep")
        values = [Metric(k, float(v), 0, best["best_step"] or 0) for k, v in best["metrics"].items()
                  if isinstance(v, int | float) and not isinstance(v, bool)]  # fmt: skip
        client.log_batch(parent, metrics=values)
        client.set_tag(parent, "lma3d.sweep.best_trial", best["trial"])
    if not summary.interrupted:
        close_parent(client, parent, summary.trials)
