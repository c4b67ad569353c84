"""One training step of the tiny model through a real DeepSpeed engine per precision (one process, gloo, CPU).

    python tests/ds_precision.py OUT STAGE fp32 bf16-autocast ...   -> OUT/<precision>.pt

Every precision starts from the same weights and batch. Saved per precision: the eval-mode probabilities of
the initial weights (through the engine's forward), the train-mode loss, the dtypes of every parameter and
buffer after the step, the trainable weights after the step, and the dtype the loop moves inputs to
(engine.compute_dtype).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from ds_one_process import TEXT, fixed_batch, one_process_group, tiny_config, tiny_engine

from jobs.training.engine import compute_dtype, to_device
from model.loss import heatmap_loss


def main(out: Path, stage: int, precisions: list[str]) -> None:
    batch = fixed_batch()
    out.mkdir(parents=True, exist_ok=True)
    for precision in precisions:
        cfg = tiny_config(stage, precision)
        torch.manual_seed(0)
        engine = tiny_engine(cfg)
        dtype = compute_dtype(engine)
        moved = to_device(batch, torch.device("cpu"), dtype)
        engine.eval()  # the initial weights' predictions, through the engine's forward (its autocast)
        with torch.no_grad():
            probs = engine(moved["image"], moved["points"], TEXT)
        engine.train()
        loss = heatmap_loss(engine(moved["image"], moved["points"], TEXT).float(), moved["label"].float())
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


if __name__ == "__main__":
    with one_process_group():
        main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
