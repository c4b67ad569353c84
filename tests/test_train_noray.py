"""`lma3d train --no-ray`: the training loop in the driver's own process, one rank, no Ray imported; the same
checkpoints, MLflow run and resume as Ray Train at one worker (which the last test runs for comparison)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from train_data import REPO, TRAIN_IMAGES, build_shards, train_overrides

from jobs.experiment_config import ExperimentConfig
from jobs.training.schedule import original_lr
from jobs.typed_yaml import load

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train_noray")]
FIRST_STEPS, MORE_STEPS = 3, 5
# `lma3d train ARGS` in a fresh interpreter that says, after the run, whether Ray was ever imported.
RUNNER = (
    "import sys; from jobs.verbs import train; code = train.main(sys.argv[1:]); "
    "print('ray imported:', 'ray' in sys.modules); sys.exit(code)"
)


def _overrides(shards: Path, workdir: Path, max_steps: int) -> list[str]:
    return train_overrides(shards, workdir, num_workers=1, max_steps=max_steps, checkpoint_every=2, val_every=1)


def _no_ray(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "PYTHONBREAKPOINT": "pdb.set_trace"}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, "-c", RUNNER, "--no-ray", *args], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=600, input=stdin)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def _history(cfg: ExperimentConfig, run_id: str) -> dict[str, dict[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    keys = client.get_run(run_id).data.metrics
    return {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in keys}


def _artifacts(cfg: ExperimentConfig, run_id: str, path: str = "") -> set[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    out = set()
    for item in client.list_artifacts(run_id, path or None):
        out |= _artifacts(cfg, run_id, item.path) if item.is_dir else {item.path}
    return out


def _run_ids(cfg: ExperimentConfig) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    return [
        r.info.run_id for r in client.search_runs([client.get_experiment_by_name(cfg.experiment_name).experiment_id])
    ]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> Path:
    return build_shards(tmp_path_factory.mktemp("data"))  # the test session's Ray shards; training needs none


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory) -> dict:
    """Two --no-ray jobs of one run: FIRST_STEPS steps, then the same name again up to MORE_STEPS."""
    from jobs.run_folder import RunFolder

    workdir = tmp_path_factory.mktemp("noray")
    cfg = load(ExperimentConfig, None, _overrides(shards, workdir, FIRST_STEPS))
    first = _no_ray(["--run-name", "nr", *_overrides(shards, workdir, FIRST_STEPS)])
    (run_id,) = _run_ids(cfg)
    checkpoints = RunFolder(cfg.storage_path, "nr").registered()[1]
    latest = Path(checkpoints[-1]["path"])
    after_first = {"history": _history(cfg, run_id), "artifacts": _artifacts(cfg, run_id), "checkpoints": checkpoints,
                   "latest_files": {p.relative_to(latest) for p in latest.rglob("*")}}  # fmt: skip
    second = _no_ray(["--run-name", "nr", *_overrides(shards, workdir, MORE_STEPS)])
    return {"cfg": cfg, "run_id": run_id, "first": first, "second": second, "after_first": after_first}


def test_no_ray_run_trains_checkpoints_and_logs_one_mlflow_run(runs):
    after = runs["after_first"]
    history = after["history"]
    assert sorted(history["train/loss"]) == [1, 2, 3]
    assert {"train/lr", "train/grad_norm", "perf/samples_per_s", "perf/data_wait_frac"} <= set(history)
    assert set(history["val/auc"]) == {FIRST_STEPS}  # the last step validates
    assert [m["step"] for m in after["checkpoints"]] == [2, 3]
    assert {"weights/last/model.safetensors", "config/config.yaml"} <= after["artifacts"]
    assert {Path("global_step3/mp_rank_00_model_states.pt"), Path("rng_rank0.json")} <= after["latest_files"]


def test_no_ray_run_logs_its_shard_splits_as_training_and_validation_inputs_once(runs):
    from mlflow.tracking import MlflowClient

    run = MlflowClient(runs["cfg"].tracking_uri).get_run(runs["run_id"])  # after both jobs of the run
    contexts = sorted(t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context")
    assert contexts == ["training", "validation"]
    names = {i.dataset.name.split("/")[-1] for i in run.inputs.dataset_inputs}
    assert names == {"train", "test"}


def test_no_ray_rerun_with_the_same_name_resumes_at_its_checkpoint_in_the_same_mlflow_run(runs):
    cfg, run_id = runs["cfg"], runs["run_id"]
    assert f"resumed at step {FIRST_STEPS}" in runs["second"].stderr
    assert _run_ids(cfg) == [run_id]
    lrs = _history(cfg, run_id)["train/lr"]
    assert sorted(lrs) == list(range(1, MORE_STEPS + 1))  # no step logged twice, none missing
    t, per_epoch = cfg.train, TRAIN_IMAGES // 2
    for step, value in lrs.items():  # the schedule went on where it stopped
        expected = original_lr(step - 1, lr=t.lr, min_lr=t.min_lr, warmup_lr=t.warmup_lr, warmup_steps=t.warmup_steps,
                               epochs=t.epochs, steps_per_epoch=per_epoch)  # fmt: skip
        assert value == pytest.approx(expected, rel=1e-6)


def test_no_ray_process_never_imports_ray(runs):
    for job in ("first", "second"):
        assert "ray imported: False" in runs[job].stdout


def test_breakpoint_in_a_configured_step_callback_stops_the_no_ray_run_in_its_process(shards, tmp_path):
    callback = "train.step_callbacks=[tests.debug_callbacks.stop_at_first_step]"
    overrides = train_overrides(shards, tmp_path, max_steps=1)
    run = _no_ray(["--run-name", "pdb", *overrides, callback], stdin="p ('at step', event.step)\nc\n")
    assert "(Pdb) ('at step', 1)" in run.stdout


def test_no_ray_checkpoints_load_through_the_one_loader(runs):
    from jobs.loading import load as load_model
    from jobs.run_folder import RunFolder

    cfg, run_id = runs["cfg"], runs["run_id"]
    _, metas = RunFolder(cfg.storage_path, "nr").registered()
    # keep_checkpoints 2, as Ray keeps them: the 2 best by val/auc (steps 3 and 5 validated, 2 and 4 did not)
    assert [m["step"] for m in metas] == [3, 5]
    by_path = load_model(metas[-1]["path"])
    by_run = load_model(run_id, tracking_uri=cfg.tracking_uri)
    assert by_path.provenance["step"] == 5 and by_run.provenance["kind"] in ("checkpoint", "run")


def test_no_ray_and_ray_train_at_one_worker_log_the_same_losses_and_write_the_same_files(runs, tmp_path):
    from jobs.training.launcher import launch

    cfg = runs["cfg"]
    ray_cfg = replace(
        cfg,
        workdir=str(tmp_path),
        train=replace(cfg.train, storage_path=""),
        mlflow=replace(cfg.mlflow, tracking_uri=""),
    )
    summary = launch(ray_cfg, run_name="ray")
    ray_history, no_ray = _history(ray_cfg, summary.run_id), runs["after_first"]["history"]
    assert set(ray_history) == set(no_ray)  # the same metric keys
    for step, loss in ray_history["train/loss"].items():
        assert no_ray["train/loss"][step] == pytest.approx(loss, rel=1e-5)
    assert ray_history["val/auc"][FIRST_STEPS] == pytest.approx(no_ray["val/auc"][FIRST_STEPS], rel=1e-5)
    assert _artifacts(ray_cfg, summary.run_id) == runs["after_first"]["artifacts"]
    ray_files = {p.relative_to(summary.latest_checkpoint) for p in Path(summary.latest_checkpoint).rglob("*")}
    assert ray_files == runs["after_first"]["latest_files"]


def test_two_no_ray_runs_in_one_process_both_train(shards, tmp_path):
    # DeepSpeed caches groups of the first run's process group; the second run must not be handed them.
    from jobs.training.launcher import launch

    for i in range(2):
        cfg = load(ExperimentConfig, None, _overrides(shards, tmp_path / f"run{i}", 2))
        assert launch(cfg, run_name="twice", no_ray=True).last_step == 2
