"""Heat-map loss: focal + dice, as `Loss_HM` of the original (= IAGNet/LASO `HM_Loss`, docs/original.md §3.3)."""

from __future__ import annotations

import torch

ALPHA, GAMMA, EPS = 0.25, 2.0, 1e-6


def pair_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """pred, gt [B,N] -> focal (mean over B and N) + dice (mean over B) of one point cloud per sample."""
    focal = -(1 - ALPHA) * pred.pow(GAMMA) * (1 - gt) * torch.log(1 - pred + EPS) - ALPHA * (1 - pred).pow(
        GAMMA
    ) * gt * torch.log(pred + EPS)
    positive = ((pred * gt).sum(-1) + EPS) / ((pred.abs() + gt.abs()).sum(-1) + EPS)
    negative = (((1 - pred) * (1 - gt)).sum(-1) + EPS) / ((2 - pred.abs() - gt.abs()).sum(-1) + EPS)
    return focal.mean() + (1.5 - positive - negative).mean()


def heatmap_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """pred, gt [B,K,N] (K point clouds per image; the loss is summed over K like the original's train_step)
    or [B,N]."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and GT {tuple(gt.shape)} differ")
    if pred.dim() == 2:
        return pair_loss(pred, gt)
    return sum(pair_loss(pred[:, k], gt[:, k]) for k in range(pred.shape[1]))
