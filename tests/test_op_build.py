"""A DeepSpeed op build killed midway leaves torch's baton file; the next worker removes it instead of waiting on
it forever, and builds with the environment's ninja whatever ninja comes first on its PATH
(jobs/training/op_build.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds the comm op with gcc into its own folder (~1 min)
REPO = Path(__file__).resolve().parents[1]
LOAD = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from jobs.training.op_build import SHM_COMM, load_cpu_ops
load_cpu_ops((SHM_COMM,))
print("loaded")
"""


def _decoy_ninja(folder: Path) -> Path:
    """A `ninja` that only records that it ran: a machine's own ninja, whose build log the environment's reads as
    unreadable (and the other way round), so that each rebuilt everything after the other."""
    folder.mkdir()
    decoy = folder / "ninja"
    decoy.write_text(f"#!/bin/sh\necho \"$@\" >> {folder / 'ran'}\nexit 1\n")
    decoy.chmod(0o755)
    return folder


def test_a_baton_left_by_a_killed_build_is_removed_not_waited_on(tmp_path):
    # A folder of its own: the machine's extensions folder is shared with every other DeepSpeed run on it.
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}
    decoy = _decoy_ninja(tmp_path / "machine-bin")
    env["PATH"] = f"{decoy}:{env.get('PATH', '')}"
    find = "from jobs.training.op_build import build_folder; print(build_folder('deepspeed_shm_comm'))"
    folder = Path(subprocess.run([sys.executable, "-c", find], env=env, cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.strip())  # fmt: skip
    assert folder.is_relative_to(tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    baton = folder / "lock"
    baton.touch()  # what a build killed between torch's O_EXCL create and its unlink leaves
    done = subprocess.run([sys.executable, "-c", LOAD], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=400)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("loaded"), done.stderr[-2000:]
    assert "did not finish (its process died)" in done.stderr and not baton.exists()
    assert list(folder.glob("*.so"))  # built there, past the baton
    assert not (decoy / "ran").exists()  # by the environment's ninja, not the first on the PATH
