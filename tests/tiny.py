"""The tiny model and data sizes every CPU test uses (shared so that tests agree with each other)."""

from __future__ import annotations

from pathlib import Path

from model.config import ModelConfig

NUM_POINTS = 256
TINY_MODEL = dict(
    num_points=NUM_POINTS, image_size=64, resnet_width=8, emb_dim=32, num_heads=2, fusion_hidden=32,
    sa1_npoint=64, sa1_radii=(0.2, 0.4), sa1_nsample=(8, 16), sa1_mlps=((8, 16), (8, 16)),
    sa2_npoint=32, sa2_radii=(0.4, 0.8), sa2_nsample=(8, 16), sa2_mlps=((16, 32), (16, 32)),
    sa3_npoint=16, sa3_radii=(0.6, 1.0), sa3_nsample=(8, 8), sa3_mlps=((32, 32), (32, 32)),
    fp3_mlp=(32, 32), fp2_mlp=(32, 32), fp1_mlp=(32, 32), head_hidden=16,
    backbone="tiny", backbone_dtype="fp32", max_txt_len=16, fps_start="first",
)  # fmt: skip


def tiny_model_config(**changes) -> ModelConfig:
    return ModelConfig(**{**TINY_MODEL, **changes})


def tiny_overrides(**changes) -> list[str]:
    """The same sizes as `key=value` overrides for the CLI (`model.` prefixed), plus `changes`."""
    values = {f"model.{k}": v for k, v in TINY_MODEL.items()} | changes
    return [f"{k}={_yaml(v)}" for k, v in values.items()]


def _yaml(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def synth_shards(root: Path, train_images: int = 12, test_samples: int = 4, samples_per_shard: int = 6) -> Path:
    """A tiny synthetic AGPIL dataset in root/raw, sharded by the real shard job into root/shards, in this process
    (`use_ray=False`: the same bytes as the Ray Data job, tests/test_shard_plan.py; no Ray for tests about
    reading or training on shards)."""
    from pipeline.shards.config import ShardConfig
    from pipeline.shards.job import run as shard
    from pipeline.synth.config import SynthConfig
    from pipeline.synth.generate import generate

    generate(SynthConfig(out=str(root / "raw"), train_images=train_images, test_samples=test_samples,
                         points_per_object=3, num_points=NUM_POINTS, image_size=64))  # fmt: skip
    cfg = ShardConfig(samples_per_shard=samples_per_shard)
    shard(root / "raw", "agpil", root / "shards", cfg, num_points=NUM_POINTS, use_ray=False)
    return root / "shards"
