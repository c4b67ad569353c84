"""ImageNet resnet18 weights are really loaded (issue 16 §5): torchvision's and the original's key layouts load
every tensor, anything that would be dropped silently is refused, nothing foreign is unpickled, and training a
paper config without its weights file stops at once (exit 2) unless `model.resnet_weights: none` says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jobs.entry import UserError
from jobs.training.pretrained_check import check_resnet_weights
from model.config import ModelConfig
from model.image_encoder import ResNet18Encoder, load_torchvision_weights

REPO = Path(__file__).resolve().parents[1]
WIDTH = 16


def torchvision_resnet18(width: int = 64, batches_tracked: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """The key layout and shapes of torchvision.models.resnet18().state_dict(), transcribed (BasicBlock ×2 per
    stage, downsample in the first block of stages 2–4, fc to 1000 classes). torchvision's published ImageNet
    file has no num_batches_tracked (`batches_tracked=False`)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=generator)

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = torch.rand(c, generator=generator) + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=generator)
        state[f"{name}.running_mean"] = torch.randn(c, generator=generator)
        state[f"{name}.running_var"] = torch.rand(c, generator=generator) + 0.5
        if batches_tracked:
            state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    channels = width
    for stage, out in enumerate([width, 2 * width, 4 * width, 8 * width], start=1):
        for block in (0, 1):
            prefix, inp = f"layer{stage}.{block}", channels if block == 0 else out
            conv(f"{prefix}.conv1", out, inp, 3)
            bn(f"{prefix}.bn1", out)
            conv(f"{prefix}.conv2", out, out, 3)
            bn(f"{prefix}.bn2", out)
            if block == 0 and stage > 1:
                conv(f"{prefix}.downsample.0", out, inp, 1)
                bn(f"{prefix}.downsample.1", out)
        channels = out
    state["fc.weight"] = torch.randn(1000, 8 * width, generator=generator)
    state["fc.bias"] = torch.randn(1000, generator=generator)
    return state


def original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original's Img_Encoder.state_dict(): torchvision's keys under `model.`."""
    return {f"model.{k}": v for k, v in state.items()}


def _assert_loaded(module: ResNet18Encoder, expected: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    for key, value in expected.items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(own[key], value), key


def test_torchvision_layout_loads_every_tensor(tmp_path: Path) -> None:
    state = torchvision_resnet18(WIDTH)
    torch.save(state, tmp_path / "resnet18.pth")
    module = ResNet18Encoder(WIDTH)
    load_torchvision_weights(module, tmp_path / "resnet18.pth")
    _assert_loaded(module, state)
    assert len([k for k in state if not k.startswith("fc.")]) == 20 + 20 * 4  # 20 convs, 20 BatchNorms x 4


def test_original_layout_loads_every_tensor(tmp_path: Path) -> None:
    state = torchvision_resnet18(WIDTH, batches_tracked=True, seed=1)
    torch.save(original_layout(state), tmp_path / "img_encoder.pth")
    module = ResNet18Encoder(WIDTH)
    load_torchvision_weights(module, tmp_path / "img_encoder.pth")
    _assert_loaded(module, state)
    assert int(module.bn1.num_batches_tracked) == 1000


def test_safetensors_file_loads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = torchvision_resnet18(WIDTH, seed=2)
    save_file(state, str(tmp_path / "resnet18.safetensors"))
    module = ResNet18Encoder(WIDTH)
    load_torchvision_weights(module, tmp_path / "resnet18.safetensors")
    _assert_loaded(module, state)


def _prefixed_twice(state: dict) -> dict:
    return {f"model.model.{k}": v for k, v in state.items()}


def _mixed(state: dict) -> dict:
    return {(f"model.{k}" if k.startswith("layer1") else k): v for k, v in state.items()}


def _extra(state: dict) -> dict:
    return state | {"layer5.0.conv1.weight": torch.zeros(1)}


def _missing(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != "layer4.1.bn2.running_var"}


@pytest.mark.parametrize(
    "damage, message",
    [
        (_prefixed_twice, "unused"),  # the original would drop every key and keep its random weights
        (_mixed, "mixes"),
        (_extra, "unused"),
        (_missing, "missing"),
        (lambda state: torchvision_resnet18(WIDTH // 2), "wrong shape"),
    ],
    ids=["prefixed-twice", "mixed-layouts", "extra-key", "missing-key", "other-width"],
)
def test_a_file_whose_keys_would_be_dropped_is_refused(tmp_path: Path, damage, message: str) -> None:
    torch.save(damage(torchvision_resnet18(WIDTH)), tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=message):
        load_torchvision_weights(ResNet18Encoder(WIDTH), tmp_path / "bad.pth")


class Foreign:
    """Not a tensor: torch.load(weights_only=True) must refuse to rebuild it."""


def test_foreign_objects_are_not_unpickled(tmp_path: Path) -> None:
    torch.save(torchvision_resnet18(WIDTH) | {"hook": Foreign()}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="not a weights-only torch file"):
        load_torchvision_weights(ResNet18Encoder(WIDTH), tmp_path / "foreign.pth")


def test_the_preflight_check_accepts_a_good_file_and_none(tmp_path: Path) -> None:
    torch.save(torchvision_resnet18(WIDTH), tmp_path / "resnet18.pth")
    weights = str(tmp_path / "resnet18.pth")  # SA3's widths sum to layer4's channels (8 * WIDTH): one fusion MLP
    check_resnet_weights(ModelConfig(resnet_width=WIDTH, sa3_mlps=((64, 64), (64, 64)), resnet_weights=weights))
    check_resnet_weights(ModelConfig(resnet_weights="none"))
    with pytest.raises(UserError, match="does not exist.*resnet_weights=none"):
        check_resnet_weights(ModelConfig(resnet_weights=str(tmp_path / "absent.pth")))


def test_training_a_paper_config_without_the_weights_file_is_refused_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from jobs.verbs.train import main

    monkeypatch.chdir(tmp_path)  # no ckpt/resnet18.pth here
    code = main(["--config", str(REPO / "configs/agpil/full_seen.yaml"), f"workdir={tmp_path / 'work'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "model.resnet_weights" in err[0] and "ckpt/resnet18.pth" in err[0]
    assert not (tmp_path / "work").exists()  # refused before any run folder or MLflow store was made
