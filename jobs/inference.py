"""The one prediction path of eval, predict, the registered model and serving (models come from jobs.loading).

`predict_batch` is deterministic: eval mode, no autograd, a fixed seed per call, FPS from point 0. With
`votes` K > 1 (LASO's test-time averaging) pass v > 0 starts FPS at a point chosen by a hash of (seed, v,
sample key): the cloud is rolled so that point comes first, predicted, and rolled back. The start therefore
depends only on the sample, never on the batch it landed in or the actor that ran it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def vote_shift(key: str, vote: int, seed: int, num_points: int) -> int:
    """FPS start of pass `vote` for sample `key` (0 for the first pass)."""
    if vote == 0:
        return 0
    digest = hashlib.blake2b(f"{seed}:{vote}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_points


def predict_batch(
    model: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    points: np.ndarray | torch.Tensor,
    instructions: list[str],
    keys: list[str] | None = None,
    votes: int = 1,
    seed: int = 0,
    precision: str | None = None,
) -> np.ndarray:
    """image [B,3,S,S], points [B,3,N] or [B,1,3,N] (normalised) -> float32 probabilities [B,N]. Computes under
    `precision` (default: the model's `inference_precision`, else fp32); inputs take the parameters' dtype."""
    from jobs.precision import computing_in

    precision = precision or getattr(model, "inference_precision", "fp32")
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    image_t = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).to(device, dtype)
    points_t = torch.as_tensor(np.asarray(points) if not torch.is_tensor(points) else points).to(device, dtype)
    if points_t.dim() == 4:
        points_t = points_t[:, 0]
    b, _, n = points_t.shape
    if votes > 1 and (keys is None or len(keys) != b):
        raise ValueError("predict_batch: votes > 1 needs one key per sample")
    was_training = model.training
    model.eval()
    total = torch.zeros(b, n, dtype=torch.float64, device=device)
    positions = torch.arange(n, device=device)
    # Seeded (a model with random FPS starts, as training's validation passes, predicts the same every time) on a
    # fork of the RNG: the caller's stream continues where it was.
    forked = [device] if device.type == "cuda" else []
    try:
        with torch.inference_mode(), computing_in(precision, device), torch.random.fork_rng(forked):
            for vote in range(votes):
                shifts = torch.tensor([vote_shift(k, vote, seed, n) for k in keys] if keys else [0] * b, device=device)
                order = (positions[None, :] + shifts[:, None]) % n  # rolled[i, j] = points[i, order[i, j]]
                rolled = torch.gather(points_t, 2, order[:, None, :].expand(-1, 3, -1))
                torch.manual_seed(seed + vote)
                probs = model(image_t, rolled.unsqueeze(1), list(instructions))[:, 0].double()
                total.scatter_add_(1, order, probs)  # back to the original point order
    finally:
        model.train(was_training)
    return (total / votes).float().cpu().numpy()
