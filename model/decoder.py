"""Affordance decoder: the spatial tokens attend to the instructional and the semantic LLM features
(two single-head cross-attention branches sharing one LayerNorm), fused by a 1x1 conv (docs/original.md §1.2 g)."""

from __future__ import annotations

import math

import torch
from torch import nn

from model.group_norm_bn import GroupedBatchNorm


class AffordanceDecoder(nn.Module):
    def __init__(self, dim: int, released: bool) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k_instr, self.v_instr = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k_sem, self.v_sem = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.fuse = nn.Sequential(nn.Conv1d(2 * dim, dim, 1), GroupedBatchNorm(dim), nn.ReLU())
        self.scale = 1.0 / math.sqrt(dim)
        self.released = released

    def _attend(
        self, query: torch.Tensor, obj: torch.Tensor, k: nn.Linear, v: nn.Linear, source: torch.Tensor, mask
    ) -> torch.Tensor:
        scores = query @ k(source).transpose(1, 2) * self.scale
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        return self.norm(obj + torch.softmax(scores, dim=-1) @ v(source))

    def forward(
        self,
        spatial: torch.Tensor,
        instructional: torch.Tensor,
        semantic: torch.Tensor,
        instructional_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """spatial [B,Ns,C], instructional [B,L,C], semantic [B,M,C] -> F_A [B,Ns,C]."""
        b, _, c = spatial.shape
        if self.released:  # the original's `view(B, C, -1).mT`: a reshape (original.md §1.5, 4)
            instructional = instructional.reshape(b, c, -1).mT
            semantic = semantic.reshape(b, c, -1).mT
            instructional_mask = None  # no masks in the original (quirk 5)
        query = self.q(spatial)
        by_instruction = self._attend(query, spatial, self.k_instr, self.v_instr, instructional, instructional_mask)
        by_semantics = self._attend(query, spatial, self.k_sem, self.v_sem, semantic, None)
        fused = self.fuse(torch.cat([by_instruction.transpose(1, 2), by_semantics.transpose(1, 2)], dim=1))
        return fused.transpose(1, 2)
