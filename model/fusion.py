"""Fusion of point and image features into the spatial tokens F_S (docs/original.md §1.2 c)."""

from __future__ import annotations

import math

import torch
from torch import nn

from model.group_norm_bn import GroupedBatchNorm


class SelfAttention(nn.Module):
    """IAGNet's `Inherent_relation`: multi-head self-attention without output projection, post-LN residual.
    `released` scales scores by 1/sqrt(hidden) as the original; `corrected` by 1/sqrt(head_dim)."""

    def __init__(self, dim: int, heads: int, released: bool) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim if released else dim // heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, c // self.heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.norm(x + (attn @ v).transpose(1, 2).reshape(b, n, c))


class Fusion(nn.Module):
    """Shared MLP over both modalities, cross softmax, then self-attention on image, points and both.
    Token order of the output: point tokens, then image tokens."""

    def __init__(self, in_channel: int, hidden: int, dim: int, heads: int, released: bool) -> None:
        super().__init__()
        self.shared_mlp = nn.Sequential(
            nn.Conv1d(in_channel, hidden, 1), GroupedBatchNorm(hidden), nn.ReLU(),
            nn.Conv1d(hidden, dim, 1), GroupedBatchNorm(dim), nn.ReLU(),
        )  # fmt: skip
        self.image_attention = SelfAttention(dim, heads, released)
        self.point_attention = SelfAttention(dim, heads, released)
        self.joint_attention = SelfAttention(dim, heads, released)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, point_feats: torch.Tensor, image_feats: torch.Tensor) -> torch.Tensor:
        """point_feats [B,C,Np], image_feats [B,C,Ni] -> F_S [B,Np+Ni,dim]."""
        p, i = self.shared_mlp(point_feats), self.shared_mlp(image_feats)
        phi = p.transpose(1, 2) @ i * self.scale  # [B,Np,Ni]
        image_enh = p @ torch.softmax(phi, dim=1)  # [B,dim,Ni]
        point_enh = i @ torch.softmax(phi, dim=2).transpose(1, 2)  # [B,dim,Np]
        image_tokens = self.image_attention(image_enh.transpose(1, 2))
        point_tokens = self.point_attention(point_enh.transpose(1, 2))
        return self.joint_attention(torch.cat([point_tokens, image_tokens], dim=1))
