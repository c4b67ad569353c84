"""Restore a checkpoint written by tests/ds_checkpoint.py into a fresh tiny DeepSpeed engine, as a training
worker does (jobs.training.checkpoint.load); run as a script, one process, gloo.

    python tests/ds_resume.py CHECKPOINT STAGE [--unscreened]

Prints `loaded step N rng_restored True|False` and exits 0, or prints the refusal and exits 3.
--unscreened skips the up-front screening (as if a file were replaced after it): DeepSpeed's own loading must
then still refuse it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ds_checkpoint import _free_port


def main(folder: Path, stage: int, unscreened: bool) -> int:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch
    import torch.distributed as dist
    from tiny import tiny_model_config

    from jobs.experiment_config import ExperimentConfig
    from jobs.training import checkpoint as ckpt
    from jobs.training import rng_state
    from jobs.training.consolidate import UnsafeCheckpoint
    from jobs.training.engine import build_engine
    from model.lmaffordance3d import build_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=0, world_size=1)
    cfg = ExperimentConfig()
    cfg.model = tiny_model_config()
    cfg.train.zero_stage, cfg.train.precision, cfg.train.lr, cfg.data.batch_size = stage, "fp32", 1e-3, 3
    engine = build_engine(build_model(cfg.model, pretrained=False), cfg, 1, 10)
    if unscreened:
        ckpt.screen = ckpt.read_meta  # the files are only seen by DeepSpeed's loading
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
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main(Path(sys.argv[1]), int(sys.argv[2]), "--unscreened" in sys.argv[3:]))
