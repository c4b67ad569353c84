"""lma3d train for real: Ray Train with 2 CPU workers, DeepSpeed ZeRO, checkpoints, resume, a SIGKILLed worker,
and MLflow (SQLite, and a real `mlflow server` on PostgreSQL started on 127.0.0.1)."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from servers import find_postgres, mlflow_server, postgres_server
from tiny import synth_shards, tiny_overrides

from jobs.experiment_config import ExperimentConfig
from jobs.training.launcher import launch
from jobs.training.schedule import original_lr
from jobs.typed_yaml import load
from tests.fault_injection import FaultInjector

pytestmark = pytest.mark.slow
TRAIN_IMAGES = 24


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local) -> Path:
    return synth_shards(tmp_path_factory.mktemp("data"), train_images=TRAIN_IMAGES, test_samples=6)


def _config(shards: Path, workdir: Path, **train) -> ExperimentConfig:
    overrides = tiny_overrides(**{"data.shards": str(shards), "workdir": str(workdir)})
    overrides += ["data.batch_size=2", "data.eval_batch_size=3", "data.num_workers=0", "train.num_workers=2",
                  "train.precision=fp32", "train.epochs=4", "train.warmup_steps=10", "train.log_every=1",
                  "train.val_every=0", "mlflow.system_metrics=false"]  # fmt: skip
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load(ExperimentConfig, None, overrides)


def _history(cfg: ExperimentConfig, run_id: str, key: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(cfg.tracking_uri).get_metric_history(run_id, key)}


def _lr(cfg: ExperimentConfig, step: int, steps_per_epoch: int) -> float:
    t = cfg.train
    return original_lr(step, lr=t.lr, min_lr=t.min_lr, warmup_lr=t.warmup_lr, warmup_steps=t.warmup_steps,
                       epochs=t.epochs, steps_per_epoch=steps_per_epoch)  # fmt: skip


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_trains_checkpoints_and_resumes_at_the_next_step_with_the_same_lr(shards, tmp_path, stage):
    cfg = _config(shards, tmp_path, zero_stage=stage, max_steps=2, checkpoint_every=1)
    first = launch(cfg, run_name="resume")
    assert first.last_step == 2 and first.latest_checkpoint.endswith("checkpoint_step000000002")
    second = launch(replace(cfg, train=replace(cfg.train, max_steps=4)), run_name="resume")
    assert second.mode == "resume" and second.last_step == 4 and second.run_id == first.run_id
    per_epoch = TRAIN_IMAGES // (2 * 2)
    lrs = _history(cfg, first.run_id, "train/lr")
    assert sorted(lrs) == [1, 2, 3, 4]  # one MLflow run, no step logged twice, none missing
    for step, value in lrs.items():
        assert value == pytest.approx(_lr(cfg, step - 1, per_epoch), rel=1e-6)


def test_zero3_with_cpu_offload_trains_like_zero3_and_resumes(shards, tmp_path):
    # configs/agpil/full_seen_zero3_offload.yaml: optimizer state and parameters offloaded to the CPU, the optimizer
    # DeepSpeed's CPU Adam (ZeRO-Offload refuses a torch one); "slower; same numbers" as ZeRO-3 without offload.
    plain_cfg = _config(shards, tmp_path / "plain", zero_stage=3, max_steps=2)
    plain = launch(plain_cfg, run_name="plain")
    offload_cfg = _config(shards, tmp_path / "offload", zero_stage=3, max_steps=2, checkpoint_every=1,
                          offload_optimizer="true", offload_params="true")  # fmt: skip
    first = launch(offload_cfg, run_name="offload")
    second = launch(replace(offload_cfg, train=replace(offload_cfg.train, max_steps=3)), run_name="offload")
    assert second.mode == "resume" and second.last_step == 3 and second.run_id == first.run_id
    losses = _history(offload_cfg, first.run_id, "train/loss")
    reference = _history(plain_cfg, plain.run_id, "train/loss")
    assert sorted(losses) == [1, 2, 3] and sorted(reference) == [1, 2]
    for step in (1, 2):  # step 2 follows one update of each optimizer
        assert losses[step] == pytest.approx(reference[step], rel=1e-5)
    assert torch.isfinite(torch.tensor(losses[3]))


def test_existing_run_without_checkpoint_is_not_overwritten(shards, tmp_path):
    from jobs.entry import UserError

    cfg = _config(shards, tmp_path, max_steps=1)
    (Path(cfg.storage_path) / "taken").mkdir(parents=True)
    with pytest.raises(UserError, match="--overwrite"):
        launch(cfg, run_name="taken")


def _trained_weights(checkpoint: str) -> dict[str, torch.Tensor]:
    states = next(Path(checkpoint).glob("global_step*/mp_rank_00_model_states.pt"))
    module = torch.load(states, map_location="cpu", weights_only=False)["module"]
    return {k: v for k, v in module.items() if v.is_floating_point()}


def test_two_workers_with_batch_b_step_like_one_worker_with_batch_2b(shards, tmp_path):
    # BatchNorm in eval mode and the first FPS point make a sample's gradient independent of its batch mates;
    # each object has exactly `pairs` clouds, so every rank draws the same clouds for an image.
    common = dict(max_steps=1, norm_eval="true", lr=1e-3, warmup_steps=1, zero_stage=2)
    cfg2 = _config(shards, tmp_path / "two", **common)
    cfg1 = _config(shards, tmp_path / "one", **common, num_workers=1)
    cfg1 = replace(cfg1, data=replace(cfg1.data, batch_size=4, shuffle_buffer=1))
    cfg2 = replace(cfg2, data=replace(cfg2.data, shuffle_buffer=1, shards=str(shards)))
    two = _trained_weights(launch(cfg2, run_name="dp").latest_checkpoint)
    one = _trained_weights(launch(cfg1, run_name="dp").latest_checkpoint)
    moved = [k for k in one if not torch.equal(one[k], two[k])]
    assert moved  # sanity: the weights are not just the shared initialisation
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)


def test_a_sigkilled_worker_restarts_from_the_last_checkpoint_and_finishes_in_one_mlflow_run(shards, tmp_path):
    cfg = _config(shards, tmp_path, max_steps=4, checkpoint_every=1, max_failures=1, zero_stage=2)
    fault = FaultInjector(rank=1, step=3, marker=str(tmp_path / "killed"))
    summary = launch(cfg, run_name="fault", step_callbacks=[fault])
    assert Path(fault.marker).exists() and summary.last_step == 4
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(cfg.tracking_uri).search_runs(
        [MlflowClient(cfg.tracking_uri).get_experiment_by_name(cfg.experiment_name).experiment_id]
    )
    assert len(runs) == 1 and sorted(_history(cfg, summary.run_id, "train/loss")) == [1, 2, 3, 4]


def _assert_one_complete_run(cfg: ExperimentConfig, run_id: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert params["train.zero_stage"] == "2" and params["model.backbone"] == "tiny"
    assert sorted(_history(cfg, run_id, "train/loss")) == [1, 2, 3]
    assert set(_history(cfg, run_id, "val/auc")) == {3}
    assert [a.path for a in client.list_artifacts(run_id, "config")] == ["config/config.yaml"]
    assert runs[0].data.tags.get("view") == "full"


def test_mlflow_sqlite_store_holds_one_run_with_params_metrics_and_config(shards, tmp_path):
    cfg = _config(shards, tmp_path, max_steps=3, val_every=1, zero_stage=2)
    _assert_one_complete_run(cfg, launch(cfg, run_name="tracked").run_id)


def test_mlflow_server_on_postgresql_receives_the_run(shards, tmp_path):
    bindir, why = find_postgres()
    if bindir is None:
        pytest.skip(f"PostgreSQL unavailable: {why}")
    with postgres_server(bindir, tmp_path / "pg") as database, mlflow_server(database, tmp_path / "pg") as uri:
        cfg = _config(shards, tmp_path, max_steps=3, val_every=1, zero_stage=2)
        cfg = replace(cfg, mlflow=replace(cfg.mlflow, tracking_uri=uri))
        _assert_one_complete_run(cfg, launch(cfg, run_name="tracked-remote").run_id)
