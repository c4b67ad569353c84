"""ZeRO-3 builds the model partitioned: 2 real Ray Train CPU workers (gloo, DeepSpeed's CPU accelerator) each hold
only their slice of every parameter, the frozen backbone included, right after the model is built, and the
partitions hold the same pretrained weights (real MiniLM backbone, ResNet file) as a model built whole."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny import tiny_overrides

from jobs.experiment_config import ExperimentConfig
from jobs.typed_yaml import load, to_dict

pytestmark = pytest.mark.slow
WORLD = 2
SEED = 123


def _checksum(t: torch.Tensor) -> list[float]:
    t = t.detach().double()
    return [t.sum().item(), (t * t).sum().item()]


def _build_on_each_rank(config: dict) -> None:
    """Train loop: build each model as the trainer does; write what this rank holds (and rank 0 the gathered
    weights' checksums); hand the first model to DeepSpeed."""
    import deepspeed
    import ray.train

    from jobs.training.engine import build_engine, build_training_model, configure_worker
    from jobs.typed_yaml import build

    rank = ray.train.get_context().get_world_rank()
    for name, raw in config["configs"].items():
        cfg = build(ExperimentConfig, raw, "test")
        device = configure_worker(cfg.train)
        torch.manual_seed(SEED)
        model = build_training_model(cfg, device, WORLD)
        params = dict(model.named_parameters())
        backbone = {n: p for n, p in params.items() if n.startswith("language.backbone.")}
        held = {
            "materialised": sum(p.numel() for p in params.values()),  # a partitioned parameter's .data is empty
            "partition": sum(p.ds_tensor.numel() for p in params.values()),
            "full": sum(p.ds_numel for p in params.values()),
            "unpartitioned": sorted(n for n, p in params.items() if not hasattr(p, "ds_id")),
            "backbone_partition": sum(p.ds_tensor.numel() for p in backbone.values()),
            "backbone_frozen": all(not p.requires_grad for p in backbone.values()),
        }
        with deepspeed.zero.GatheredParameters(list(params.values())):
            held["checksums"] = {n: _checksum(p) for n, p in params.items()}
        if name == "tiny":
            held["engine_stage"] = build_engine(model, cfg, WORLD, steps_per_epoch=1).zero_optimization_stage()
        Path(config["out"], f"{name}-rank{rank}.json").write_text(json.dumps(held))


def _config(tmp_path: Path, **model) -> ExperimentConfig:
    overrides = tiny_overrides(**{"workdir": str(tmp_path), "data.batch_size": 2, **model})
    overrides += [f"train.num_workers={WORLD}", "train.zero_stage=3", "train.precision=fp32"]
    return load(ExperimentConfig, None, overrides)


def test_zero3_builds_each_rank_only_its_partition_with_the_same_weights(ray_local, tmp_path):
    import sys

    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from safetensors.torch import save_file

    from model.image_encoder import ResNet18Encoder
    from model.lmaffordance3d import build_model

    torch.manual_seed(5)  # a torchvision-format ResNet file (with the fc layer the loader drops)
    resnet = ResNet18Encoder(8).state_dict() | {"fc.weight": torch.randn(10, 64), "fc.bias": torch.randn(10)}
    save_file({k: v.contiguous() for k, v in resnet.items()}, tmp_path / "resnet18.safetensors")
    configs = {
        "tiny": _config(tmp_path),
        "minilm": _config(tmp_path, **{"model.backbone": "minilm",
                                       "model.resnet_weights": str(tmp_path / "resnet18.safetensors")}),
    }  # fmt: skip
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    TorchTrainer(
        _build_on_each_rank,
        train_loop_config={"configs": {k: to_dict(v) for k, v in configs.items()}, "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=WORLD, resources_per_worker={"CPU": 0.5}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(
            name="zero3-init",
            storage_path=str(tmp_path / "runs"),
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}},
        ),
    ).fit()

    for name, cfg in configs.items():
        # The same model built whole, without DeepSpeed, is the reference: ZeRO-3 gives each rank
        # ceil(numel / 2) elements of every parameter (the last rank's slice padded).
        torch.manual_seed(SEED)
        reference = dict(build_model(cfg.model, pretrained=True).named_parameters())
        total = sum(p.numel() for p in reference.values())
        backbone = [p for n, p in reference.items() if n.startswith("language.backbone.")]
        for rank in range(WORLD):
            held = json.loads((tmp_path / f"{name}-rank{rank}.json").read_text())
            assert held["unpartitioned"] == [], f"{name} rank {rank} holds whole parameters: {held['unpartitioned']}"
            assert held["materialised"] == 0 and held["full"] == total
            assert held["partition"] == sum(math.ceil(p.numel() / WORLD) for p in reference.values())
            assert held["partition"] < 0.51 * total, f"{name} rank {rank} holds more than its half"
            assert held["backbone_partition"] == sum(math.ceil(p.numel() / WORLD) for p in backbone)
            assert held["backbone_frozen"]
    # Loaded weights (the MiniLM backbone through from_pretrained, the ResNet file) and the tiny backbone's
    # random ones (drawn from its own generator) equal the whole build's.
    differ = {}
    for name, prefixes in (("minilm", ("language.backbone.", "image_encoder.")), ("tiny", ("language.backbone.",))):
        torch.manual_seed(SEED)
        reference = dict(build_model(configs[name].model, pretrained=True).named_parameters())
        checksums = json.loads((tmp_path / f"{name}-rank0.json").read_text())["checksums"]
        loaded = [n for n in reference if n.startswith(prefixes)]
        assert loaded, name
        differ[name] = [n for n in loaded if checksums[n] != pytest.approx(_checksum(reference[n]), rel=1e-12)]
    assert json.loads((tmp_path / "tiny-rank0.json").read_text())["engine_stage"] == 3
    assert differ == {"minilm": [], "tiny": []}
