"""Restore a checkpoint written by tests/ds_checkpoint.py into a fresh tiny DeepSpeed engine, as a training
worker does (jobs.training.checkpoint.load); run as a script, one process, gloo.

    python tests/ds_resume.py CHECKPOINT STAGE [--unscreened]

Prints `loaded step N rng_restored True|False` and exits 0, or prints the refusal and exits 3.
--unscreened skips the up-front screening (as if a file were replaced after it): DeepSpeed's own loading must
then still refuse it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ds_one_process import one_process_group, tiny_config, tiny_engine

from jobs.checkpoint_meta import read_meta
from jobs.consolidate import UnsafeCheckpoint
from jobs.training import checkpoint as ckpt
from jobs.training import rng_state


def main(folder: Path, stage: int, unscreened: bool) -> int:
    engine = tiny_engine(tiny_config(stage))
    if unscreened:
        ckpt.screen = read_meta  # the files are only seen by DeepSpeed's loading
    try:
        meta = ckpt.load(engine, folder, rank=0, world_size=1, zero_stage=stage)
    except UnsafeCheckpoint as e:
        print(f"refused: {e}")
        return 3
    saved = (
        json.loads(rng_state.file_for(folder, 0).read_text())["torch"] if rng_state.file_for(folder, 0).exists() else ""
    )
    restored = saved == rng_state.capture()["torch"]
    print(f"loaded step {meta['step']} rng_restored {restored}")
    engine.destroy()
    return 0


if __name__ == "__main__":
    with one_process_group():
        code = main(Path(sys.argv[1]), int(sys.argv[2]), "--unscreened" in sys.argv[3:])
    raise SystemExit(code)
