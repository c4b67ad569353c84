"""Resume never executes code from a checkpoint: a `__reduce__` payload planted in a real checkpoint (RNG file,
DeepSpeed model states, ZeRO optimizer shard) is refused with one line naming the file and exit 2, by
`lma3d train --resume PATH` and by the automatic resume of a run folder, and the payload never runs."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ds_one_process import run_script
from pickle_payload import TouchOnUnpickle
from tiny import synth_shards, tiny_overrides

from jobs.checkpoint_meta import META_FILE
from jobs.consolidate import UnsafeCheckpoint, safe_load
from jobs.training import checkpoint as ckpt
from jobs.training import rng_state
from jobs.verbs.train import main as train_main

# real DeepSpeed checkpoints and shards (Ray Data) are built once per module
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hostile_checkpoint")]
STEP_DIR = "checkpoint_step000000002"
MODEL_STATES = "global_step2/mp_rank_00_model_states.pt"
OPTIM_STATES = "global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ZeRO-2 checkpoint of the tiny model, written as training writes it."""
    out = tmp_path_factory.mktemp("ds")
    done = run_script("ds_checkpoint.py", str(out), "2")
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "zero2" / STEP_DIR


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_shards(tmp_path_factory.mktemp("data"))


def _plant(file: Path, marker: Path) -> None:
    """Rewrite a real checkpoint file with the payload added next to its real content."""
    content = safe_load(file, mmap=False)
    torch.save({**content, "payload": TouchOnUnpickle(marker)}, file)


def _train_args(shards: Path, workdir: Path, *extra: str) -> list[str]:
    overrides = tiny_overrides(**{"data.shards": str(shards), "workdir": str(workdir)})
    overrides += ["train.zero_stage=2", "train.precision=fp32", "train.val_every=0", "data.batch_size=2"]
    return [*extra, *overrides]


def _assert_refused(code: int, err: str, file: Path, marker: Path) -> None:
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("lma3d train: error: ") and str(file) in lines[0], lines
    assert not marker.exists()


def test_pickle_planted_in_the_rng_file_is_refused_by_resume_path(checkpoint, shards, tmp_path, capsys) -> None:
    folder = shutil.copytree(checkpoint, tmp_path / STEP_DIR)
    marker = tmp_path / "pwned"
    (folder / "rng_rank0.json").unlink()
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({**state, "payload": TouchOnUnpickle(marker)}, folder / "rng_rank0.pt")
    code = train_main(_train_args(shards, tmp_path / "work", "--resume", str(folder), "--run-name", "r"))
    _assert_refused(code, capsys.readouterr().err, folder / "rng_rank0.pt", marker)
    assert not (tmp_path / "work" / "runs" / "r").exists() and not (tmp_path / "work" / "mlflow.db").exists()


def test_pickle_planted_in_deepspeed_model_states_is_refused_by_resume_path(
    checkpoint, shards, tmp_path, capsys
) -> None:
    folder = shutil.copytree(checkpoint, tmp_path / STEP_DIR)
    marker = tmp_path / "pwned"
    _plant(folder / MODEL_STATES, marker)
    code = train_main(_train_args(shards, tmp_path / "work", "--resume", str(folder), "--run-name", "r"))
    _assert_refused(code, capsys.readouterr().err, folder / MODEL_STATES, marker)


def test_pickle_planted_in_an_optimizer_shard_is_refused_by_automatic_resume(
    checkpoint, shards, tmp_path, capsys
) -> None:
    run = tmp_path / "work" / "runs" / "auto"
    folder = shutil.copytree(checkpoint, run / STEP_DIR)
    # Ray Train's run snapshot registering the checkpoint: what makes `lma3d train` resume this run by itself.
    result = {"checkpoint_dir_name": STEP_DIR, "metrics": {"step": 2}}
    snapshot = {"checkpoint_results": [result], "latest_checkpoint_result": result}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    marker = tmp_path / "pwned"
    _plant(folder / OPTIM_STATES, marker)
    code = train_main(_train_args(shards, tmp_path / "work", "--run-name", "auto"))
    _assert_refused(code, capsys.readouterr().err, folder / OPTIM_STATES, marker)


def test_deepspeed_loading_itself_refuses_a_file_replaced_after_screening(checkpoint, tmp_path) -> None:
    folder = shutil.copytree(checkpoint, tmp_path / STEP_DIR)
    marker = tmp_path / "pwned"
    _plant(folder / MODEL_STATES, marker)
    done = run_script("ds_resume.py", str(folder), "2", "--unscreened")
    assert done.returncode == 3, done.stdout + done.stderr[-3000:]
    assert str(folder / MODEL_STATES) in done.stdout and not marker.exists()


def test_a_clean_checkpoint_restores_weights_and_the_json_rng_state(checkpoint) -> None:
    done = run_script("ds_resume.py", str(checkpoint), "2")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "loaded step 2 rng_restored True" in done.stdout


def test_rng_state_is_saved_as_json_and_restores_every_generator(tmp_path) -> None:
    path = rng_state.save(tmp_path, 0)
    first = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2).tolist())
    rng_state.apply(rng_state.read(path))
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(2).tolist()) == first
    assert json.loads(path.read_text())["format"] == "lma3d-rng-v1"


def test_an_old_pickled_rng_file_is_read_with_weights_only(tmp_path) -> None:
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(old, tmp_path / "rng_rank0.pt")  # the format before lma3d-rng-v1
    first = (random.random(), np.random.rand(), torch.rand(2).tolist())
    rng_state.apply(rng_state.read_legacy(tmp_path / "rng_rank0.pt"))
    assert (random.random(), np.random.rand(), torch.rand(2).tolist()) == first


def test_an_old_pickled_rng_file_with_a_payload_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"python": random.getstate(), "payload": TouchOnUnpickle(marker)}, tmp_path / "rng_rank0.pt")
    with pytest.raises(UnsafeCheckpoint, match="rng_rank0.pt"):
        rng_state.read_legacy(tmp_path / "rng_rank0.pt")
    assert not marker.exists()


def test_a_meta_tag_pointing_outside_the_checkpoint_is_refused(checkpoint, tmp_path) -> None:
    folder = shutil.copytree(checkpoint, tmp_path / STEP_DIR)
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "tag": "../elsewhere"}))
    with pytest.raises(ValueError, match="is not global_step<N>"):
        ckpt.screen(folder)
