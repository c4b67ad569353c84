"""LMAffordance3D: image + point cloud + instruction -> per-point affordance probabilities (docs/original.md §1.1).

    image ──ResNet18──┐
    points ─PointNet++┴─ Fusion ─ F_S ─ language adapter (up, backbone, down) ─ decoder ─ F_A ─ head ─ [B,N]

K point clouds per image run as one batch: the image branch and the tokenisation run once per image. The original
runs one forward per cloud; in `released` fidelity every BatchNorm still sees what it saw there (statistics per
cloud, running statistics updated once per cloud, the image branch's K times): model/group_norm_bn.py.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from model.config import ModelConfig
from model.decoder import AffordanceDecoder
from model.fusion import Fusion
from model.group_norm_bn import batchnorm_groups, deferred_batchnorm_updates
from model.head import HeatmapHead
from model.image_encoder import NO_WEIGHTS, ResNet18Encoder, load_torchvision_weights
from model.language import Backbone, LanguageAdapter
from model.pointnet2 import PointNet2Encoder


class LMAffordance3D(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained: bool = True, backbone: Backbone | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        released = cfg.fidelity == "released"
        self.image_encoder = ResNet18Encoder(cfg.resnet_width)
        self.point_encoder = PointNet2Encoder(cfg)
        point_channels = self.point_encoder.channels[-1]
        if point_channels != self.image_encoder.out_channels:
            raise ValueError(
                f"model: the fusion MLP is shared, so SA3 output channels ({point_channels}, the sum of the last "
                f"sa3_mlps widths) must equal 8 * resnet_width ({self.image_encoder.out_channels})"
            )
        self.fusion = Fusion(point_channels, cfg.fusion_hidden, cfg.emb_dim, cfg.num_heads, released)
        self.language = LanguageAdapter(cfg, pretrained, backbone)
        self.decoder = AffordanceDecoder(cfg.emb_dim, released)
        self.head = HeatmapHead(cfg, self.point_encoder.channels)
        if pretrained and cfg.resnet_weights not in ("", NO_WEIGHTS):
            load_torchvision_weights(self.image_encoder, cfg.resnet_weights)
        self.per_cloud_batchnorm = released
        """Training-mode BatchNorm statistics per point cloud as the original's K forwards (`released`), or joint
        over all B·K clouds with one running-statistics update per step (`corrected`; a benchmark may flip it)."""

    @property
    def backbone_id(self) -> str:
        return self.language.backbone_id

    def forward(self, image: torch.Tensor, points: torch.Tensor, text: list[str]) -> torch.Tensor:
        """image [B,3,S,S], points [B,K,3,N] or [B,3,N], text (B strings) -> probabilities [B,K,N] or [B,N]."""
        single = points.dim() == 3
        if single:
            points = points.unsqueeze(1)
        b, k, _, n = points.shape
        if len(text) != b:
            raise ValueError(f"{len(text)} instructions for {b} images")
        per_cloud = self.per_cloud_batchnorm and self.training and k > 1
        with deferred_batchnorm_updates() if per_cloud else contextlib.nullcontext():
            with batchnorm_groups(1, repeats=k) if per_cloud else contextlib.nullcontext():
                image_feats = self.image_encoder(image).flatten(2).repeat_interleave(k, dim=0)  # [BK,C,Ni]
            with batchnorm_groups(k) if per_cloud else contextlib.nullcontext():
                probs = self._clouds(image_feats, points.reshape(b * k, 3, n), text, k)
        probs = probs.view(b, k, n)
        return probs[:, 0] if single else probs

    def _clouds(self, image_feats: torch.Tensor, points: torch.Tensor, text: list[str], k: int) -> torch.Tensor:
        """Everything after the image encoder, on B·K samples (sample b·K + j is cloud j of image b) -> [BK,N]."""
        ids, lengths = self.language.tokenize(text, image_feats.device)
        ids, lengths = ids.repeat_interleave(k, dim=0), lengths.repeat_interleave(k, dim=0)
        levels = self.point_encoder(points)
        spatial = self.fusion(levels[-1][1], image_feats)  # F_S [BK,Ns,C]
        semantic, instructional, mask = self.language(spatial, ids, lengths)
        decoded = self.decoder(spatial, instructional, semantic, mask)  # F_A
        return self.head(levels, spatial, decoded)

    def frozen_keys(self) -> set[str]:
        """State-dict keys never trained, so never saved: the frozen backbone's parameters and buffers."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {key for key in self.state_dict() if key.startswith("language.backbone.") and key not in trainable}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        frozen = self.frozen_keys()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if strict and (missing or unexpected):
            raise ValueError(
                f"trainable weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.load_state_dict(state, strict=False)


def build_model(
    cfg: ModelConfig, device: str | torch.device = "cpu", pretrained: bool = True, backbone: Backbone | None = None
) -> LMAffordance3D:
    """The model on `device`; `device="meta"` with `pretrained=False` builds the shapes only (parameter counts).
    `backbone`: a language backbone the caller built (model/language.py `Backbone`) instead of `cfg.backbone`'s."""
    if str(device) == "meta":
        with torch.device("meta"):
            return LMAffordance3D(cfg, pretrained=False, backbone=backbone)
    return LMAffordance3D(cfg, pretrained=pretrained, backbone=backbone).to(device)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters only (the frozen backbone never reaches the optimizer); decay on ndim > 1 only."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
