"""Before anything starts: the ImageNet resnet18 file a config names exists and loads (issue 16 §5).

The original starts its image encoder from ckpt/resnet18.pth. A config that names the file without it would
otherwise train from random weights (or fail in every worker); `model.resnet_weights: none` says so on purpose.
"""

from __future__ import annotations

from jobs.entry import UserError
from model.config import ModelConfig


def check_resnet_weights(model: ModelConfig) -> None:
    """UserError (one line) when model.resnet_weights names a file that is missing or is not resnet18 weights."""
    from model.image_encoder import NO_WEIGHTS, ResNet18Encoder, load_torchvision_weights

    if model.resnet_weights in ("", NO_WEIGHTS):
        return
    try:
        load_torchvision_weights(ResNet18Encoder(model.resnet_width), model.resnet_weights)
    except FileNotFoundError:
        raise UserError(
            f"model.resnet_weights: {model.resnet_weights} does not exist (the ImageNet resnet18 weights the "
            "original starts from; put the file there, or set model.resnet_weights=none to start from random)"
        ) from None
    except ValueError as e:
        raise UserError(f"model.resnet_weights: {e}") from None
