"""One training step of the tiny model through a real DeepSpeed engine per precision (one process, gloo, CPU).

    python tests/ds_precision.py OUT STAGE fp32 bf16-autocast ...   -> OUT/<precision>.pt

Every precision starts from the same weights and batch. Saved per precision: the eval-mode probabilities of
the initial weights (through the engine's forward), the train-mode loss, the dtypes of every parameter and
buffer after the step, the trainable weights after the step, and the dtype the loop moves inputs to
(engine.compute_dtype).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(out: Path, stage: int, precisions: list[str]) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    import torch.distributed as dist
    from tiny import tiny_model_config

    from jobs.experiment_config import ExperimentConfig
    from jobs.training.engine import build_engine, compute_dtype, to_device
    from model.lmaffordance3d import build_model
    from model.loss import heatmap_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=0, world_size=1)
    generator = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(3, 3, 64, 64, generator=generator),
        "points": torch.randn(3, 1, 3, 256, generator=generator),
        "label": torch.rand(3, 1, 256, generator=generator),
    }
    text = ["grasp the mug", "sit on the chair please", "open it"]
    out.mkdir(parents=True, exist_ok=True)
    for precision in precisions:
        cfg = ExperimentConfig()
        cfg.model = tiny_model_config()
        cfg.train.zero_stage, cfg.train.precision, cfg.train.lr, cfg.data.batch_size = stage, precision, 1e-3, 3
        torch.manual_seed(0)
        engine = build_engine(build_model(cfg.model, pretrained=False), cfg, 1, 10)
        dtype = compute_dtype(engine)
        moved = to_device(batch, torch.device("cpu"), dtype)
        engine.eval()  # the initial weights' predictions, through the engine's forward (its autocast)
        with torch.no_grad():
            probs = engine(moved["image"], moved["points"], text)
        engine.train()
        loss = heatmap_loss(engine(moved["image"], moved["points"], text).float(), moved["label"].float())
        engine.backward(loss)
        engine.step()
        module = engine.module
        torch.save(
            {
                "probs": probs.float(),
                "probs_dtype": str(probs.dtype),
                "loss": loss.item(),
                "input_dtype": str(dtype),
                "param_dtypes": {n: str(p.dtype) for n, p in module.named_parameters() if p.requires_grad},
                "buffer_dtypes": {n: str(b.dtype) for n, b in module.named_buffers() if b.is_floating_point()},
                "weights": {k: v.detach().float().clone() for k, v in module.trainable_state_dict().items()},
            },
            out / f"{precision}.pt",
        )
        engine.destroy()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
