"""Write real `lma3d train`-layout DeepSpeed checkpoints of the tiny model (run as a script, one process, gloo).

    python tests/ds_checkpoint.py OUT 0 1 2 3   -> OUT/zero{0,1,2,3}/checkpoint_step000000002/ ...

Each checkpoint is taken after two optimizer steps (so the weights are not the initial ones) with
jobs.training.checkpoint.save, exactly as training writes it. Beside it: reference.safetensors (the engine's
trainable weights), inputs.npz (a fixed batch) and reference_pred.npy (the engine's eval predictions on it).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(out: Path, stages: list[int]) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file
    from tiny import tiny_model_config

    from jobs.experiment_config import ExperimentConfig
    from jobs.training import checkpoint as ckpt
    from jobs.training.engine import build_engine
    from jobs.typed_yaml import to_dict
    from model.lmaffordance3d import build_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=0, world_size=1)
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(3, 3, 64, 64, generator=generator)
    points = torch.randn(3, 1, 3, 256, generator=generator)
    text = ["grasp the mug", "sit on the chair please", "open it"]
    for stage in stages:
        cfg = ExperimentConfig()
        cfg.model = tiny_model_config()
        cfg.train.zero_stage, cfg.train.precision, cfg.train.lr, cfg.data.batch_size = stage, "fp32", 1e-3, 3
        torch.manual_seed(stage)
        engine = build_engine(build_model(cfg.model, pretrained=False), cfg, 1, 10)
        for _ in range(2):
            loss = (engine(image, points, text) - 0.3).pow(2).mean()
            engine.backward(loss)
            engine.step()
        folder = out / f"zero{stage}" / ckpt.dir_name_for(2)
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
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(s) for s in sys.argv[2:]])
