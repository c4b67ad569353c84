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


NO_WEIGHTS = "none"
"""`model.resnet_weights: none`: start the image encoder from random weights on purpose."""
CLASSIFIER_KEYS = {"fc.weight", "fc.bias"}
"""ImageNet classifier of a resnet18 file: the original keeps it in its module but never uses it."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .pth read with weights_only=True (no foreign objects unpickled)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise ValueError(f"{path}: not a weights-only torch file ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return state


def as_torchvision_keys(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """torchvision's layout (`conv1.weight`, …) as it is, or the original's Img_Encoder layout (`model.conv1.weight`,
    …) unprefixed. A file mixing the two, or already prefixed twice, is refused: the original would have
    dropped those keys without a word (its loader keeps only the keys its module has)."""
    prefixed = [k for k in state if k.startswith("model.")]
    if prefixed and len(prefixed) != len(state):
        raise ValueError(f"{path}: mixes `model.`-prefixed and unprefixed keys ({prefixed[0]!r} and others)")
    return {k.removeprefix("model."): v for k, v in state.items()} if prefixed else dict(state)


def load_torchvision_weights(module: ResNet18Encoder, path: str | Path) -> None:
    """Load ImageNet resnet18 weights in torchvision's or the original's key layout (.pth via weights_only, or
    .safetensors). The classifier `fc.*` is the only thing left out; a missing `num_batches_tracked` (torchvision's
    published file predates it) keeps the module's. Any other unused, missing or misshapen key is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such resnet18 weights file (model.resnet_weights; `none` for random)")
    state = as_torchvision_keys(read_state_dict(path), path)
    state = {k: v for k, v in state.items() if k not in CLASSIFIER_KEYS}
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: not resnet18 weights for width {module.conv1.out_channels}: "
            f"missing {missing[:3]}, unused {unexpected[:3]}, wrong shape {wrong[:3]} "
            f"({len(missing)}/{len(unexpected)}/{len(wrong)})"
        )
    module.load_state_dict(state, strict=False)
