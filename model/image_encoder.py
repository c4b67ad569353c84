"""ResNet18 up to layer4 (no pooling, no fc), in torchvision's parameter names so its weights load as they are."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model.group_norm_bn import GroupedBatchNorm


class BasicBlock(nn.Module):
    def __init__(self, in_channel: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channel, width, 3, stride, 1, bias=False)
        self.bn1 = GroupedBatchNorm(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = GroupedBatchNorm(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channel != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channel, width, 1, stride, bias=False), GroupedBatchNorm(width)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18Encoder(nn.Module):
    """[B,3,S,S] -> [B,8*width,S/32,S/32] (conv1 → bn1 → relu → maxpool → layer1..4)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = GroupedBatchNorm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        in_channel = width
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(in_channel, w, stride), BasicBlock(w, w, 1)))
            in_channel = w
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_torchvision_weights(module: ResNet18Encoder, path: str | Path) -> None:
    """Load torchvision-format resnet18 weights (.pth via weights_only, or .safetensors); `fc.*` and an
    optional `model.` prefix (the original's checkpoint) are dropped. Any other mismatch is an error."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("model."): v for k, v in state.items() if not k.removeprefix("model.").startswith("fc.")}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: not resnet18 weights for width {module.conv1.out_channels}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    module.load_state_dict(state)
