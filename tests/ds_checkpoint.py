"""Write real `lma3d train`-layout DeepSpeed checkpoints of the tiny model (run as a script, one process, gloo).

    python tests/ds_checkpoint.py OUT 0 1 2 3   -> OUT/zero{0,1,2,3}/checkpoint_step000000002/ ...

Each checkpoint is taken after two optimizer steps (so the weights are not the initial ones) with
jobs.training.checkpoint.save, exactly as training writes it. Beside it: reference.safetensors (the engine's
trainable weights), inputs.npz (a fixed batch) and reference_pred.npy (the engine's eval predictions on it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from ds_one_process import TEXT, fixed_batch, one_process_group, tiny_config, tiny_engine
from safetensors.torch import save_file

from jobs.checkpoint_meta import dir_name_for
from jobs.training import checkpoint as ckpt
from jobs.typed_yaml import to_dict


def main(out: Path, stages: list[int]) -> None:
    batch = fixed_batch()
    image, points, text = batch["image"], batch["points"], TEXT
    for stage in stages:
        cfg = tiny_config(stage)
        torch.manual_seed(stage)
        engine = tiny_engine(cfg)
        for _ in range(2):
            loss = (engine(image, points, text) - 0.3).pow(2).mean()
            engine.backward(loss)
            engine.step()
        folder = out / f"zero{stage}" / dir_name_for(2)
        ckpt.save(
            engine,
            folder,
            step=2,
            rank=0,
            meta={
                "config": to_dict(cfg),
                "backbone_id": "tiny",
                "zero_stage": stage,
                "world_size": 1,
                "scheduler": engine.lr_scheduler.state_dict(),
            },
        )
        module = engine.module.eval()
        with torch.no_grad():
            np.save(folder.parent / "reference_pred.npy", module(image, points, text).numpy())
        weights = {k: v.detach().clone().contiguous() for k, v in module.trainable_state_dict().items()}
        save_file(weights, str(folder.parent / "reference.safetensors"))
        np.savez(folder.parent / "inputs.npz", image=image.numpy(), points=points.numpy(), text=np.array(text))
        engine.destroy()


if __name__ == "__main__":
    with one_process_group():
        main(Path(sys.argv[1]), [int(s) for s in sys.argv[2:]])
