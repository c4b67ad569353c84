"""One writer at a time (pipeline/writer_lock.py): a second `lma3d shard` or `lma3d export` into an output another
process is writing exits 2 with one line naming the holder, a lock left by a killed writer is taken over, and two
shard jobs started together leave one writer's complete, verifiable folder. Real processes, real flocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from registered import export_tiny
from tiny import NUM_POINTS, tiny_overrides

from pipeline.shards.manifest import BANK_FILE, file_sha256, read_manifest, shard_entries
from pipeline.writer_lock import lock_path

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pipeline.writer_lock import exclusive
with exclusive(sys.argv[1], "test"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    from pipeline.synth.config import SynthConfig
    from pipeline.synth.generate import generate

    root = tmp_path_factory.mktemp("writers") / "raw"
    generate(SynthConfig(out=str(root), train_images=6, test_samples=2, points_per_object=3, num_points=NUM_POINTS,
                         image_size=32))  # fmt: skip
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _holder(target: Path) -> subprocess.Popen:
    """A process holding the lock of `target` until killed (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def _verb(verb: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"jobs.verbs.{verb}", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def _shard(raw: Path, out: Path) -> subprocess.CompletedProcess:
    return _verb("shard", "--source", str(raw), "--out", str(out), "--no-ray", "--num-points", str(NUM_POINTS))


def _refused_while_held(target: Path, verb: str, *args: str) -> str:
    """`lma3d VERB ARGS` while another process holds `target`'s lock: exit 2, one line naming that process."""
    holder = _holder(target)
    try:
        done = _verb(verb, *args)
    finally:
        holder.kill()
        holder.wait()
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"pid {holder.pid} on " in lines[0] and "since" in lines[0], lines[0]
    return lines[0]


def test_a_second_shard_job_into_a_held_out_folder_exits_2_naming_the_holder(raw, tmp_path):
    out = tmp_path / "shards"
    line = _refused_while_held(out, "shard", "--source", str(raw), "--out", str(out), "--no-ray", "--num-points",
                               str(NUM_POINTS))  # fmt: skip
    assert str(out) in line and "another shard folder writer" in line, line
    assert not out.exists() and not (tmp_path / ".shards.partial").exists()


def test_a_lock_left_by_a_killed_writer_is_taken_over(raw, tmp_path):
    out = tmp_path / "shards"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(out).exists()  # the dead writer's record is still there
    done = _shard(raw, out)
    assert done.returncode == 0, done.stderr
    assert read_manifest(out)["written"] > 0
    assert not lock_path(out).exists()  # the writer that took it over removed it when it ended


def test_two_shard_jobs_started_together_leave_one_complete_folder(raw, tmp_path):
    out = tmp_path / "shards"
    argv = ["--source", str(raw), "--out", str(out), "--no-ray", "--num-points", str(NUM_POINTS)]
    procs = [subprocess.Popen([sys.executable, "-m", "jobs.verbs.shard", *argv], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results  # the loser is refused, by the lock or (if it came later) by the existing folder
    loser = next(err for code, err in results if code == 2)
    assert "another shard folder writer" in loser or "exists" in loser, loser
    manifest = read_manifest(out)
    assert manifest["written"] > 0
    for entry in shard_entries(manifest, out):  # the manifest signs exactly the bytes the folder holds
        assert file_sha256(entry.path) == entry.sha256, entry.name
    assert file_sha256(out / BANK_FILE) == manifest["point_bank"]["sha256"]


def test_a_second_export_into_a_held_folder_exits_2_naming_the_holder(tmp_path):
    model = export_tiny(tmp_path / "model", seed=0)
    out = tmp_path / "exported"
    line = _refused_while_held(out, "export", "--checkpoint", str(model), "--out", str(out), f"workdir={tmp_path}")
    assert "export folder" in line, line
    assert not out.exists()


def test_a_second_training_job_on_a_held_run_exits_2_naming_the_holder(raw, tmp_path):
    from pipeline.shards.config import ShardConfig
    from pipeline.shards.job import run as shard

    shards = tmp_path / "shards"
    shard(raw, "agpil", shards, ShardConfig(samples_per_shard=3), NUM_POINTS, use_ray=False)
    storage = tmp_path / "runs"
    line = _refused_while_held(storage / "r1", "train", "--no-ray", "--run-name", "r1", f"workdir={tmp_path}",
                               f"train.storage_path={storage}", f"data.shards={shards}", *tiny_overrides())  # fmt: skip
    assert "training run" in line, line
    assert not (storage / "r1").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_second_sweep_driver_of_a_held_sweep_exits_2_naming_the_holder(raw, tmp_path):
    from pipeline.shards.config import ShardConfig
    from pipeline.shards.job import run as shard

    shards = tmp_path / "shards"  # the sweep's inputs are checked before its lock is taken: real ones
    shard(raw, "agpil", shards, ShardConfig(samples_per_shard=3), NUM_POINTS, use_ray=False)
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {choice: [0.001, 0.002]}\n")
    line = _refused_while_held(tmp_path / "sweeps" / "s1", "sweep", "--search", str(space), "--trials", "1", "--name",
                               "s1", f"workdir={tmp_path}", f"data.shards={shards}", *tiny_overrides())  # fmt: skip
    assert "another sweep writer" in line, line
