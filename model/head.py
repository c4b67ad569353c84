"""Head: three feature-propagation layers up the point hierarchy, gated by the pooled decoder tokens, then a
per-point MLP and a sigmoid (docs/original.md §1.2 h)."""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig
from model.group_norm_bn import GroupedBatchNorm
from model.pointnet2 import FeaturePropagation


class HeatmapHead(nn.Module):
    def __init__(self, cfg: ModelConfig, level_channels: tuple[int, int, int, int]) -> None:
        super().__init__()
        released = cfg.fidelity == "released"
        eps = 0.01 if released else 1e-8  # quirk 7: the original's FeatProp epsilon
        c0, c1, c2, _ = level_channels
        self.fp3 = FeaturePropagation(c2 + cfg.emb_dim, cfg.fp3_mlp, eps)
        self.fp2 = FeaturePropagation(c1 + cfg.fp3_mlp[-1], cfg.fp2_mlp, eps)
        self.fp1 = FeaturePropagation(2 * c0 + cfg.fp2_mlp[-1], cfg.fp1_mlp, eps)
        if cfg.fp1_mlp[-1] != cfg.emb_dim:
            raise ValueError(f"model.fp1_mlp must end in model.emb_dim ({cfg.emb_dim}) for the gate")
        self.point_tokens = cfg.sa3_npoint
        self.released = released
        # quirk 6: BatchNorm1d over the point axis (num_points "channels"); corrected: over the hidden channels
        self.linear1 = nn.Linear(cfg.emb_dim, cfg.head_hidden)
        self.norm = GroupedBatchNorm(cfg.num_points if released else cfg.head_hidden)
        self.linear2 = nn.Linear(cfg.head_hidden, 1)

    def forward(
        self, levels: list[tuple[torch.Tensor, torch.Tensor]], spatial: torch.Tensor, decoded: torch.Tensor
    ) -> torch.Tensor:
        """levels from the point encoder, F_S and F_A [B,Ns,C] -> probabilities [B,N]."""
        (xyz0, feats0), (xyz1, feats1), (xyz2, feats2), (xyz3, _) = levels
        aligned = spatial[:, : self.point_tokens].transpose(1, 2)  # image tokens are discarded
        up = self.fp3(xyz2, xyz3, feats2, aligned)
        up = self.fp2(xyz1, xyz2, feats1, up)
        up = self.fp1(xyz0, xyz1, torch.cat([xyz0, feats0], dim=1), up)  # [B,C,N]
        gate = decoded[:, : self.point_tokens].mean(dim=1, keepdim=True)  # [B,1,C]
        hidden = self.linear1(up.transpose(1, 2) * gate)  # [B,N,H]
        if self.released:
            hidden = self.norm(hidden)  # BN1d(N) on [B,N,H]: normalises per point index
        else:
            hidden = self.norm(hidden.transpose(1, 2)).transpose(1, 2)
        return torch.sigmoid(self.linear2(torch.relu(hidden))).squeeze(-1)
