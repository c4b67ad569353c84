"""Fast tests of the training glue that needs neither Ray nor a model: LR schedule, DeepSpeed JSON, run decisions,
MLflow reachability and retries. Expected LRs are computed by hand from the formulas in docs/original.md §3.1."""

from __future__ import annotations

import datetime as dt
import json
import socket

import pytest
import torch

from jobs.entry import UserError
from jobs.experiment_config import ExperimentConfig
from jobs.run_folder import RunFolder
from jobs.tracking import check_tracking_uri, retry
from jobs.training.deepspeed_config import deepspeed_config
from jobs.training.launcher import decide_start, default_run_name
from jobs.training.schedule import OriginalLRSchedule, original_lr
from jobs.training.train_config import TrainConfig

RECIPE = dict(lr=1e-4, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=4, epochs=4, steps_per_epoch=6)


def _schedule(**overrides: float) -> tuple[torch.optim.Optimizer, OriginalLRSchedule]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    return optimizer, OriginalLRSchedule(optimizer, **{**RECIPE, **overrides})


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1e-6),  # warm-up starts at warmup_lr
        (1, 1e-6 + 99e-6 * 1 / 4),  # 2.575e-5
        (3, 1e-6 + 99e-6 * 3 / 4),  # 7.525e-5
        (4, 1e-4),  # warm-up reached lr ...
        (5, 1e-4),  # ... and is capped there for the rest of epoch 0
        (6, 8.6819805e-5),  # epoch 1: 1e-5 + 4.5e-5 (1 + cos(pi/4)) = 1e-5 + 4.5e-5 * 1.70710678
        (11, 8.6819805e-5),  # constant within the epoch
        (12, 5.5e-5),  # epoch 2: 1e-5 + 4.5e-5 (1 + cos(pi/2))
        (18, 2.3180195e-5),  # epoch 3: 1e-5 + 4.5e-5 (1 - 0.70710678)
    ],
)
def test_original_lr_matches_hand_computed_values(step: int, expected: float) -> None:
    assert original_lr(step, **RECIPE) == pytest.approx(expected, rel=1e-7)


def test_warmup_never_reaches_lr_when_epoch_zero_is_shorter() -> None:
    recipe = {**RECIPE, "warmup_steps": 2000, "steps_per_epoch": 5}
    assert original_lr(4, **recipe) == pytest.approx(1e-6 + 99e-6 * 4 / 2000)  # 1.198e-6, last step of epoch 0
    assert original_lr(5, **recipe) == pytest.approx(8.6819805e-5)  # epoch 1 jumps to the cosine value


def test_scheduler_sets_the_optimizer_lr_of_each_step() -> None:
    optimizer, schedule = _schedule()
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([1e-6, 2.575e-5, 5.05e-5, 7.525e-5, 1e-4, 1e-4, 8.6819805e-5, 8.6819805e-5])


def test_scheduler_resumes_with_the_same_lr() -> None:
    optimizer, schedule = _schedule()
    for _ in range(7):
        optimizer.step()
        schedule.step()
    state = json.loads(json.dumps(schedule.state_dict()))  # it must survive lma3d_meta.json
    resumed_optimizer, resumed = _schedule()
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 7
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(8.6819805e-5)
    for _ in range(6):
        optimizer.step()
        schedule.step()
        resumed_optimizer.step()
        resumed.step()
        assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(5.5e-5)  # step 13 is in epoch 2


def _strings(tree: object) -> list[str]:
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in _strings(v)]
    return [tree] if isinstance(tree, str) else []


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_has_concrete_values_only(stage: int) -> None:
    config = deepspeed_config(TrainConfig(zero_stage=stage), micro_batch=3, world_size=2)
    assert "auto" not in _strings(config)
    assert config["zero_optimization"]["stage"] == stage


def test_deepspeed_train_batch_size_is_micro_times_accum_times_world() -> None:
    config = deepspeed_config(TrainConfig(grad_accum=2), micro_batch=3, world_size=4)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (3, 2)
    assert config["train_batch_size"] == 24


def test_deepspeed_offload_fields_follow_the_config() -> None:
    config = deepspeed_config(
        TrainConfig(zero_stage=3, offload_optimizer=True, offload_params=True, use_gpu=True), 1, 1
    )
    zero = config["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert "offload_optimizer" not in deepspeed_config(TrainConfig(zero_stage=2), 1, 1)["zero_optimization"]


@pytest.mark.parametrize("precision, bf16, fp16", [("bf16", True, False), ("fp32", False, False)])
def test_deepspeed_precision_flags(precision: str, bf16: bool, fp16: bool) -> None:
    config = deepspeed_config(TrainConfig(precision=precision), 1, 1)
    assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (bf16, fp16)


def test_deepspeed_fp16_without_gpu_is_refused() -> None:
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        deepspeed_config(TrainConfig(precision="fp16"), 1, 1)


def test_deepspeed_accepts_the_generated_config() -> None:
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig(deepspeed_config(TrainConfig(zero_stage=2, grad_accum=2, grad_clip=1.0), 3, 1))
    assert (parsed.train_batch_size, parsed.gradient_accumulation_steps, parsed.zero_optimization_stage) == (6, 2, 2)
    assert parsed.gradient_clipping == 1.0


def test_default_run_name_has_date_view_setting_lr_and_global_batch() -> None:
    cfg = ExperimentConfig()
    cfg.data.view, cfg.data.setting, cfg.data.batch_size, cfg.train.num_workers = "partial", "unseen", 6, 4
    assert default_run_name(cfg, dt.date(2026, 3, 9)) == "2026-03-09-partial-unseen-lr0.0001-bs24"


@pytest.mark.parametrize(
    "exists, has_ckpt, resume, overwrite, expected",
    [
        (False, False, None, False, "fresh"),
        (True, True, None, False, "resume"),  # auto-resume
        (True, True, "latest", False, "resume"),
        (True, True, None, True, "overwrite"),
        (False, False, None, True, "fresh"),
        (False, False, "/ckpt/dir", False, "from_path"),
    ],
)
def test_decide_start(exists: bool, has_ckpt: bool, resume: str | None, overwrite: bool, expected: str) -> None:
    assert decide_start("runs/x", exists, has_ckpt, resume, overwrite) == expected


@pytest.mark.parametrize(
    "exists, has_ckpt, resume, overwrite, message",
    [
        (True, False, None, False, "pass --overwrite"),  # never overwritten silently
        (False, False, "latest", False, "no checkpoint"),
        (True, True, "/ckpt/dir", False, "already exists"),
        (True, True, "latest", True, "exclude each other"),
    ],
)
def test_decide_start_refuses(exists: bool, has_ckpt: bool, resume: str | None, overwrite: bool, message: str) -> None:
    with pytest.raises(UserError, match=message):
        decide_start("runs/x", exists, has_ckpt, resume, overwrite)


def test_a_run_folder_lists_only_checkpoints_ray_registered(tmp_path) -> None:
    assert RunFolder(str(tmp_path), "missing").registered() == (False, [])
    run = tmp_path / "run"
    for step in (2, 4, 6):
        (run / f"checkpoint_step{step:09d}").mkdir(parents=True)
        meta = {"format": "lma3d-deepspeed-v1", "tag": f"global_step{step}", "step": step}
        (run / f"checkpoint_step{step:09d}" / "lma3d_meta.json").write_text(json.dumps(meta))
    assert RunFolder(str(tmp_path), "run").registered() == (True, [])  # no Ray snapshot: nothing was registered
    # Ray's snapshot lists what its controller registered; step 6 was written by an attempt that died first.
    snapshot = {
        "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_step000000002"}],
        "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_step000000004"},
    }
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    exists, metas = RunFolder(str(tmp_path), "run").registered()
    assert exists and [m["step"] for m in metas] == [2, 4]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_is_a_clear_error() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(UserError, match=f"MLflow tracking server {uri} is unreachable"):
        check_tracking_uri(uri, timeout=2)


def test_train_verb_stops_before_ray_when_tracking_is_unreachable(tmp_path, capsys) -> None:
    from tiny import synth_shards

    from jobs.verbs.train import main

    shards = synth_shards(tmp_path / "data")  # every input present: the server is the one problem
    uri = f"http://127.0.0.1:{_closed_port()}"
    code = main([f"workdir={tmp_path}", f"mlflow.tracking_uri={uri}", "train.run_name=r1", f"data.shards={shards}",
                 "model.resnet_weights=none", "model.backbone=tiny"])  # fmt: skip
    assert code == 2
    assert "unreachable" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "r1").exists()


def test_train_verb_refuses_to_overwrite_an_existing_run(tmp_path, capsys) -> None:
    from tiny import synth_shards, tiny_overrides

    from jobs.verbs.train import main

    shards = synth_shards(tmp_path / "data")  # valid inputs: the run folder is what is refused
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "keep.txt").write_text("x")
    code = main([f"workdir={tmp_path}", "train.run_name=r1", f"data.shards={shards}", *tiny_overrides()])
    assert code == 2
    assert "exists but has no checkpoint; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "runs" / "r1" / "keep.txt").exists()


def test_retry_tries_three_times_then_warns_without_raising(caplog) -> None:
    calls = []

    def flaky() -> None:
        calls.append(1)
        raise ConnectionError("server down")

    assert retry("log_metrics", flaky, backoff_s=0.0) is None
    assert len(calls) == 3
    assert "failed 3 times" in caplog.text


def test_retry_returns_the_value_once_a_retry_succeeds() -> None:
    outcomes = iter([ConnectionError("blip"), "ok"])

    def once_flaky() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry("set_tags", once_flaky, backoff_s=0.0) == "ok"


def test_eta_extrapolates_the_pace_since_the_start_of_this_fit(monkeypatch):
    import jobs.training.loop as loop

    monkeypatch.setattr(loop.time, "perf_counter", lambda: 130.0)
    # resumed at step 10, at step 20 after 30 s: 3 s a step, 80 steps left -> 240 s
    assert loop.eta((100.0, 10), 20, 100) == "eta 4:00"
    assert loop.eta((100.0, 10), 20, 1300) == "eta 1:04:00"
    assert loop.eta((100.0, 20), 20, 100) == "eta -"  # nothing done yet in this fit
