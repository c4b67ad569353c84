"""lma3d sweep for real: Ray Tune over the training job on tiny shards, MLflow parent and child runs, best.json,
ASHA stopping a weak trial, and Ctrl-C then the same command resuming without re-running finished trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import synth_shards, tiny_overrides

from jobs.verbs.sweep import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> Path:
    return synth_shards(tmp_path_factory.mktemp("sweep-data"), train_images=8, test_samples=4, samples_per_shard=4)


def _args(shards: Path, workdir: Path, space: dict, *extra: str) -> list[str]:
    space_file = workdir / "space.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    space_file.write_text(json.dumps(space))  # JSON is YAML
    return [
        "--search", str(space_file), *extra, *tiny_overrides(), f"data.shards={shards}", f"workdir={workdir}",
        "data.batch_size=2", "data.eval_batch_size=4", "data.num_workers=0", "train.num_workers=1",
        "train.precision=fp32", "train.zero_stage=0", "train.warmup_steps=4", "train.log_every=1",
        "train.val_every=1", "mlflow.system_metrics=false",
    ]  # fmt: skip


def _runs(workdir: Path) -> tuple[object, list, dict]:
    """(client, parent runs tagged as sweeps, {parent id: [child runs]})."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    parents = [r for r in runs if r.data.tags.get("lma3d.kind") == "sweep"]
    children = {p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
                for p in parents}  # fmt: skip
    return client, parents, children


def _trace(client, run_id: str, workdir: Path) -> tuple:
    """What a re-run would change: the run's start, its val/auc history and its checkpoint folders."""
    run = client.get_run(run_id)
    history = [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, "val/auc")]
    folder = workdir / "sweeps" / "s3" / "runs" / run.info.run_name
    files = [p for p in folder.iterdir() if not p.name.startswith(".")]  # Ray Train rewrites its storage marker
    return run.info.start_time, history, sorted((p.name, p.stat().st_mtime_ns) for p in files)


def test_three_trials_interrupted_then_resumed_give_one_parent_three_children_and_best_json(shards, tmp_path):
    workdir = tmp_path / "work"
    space = {"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.weight_decay": {"choice": [0.0, 0.06]}}
    args = _args(shards, workdir, space, "--trials", "3", "--max-concurrent", "1", "--name", "s3", "train.epochs=2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "jobs.verbs.sweep", *args], cwd=tmp_path, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    # Trials run one at a time: a second trial's run folder means the first has finished training. Ctrl-C then.
    runs, deadline = workdir / "sweeps" / "s3" / "runs", time.monotonic() + 600
    while first.poll() is None and time.monotonic() < deadline:
        if runs.is_dir() and len([p for p in runs.iterdir() if not p.name.startswith(".")]) >= 2:  # not .X.lock
            break
        time.sleep(0.2)
    assert first.poll() is None, "ended before the interrupt:\n" + (tmp_path / "first.log").read_text()[-3000:]
    os.kill(first.pid, signal.SIGINT)  # Ctrl-C
    assert first.wait(timeout=180) != 0  # interrupted, not finished
    client, parents, children = _runs(workdir)
    finished = [c for p in parents for c in children[p.info.run_id] if c.info.status == "FINISHED"]
    assert finished, (tmp_path / "first.log").read_text()[-3000:]
    done_before = {c.info.run_id: _trace(client, c.info.run_id, workdir) for c in finished}

    assert main([*args]) == 0  # the same command resumes
    client, parents, children = _runs(workdir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kids = children[parents[0].info.run_id]
    assert len(kids) == 3 and all(k.info.status == "FINISHED" for k in kids)
    for run_id, trace in done_before.items():  # finished trials were not re-run
        assert _trace(client, run_id, workdir) == trace
    histories = {}
    for kid in kids:
        history = client.get_metric_history(kid.info.run_id, "val/auc")
        steps = [m.step for m in history]
        assert history and len(steps) == len(set(steps))  # validated, no step logged twice
        histories[kid.info.run_id] = max(m.value for m in history)
    best = json.loads((workdir / "sweeps" / "s3" / "best.json").read_text())
    best_run = max(histories, key=histories.get)
    assert best["mlflow_run_id"] == best_run and best["value"] == pytest.approx(histories[best_run])
    assert Path(best["checkpoint"], "lma3d_meta.json").exists()
    assert set(best["overrides"]) == set(space)
    trials = (workdir / "sweeps" / "s3" / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 3
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "sweep")}
    assert {"sweep/search_space.yaml", "sweep/trials.csv", "sweep/best.json"} <= artifacts
    assert client.get_run(parents[0].info.run_id).data.metrics["val/auc"] == pytest.approx(best["value"])


def test_asha_stops_a_weak_trial_at_its_first_round(shards, tmp_path):
    # train/lr is a metric whose order between trials is known before they run (it grows with train.lr), so
    # the scheduler's decision is deterministic. --seed 9 samples lr 1e-3 then 1e-4 (checked against Tune's
    # sampler): run one at a time, the second is below the first at round 1 and ASHA stops it there.
    workdir = tmp_path / "work"
    space = {"train.lr": {"choice": [1e-2, 1e-3, 1e-4]}}
    args = _args(shards, workdir, space, "--trials", "2", "--max-concurrent", "1", "--name", "asha", "--seed", "9",
                 "--scheduler", "asha", "--grace-period", "1", "--metric", "train/lr", "train.epochs=2")  # fmt: skip
    assert main(args) == 0
    rows = (workdir / "sweeps" / "asha" / "trials.csv").read_text().splitlines()
    header = rows[0].split(",")
    table = [dict(zip(header, row.split(","))) for row in rows[1:]]
    assert [float(t["train.lr"]) for t in table] == [1e-3, 1e-4]
    assert [t["status"] for t in table] == ["FINISHED", "STOPPED"]
    client, _, children = _runs(workdir)
    rounds = [len(client.get_metric_history(t["mlflow_run_id"], "val/auc")) for t in table]
    # One validated epoch per round; the second is stopped at round 1 (it may finish the epoch it is in by then).
    assert rounds[0] == 2 and rounds[1] < 2
    stopped = client.get_run(table[1]["mlflow_run_id"])
    assert stopped.info.status == "KILLED" and stopped.data.tags["lma3d.sweep.stopped"].startswith("early")


def test_an_errored_trial_is_named_with_its_reason_and_fails_the_command(shards, tmp_path, monkeypatch, capsys):
    # docs/sweeps.md's command as typed: data.shards and workdir relative to the folder the sweep is run from.
    # --seed 1 samples the callbacks [] then [fail_at_first_step] (checked against Tune's sampler): the first
    # trial finishes, the second dies of its own code at step 1.
    monkeypatch.chdir(shards.parent)
    workdir = Path("work-errored")
    space = {"train.step_callbacks": {"choice": [[], ["tests.debug_callbacks:fail_at_first_step"]]}}
    args = _args(Path("shards"), workdir, space, "--trials", "2", "--max-concurrent", "1", "--seed", "1",
                 "--name", "err", "train.epochs=1", "train.max_failures=0")  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.splitlines()
    named = [line for line in err if "injected fault at step 1" in line]
    assert len(named) == 1 and "RuntimeError" in named[0], err
    client, parents, children = _runs(shards.parent / workdir)
    kids = {k.info.status: k for k in children[parents[0].info.run_id]}
    assert sorted(kids) == ["FAILED", "FINISHED"]
    assert named[0].split()[1] in kids["FAILED"].info.run_name  # the line names the trial
    assert "RuntimeError: injected fault at step 1" in kids["FAILED"].data.tags["lma3d.sweep.error"]
    assert parents[0].info.status == "FINISHED"  # one trial finished: the sweep has a result
    best = json.loads((shards.parent / workdir / "sweeps" / "err" / "best.json").read_text())
    assert best["mlflow_run_id"] == kids["FINISHED"].info.run_id
