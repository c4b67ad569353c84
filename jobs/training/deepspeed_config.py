"""The DeepSpeed JSON for `deepspeed.initialize`, generated from TrainConfig with concrete values.

`"auto"` is resolved only by the HF Trainer / Accelerate (DeepSpeed #1270); under Ray Train every number
is written here: train_batch_size = micro × accum × world, precision flags, ZeRO stage and offload.
"""

from __future__ import annotations

from typing import Any

from jobs.training.train_config import TrainConfig

# Bucket sizes in elements: DeepSpeed's documented defaults are 5e8; 5e7 keeps the comm buffers of the
# ~41 M trainable parameters small (200 MB fp32) without adding many collectives.
BUCKET_ELEMENTS = 50_000_000
STAGE3_PREFETCH_ELEMENTS = 50_000_000
STAGE3_PERSISTENCE_THRESHOLD = 100_000
STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000
QUIET_STEPS_PER_PRINT = 1_000_000_000


def deepspeed_config(train: TrainConfig, micro_batch: int, world_size: int) -> dict[str, Any]:
    """DeepSpeed config for `micro_batch` images per rank per micro-step on `world_size` ranks."""
    if micro_batch < 1 or world_size < 1:
        raise ValueError(f"micro_batch and world_size must be >= 1, got {micro_batch} and {world_size}")
    # precision vs use_gpu and offload vs ZeRO stage: TrainConfig's own rules, checked when the config is read
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage >= 1:
        zero.update(
            contiguous_gradients=True,
            overlap_comm=train.use_gpu,  # overlap needs a side stream; on CPU it only adds threads
            reduce_scatter=True,
            reduce_bucket_size=BUCKET_ELEMENTS,
        )
    if train.zero_stage in (1, 2):
        zero.update(allgather_partitions=True, allgather_bucket_size=BUCKET_ELEMENTS)
    if train.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=STAGE3_PREFETCH_ELEMENTS,
            stage3_param_persistence_threshold=STAGE3_PERSISTENCE_THRESHOLD,
            stage3_max_live_parameters=STAGE3_MAX_LIVE_PARAMETERS,
            stage3_max_reuse_distance=STAGE3_MAX_LIVE_PARAMETERS,
            # Weights for MLflow/export are gathered explicitly (GatheredParameters), not by save_16bit_model.
            stage3_gather_16bit_weights_on_model_save=False,
        )
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": train.use_gpu}
    if train.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": train.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": micro_batch * train.grad_accum * world_size,
        "gradient_clipping": float(train.grad_clip),
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "torch_autocast": torch_autocast(train.precision),
        "fp16": {
            "enabled": train.precision == "fp16",
            "loss_scale": 0,  # 0 = dynamic loss scaling, as the original's GradScaler
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "steps_per_print": QUIET_STEPS_PER_PRINT,  # we log ourselves every train.log_every steps
        "wall_clock_breakdown": False,
    }


def torch_autocast(precision: str) -> dict[str, Any]:
    """DeepSpeed's `torch_autocast` section: the engine's forward runs under torch.autocast(dtype) while the
    parameters (and so BatchNorm and the optimizer's weights) stay fp32; fp16 gets a GradScaler from DeepSpeed.
    No module is listed as lower-precision-safe, so gradients are reduced in fp32, as the original's DDP did."""
    from jobs.precision import autocast_dtype

    dtype = autocast_dtype(precision)
    if dtype is None:
        return {"enabled": False}
    return {"enabled": True, "dtype": str(dtype), "lower_precision_safe_modules": []}


def uses_cpu_adam(train: TrainConfig) -> bool:
    """ZeRO-Offload refuses a client torch optimizer (zero_force_ds_cpu_optimizer): use DeepSpeedCPUAdam."""
    return train.offload_optimizer
