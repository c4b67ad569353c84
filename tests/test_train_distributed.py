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


@pytest.fixture(scope="module")
def resumed(shards, tmp_path_factory):
    """`resumed(stage)`: a run of 2 steps checkpointing each, then the same run launched again up to step 4, at that
    ZeRO stage (once per module: several tests read the same runs). Stage 2 keeps its runs at a file:// URI."""
    done = {}

    def run(stage: int) -> tuple[ExperimentConfig, object, object]:
        if stage not in done:
            workdir = tmp_path_factory.mktemp(f"zero{stage}")
            storage = {"storage_path": (workdir / "shared" / "runs").as_uri()} if stage == 2 else {}
            cfg = _config(shards, workdir, zero_stage=stage, max_steps=2, checkpoint_every=1, **storage)
            first = launch(cfg, run_name="resume")
            second = launch(replace(cfg, train=replace(cfg.train, max_steps=4)), run_name="resume")
            done[stage] = (cfg, first, second)
        return done[stage]

    return run


@pytest.mark.parametrize("stage", [1, pytest.param(2, marks=pytest.mark.xdist_group("zero2")),
                                   pytest.param(3, marks=pytest.mark.xdist_group("zero3"))])  # fmt: skip
def test_zero_stage_trains_checkpoints_and_resumes_at_the_next_step_with_the_same_lr(resumed, stage):
    cfg, first, second = resumed(stage)
    assert first.last_step == 2 and first.latest_checkpoint.endswith("checkpoint_step000000002")
    assert second.mode == "resume" and second.last_step == 4 and second.run_id == first.run_id
    per_epoch = TRAIN_IMAGES // (2 * 2)
    lrs = _history(cfg, first.run_id, "train/lr")
    assert sorted(lrs) == [1, 2, 3, 4]  # one MLflow run, no step logged twice, none missing
    for step, value in lrs.items():
        assert value == pytest.approx(_lr(cfg, step - 1, per_epoch), rel=1e-6)


@pytest.mark.xdist_group("zero2")
def test_storage_path_as_a_file_uri_trains_checkpoints_and_resumes(resumed):
    cfg, first, second = resumed(2)
    uri = cfg.train.storage_path
    assert uri.startswith("file:///") and first.run_dir == f"{uri}/resume"
    storage = Path(uri.removeprefix("file://"))
    kept = sorted(p.name for p in storage.joinpath("resume").glob("checkpoint_step*"))  # the newest train.keep_*
    assert kept and kept[-1] == "checkpoint_step000000004" and second.latest_checkpoint.endswith(kept[-1])
    assert second.mode == "resume" and second.run_id == first.run_id
    assert not Path(cfg.workdir, "runs").exists()  # nothing fell back to the workdir


@pytest.mark.xdist_group("zero3")
def test_zero3_with_cpu_offload_trains_like_zero3_and_resumes(resumed, shards, tmp_path):
    # configs/agpil/full_seen_zero3_offload.yaml: optimizer state and parameters offloaded to the CPU, the optimizer
    # DeepSpeed's CPU Adam (ZeRO-Offload refuses a torch one); "slower; same numbers" as ZeRO-3 without offload.
    plain_cfg, plain, _ = resumed(3)
    offload_cfg = _config(shards, tmp_path / "offload", zero_stage=3, max_steps=2, checkpoint_every=1,
                          offload_optimizer="true", offload_params="true")  # fmt: skip
    first = launch(offload_cfg, run_name="offload")
    second = launch(replace(offload_cfg, train=replace(offload_cfg.train, max_steps=3)), run_name="offload")
    assert second.mode == "resume" and second.last_step == 3 and second.run_id == first.run_id
    losses = _history(offload_cfg, first.run_id, "train/loss")
    reference = _history(plain_cfg, plain.run_id, "train/loss")
    assert sorted(losses) == [1, 2, 3] and sorted(reference) == [1, 2, 3, 4]
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


@pytest.fixture(scope="module")
def killed_run(shards, tmp_path_factory) -> tuple[ExperimentConfig, object, FaultInjector]:
    """A 4-step run on MLflow's SQLite store whose rank 1 is SIGKILLed at step 3 and restarted by Ray Train."""
    workdir = tmp_path_factory.mktemp("killed")
    cfg = _config(shards, workdir, max_steps=4, checkpoint_every=1, max_failures=1, zero_stage=2, val_every=1)
    fault = FaultInjector(rank=1, step=3, marker=str(workdir / "killed"))
    return cfg, launch(cfg, run_name="fault", step_callbacks=[fault]), fault


@pytest.mark.xdist_group("killed")
def test_a_sigkilled_worker_restarts_from_the_last_checkpoint_and_finishes_in_one_mlflow_run(killed_run):
    cfg, summary, fault = killed_run
    assert Path(fault.marker).exists() and summary.last_step == 4
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(cfg.tracking_uri).search_runs(
        [MlflowClient(cfg.tracking_uri).get_experiment_by_name(cfg.experiment_name).experiment_id]
    )
    assert len(runs) == 1 and sorted(_history(cfg, summary.run_id, "train/loss")) == [1, 2, 3, 4]


def _assert_one_complete_run(cfg: ExperimentConfig, run_id: str, steps: int) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert params["train.zero_stage"] == "2" and params["model.backbone"] == "tiny"
    assert sorted(_history(cfg, run_id, "train/loss")) == list(range(1, steps + 1))
    assert set(_history(cfg, run_id, "val/auc")) == {steps}
    assert [a.path for a in client.list_artifacts(run_id, "config")] == ["config/config.yaml"]
    assert runs[0].data.tags.get("view") == "full"


@pytest.mark.xdist_group("killed")
def test_mlflow_sqlite_store_holds_one_run_with_params_metrics_and_config(killed_run):
    cfg, summary, _ = killed_run
    assert cfg.tracking_uri.startswith("sqlite:///")
    _assert_one_complete_run(cfg, summary.run_id, steps=4)


def test_mlflow_server_on_postgresql_receives_the_run(shards, tmp_path):
    bindir, why = find_postgres()
    if bindir is None:
        pytest.skip(f"PostgreSQL unavailable: {why}")
    with postgres_server(bindir, tmp_path / "pg") as database, mlflow_server(database, tmp_path / "pg") as uri:
        cfg = _config(shards, tmp_path, max_steps=3, val_every=1, zero_stage=2)
        cfg = replace(cfg, mlflow=replace(cfg.mlflow, tracking_uri=uri))
        _assert_one_complete_run(cfg, launch(cfg, run_name="tracked-remote").run_id, steps=3)
