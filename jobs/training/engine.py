"""Inside a training rank: device, threads and seeds, then `deepspeed.initialize` with our optimizer and schedule.

The session owns the process group (Ray Train's, or the one-process group of `--no-ray`: gloo on CPU, NCCL on
GPU) and the device placement; DeepSpeed wraps the already-initialised torch.distributed group instead of
launching its own (a second launcher under Ray Train would start a second process group).
"""

from __future__ import annotations

import importlib
import logging
import os
import random
from typing import Any

import numpy as np
import torch

from jobs.experiment_config import ExperimentConfig
from jobs.training.deepspeed_config import deepspeed_config, uses_cpu_adam
from jobs.training.op_build import cpu_ops_for, load_cpu_ops
from jobs.training.schedule import OriginalLRSchedule
from jobs.training.train_config import TrainConfig

log = logging.getLogger("lma3d.train")


def configure_worker(train: TrainConfig, device: torch.device | None = None) -> torch.device:
    """Threads, DS_ACCELERATOR, DeepSpeed's CPU ops and the device this worker trains on (call before importing
    deepspeed); `device` is the one its session assigned (None: the CPU)."""
    if not train.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.set_num_threads(max(1, train.threads_per_worker or train.cpus_per_worker))
    load_cpu_ops(cpu_ops_for(train.use_gpu, uses_cpu_adam(train)))  # before ZeRO-3's zero.Init starts the comm op
    device = device or torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before any collective: a barrier on the wrong GPU hangs (Ray PR #42751)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def build_training_model(cfg: ExperimentConfig, device: torch.device, world_size: int) -> torch.nn.Module:
    """The model with its pretrained weights. Under ZeRO-3 it is built inside deepspeed.zero.Init: each submodule
    is partitioned across the ranks as soon as it is constructed, the frozen backbone included, so no rank ever
    holds the whole 7B backbone (it would otherwise load it fully, ~13.5 GB in bf16, before initialize() shards it).
    Parameters then take the training precision's dtype (model.backbone_dtype does not apply) and live on the
    device ZeRO puts them (the GPU, or CPU with train.offload_params)."""
    from dataclasses import replace

    from model.lmaffordance3d import LMAffordance3D, build_model

    if cfg.train.zero_stage != 3:
        return build_model(cfg.model, device=device, pretrained=True)
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    from jobs.precision import cast_dtype
    from model.image_encoder import NO_WEIGHTS, load_torchvision_weights
    from model.language import draw_tiny_weights

    if cfg.model.backbone_mode == "lora":
        raise ValueError("model.backbone_mode lora is not supported with train.zero_stage 3; use zero_stage 2")
    config = deepspeed_config(cfg.train, cfg.data.batch_size, world_size)
    dtype = cast_dtype(cfg.train.precision) or torch.float32  # autocast: fp32 parameters, as master weights
    # Built without the ResNet weights: loading them needs the full tensors, gathered below.
    model_cfg = replace(cfg.model, resnet_weights="none", backbone_dtype=DTYPE_NAMES[dtype])
    # zero.Init reads the world size from deepspeed.comm: wrap Ray's process group now, as initialize() would.
    deepspeed.init_distributed()
    # zero.Init patches torch.nn.Parameter.__new__; torch._dynamo, imported for the first time inside it (by
    # transformers' model modules), checks that signature and fails. Import it before.
    importlib.import_module("torch._dynamo")
    # While this object lives, transformers' from_pretrained loads each weight into its ZeRO-3 partition.
    hf_zero3 = HfDeepSpeedConfig(config)
    try:
        # No dtype argument: zero.Init's own choice `dtype or fp16 if fp16_supported else bf16 if ...` parses as
        # `(dtype or fp16) if ...`, so on an accelerator without fp16 (CPU) every parameter became bf16 whatever
        # dtype was passed. Without it, the dtype comes from the config's bf16/fp16 sections: ours.
        with deepspeed.zero.Init(config_dict_or_path=config):
            model = LMAffordance3D(model_cfg, pretrained=True)
    finally:
        del hf_zero3
        unset_hf_deepspeed_config()
    wrong = {p.dtype for p in model.parameters()} - {dtype}
    if wrong:
        raise RuntimeError(f"zero.Init built parameters in {sorted(map(str, wrong))}, expected {dtype}")
    if cfg.model.backbone == "tiny":  # its random weights, drawn on the full tensors as a whole build draws them
        backbone = model.language.backbone
        with deepspeed.zero.GatheredParameters(list(backbone.parameters()), modifier_rank=0):
            draw_tiny_weights(backbone)
    if cfg.model.resnet_weights not in ("", NO_WEIGHTS):
        with deepspeed.zero.GatheredParameters(list(model.image_encoder.parameters()), modifier_rank=0):
            load_torchvision_weights(model.image_encoder, cfg.model.resnet_weights)
    model.cfg = cfg.model
    for buffer in model.buffers():  # buffers (BatchNorm statistics) are not partitioned: cast and place them
        buffer.data = buffer.data.to(device, dtype if buffer.is_floating_point() else buffer.dtype)
    return model


def is_partitioned(model: torch.nn.Module) -> bool:
    """True once ZeRO-3 (zero.Init) has partitioned the parameters: each holds only its ds_tensor slice."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (weight decay on ndim > 1 only, docs/original.md §3.1)."""
    from model.lmaffordance3d import param_groups

    groups = param_groups(model, train.weight_decay)
    if uses_cpu_adam(train):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=train.lr, betas=train.betas, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)


def build_engine(model: torch.nn.Module, cfg: ExperimentConfig, world_size: int, steps_per_epoch: int) -> Any:
    """deepspeed.initialize with our optimizer, our LR schedule and the generated config."""
    import deepspeed

    from jobs.precision import cast_dtype

    train = cfg.train
    load_cpu_ops(cpu_ops_for(train.use_gpu, uses_cpu_adam(train)))  # loaded once per process: a no-op after the first
    dtype = cast_dtype(train.precision)
    if dtype is not None and not is_partitioned(model):
        # DeepSpeed casts parameters and buffers itself at stages 0–2, but under ZeRO-3 the buffers
        # (BatchNorm running stats) stay fp32 and the first BatchNorm fails on bf16 activations.
        # The autocast precisions keep everything fp32: DeepSpeed's forward runs under torch.autocast.
        # (A model from zero.Init already has its parameters and buffers in the training dtype.)
        model.to(dtype)
    optimizer = build_optimizer(model, train)
    schedule = OriginalLRSchedule(
        optimizer,
        lr=train.lr,
        min_lr=train.min_lr,
        warmup_lr=train.warmup_lr,
        warmup_steps=train.warmup_steps,
        epochs=train.epochs,
        steps_per_epoch=steps_per_epoch,
    )
    config = deepspeed_config(train, cfg.data.batch_size, world_size)
    if train.zero_stage == 3:
        # The set-abstraction rewrites (first conv on the points, pooled last layer: model/pointnet2.py) read the
        # branches' conv and BatchNorm weights outside those modules' forwards, where ZeRO-3's per-module hooks
        # leave them partitioned (and a leaf-module gather still fails in backward): layer by layer under ZeRO-3.
        from model.pointnet2 import all_layer_by_layer

        all_layer_by_layer(model)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=config)
    return engine


def compute_dtype(engine: Any) -> torch.dtype:
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Floating tensors to the engine's compute dtype (DeepSpeed casts the module, not the inputs)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if value.is_floating_point() and key != "label":
                value = value.to(dtype)
        out[key] = value
    return out
