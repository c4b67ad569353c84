"""The frozen random `tiny` backbone is never saved, so every process and thread must rebuild the same one: its
weights may not depend on the process's global RNG (a serving replica loads a new model version on one thread
while requests run on others)."""

from __future__ import annotations

import sys
import threading

import torch

from model.config import ModelConfig
from model.language import load_backbone


def _tiny_weights() -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in load_backbone(ModelConfig(backbone="tiny"), pretrained=True).model.state_dict().items()
    }


def test_tiny_backbone_is_the_same_whatever_the_global_rng_does_meanwhile() -> None:
    torch.manual_seed(1)
    reference = _tiny_weights()
    stop = threading.Event()

    def reseed() -> None:  # what a concurrent request did: predict_batch seeded the global RNG per pass
        k = 0
        while not stop.is_set():
            torch.manual_seed(k)
            torch.rand(1)
            k += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the two threads often during the build
    thread = threading.Thread(target=reseed)
    thread.start()
    try:
        rebuilt = [_tiny_weights() for _ in range(3)]
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    for weights in rebuilt:
        assert weights.keys() == reference.keys()
        changed = [k for k in reference if not torch.equal(weights[k], reference[k])]
        assert not changed, f"rebuilt tiny backbone differs in {changed[:3]}"
