"""ModelConfig: every size of LMAffordance3D is a field here (model args, as in torchtitan).

Defaults are the paper's model (docs/original.md §1.2–1.4). `configs/demo.yaml` scales them down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    fidelity: Literal["released", "corrected"] = "released"
    """`released` reproduces the original code's quirks (original.md §1.5) and, in training, its per-cloud BatchNorm
    statistics (docs/fidelity.md); `corrected` fixes the quirks and takes BatchNorm statistics jointly over all
    clouds of a batch."""
    num_points: int = 2048
    """N_raw: points per cloud. `released` ties the head's BatchNorm1d to it."""
    image_size: int = 224
    """Square input image side; image tokens = (image_size / 32)²."""
    resnet_width: int = 64
    """ResNet18 stem width (64 = torchvision's); layer4 has 8× this many channels."""
    resnet_weights: str = ""
    """ImageNet resnet18 weights (.pth / .safetensors, torchvision's or the original's key layout), as the
    original's ckpt/resnet18.pth; `none` starts from random on purpose; empty: random (tests, demo)."""
    emb_dim: int = 512
    """C_S: width of the fused spatial tokens, the decoder and the head."""
    num_heads: int = 4
    """Attention heads of the fusion's self-attention layers; emb_dim must be divisible by it."""
    fusion_hidden: int = 1024
    """Hidden width of the shared fusion MLP."""
    # PointNet++ MSG set-abstraction levels (docs/original.md §1.2 b). sa3_npoint is N_p (point tokens).
    sa1_npoint: int = 512
    """SA1: centroids chosen by farthest-point sampling."""
    sa1_radii: tuple[float, ...] = (0.1, 0.2, 0.4)
    """SA1: the ball-query radius of each scale (one per multi-scale branch)."""
    sa1_nsample: tuple[int, ...] = (32, 64, 128)
    """SA1: the neighbours grouped around each centroid, per scale."""
    sa1_mlps: tuple[tuple[int, ...], ...] = ((32, 32, 64), (64, 64, 128), (64, 96, 128))
    """SA1: the shared MLP widths of each scale; the level outputs the sum of their last widths."""
    sa2_npoint: int = 128
    """SA2: centroids chosen by farthest-point sampling among SA1's."""
    sa2_radii: tuple[float, ...] = (0.4, 0.8)
    """SA2: the ball-query radius of each scale."""
    sa2_nsample: tuple[int, ...] = (64, 128)
    """SA2: the neighbours grouped around each centroid, per scale."""
    sa2_mlps: tuple[tuple[int, ...], ...] = ((128, 128, 256), (128, 196, 256))
    """SA2: the shared MLP widths of each scale; the level outputs the sum of their last widths."""
    sa3_npoint: int = 64
    """SA3: centroids among SA2's; they are the point tokens N_p of the fusion."""
    sa3_radii: tuple[float, ...] = (0.2, 0.4)
    """SA3: the ball-query radius of each scale."""
    sa3_nsample: tuple[int, ...] = (16, 32)
    """SA3: the neighbours grouped around each centroid, per scale."""
    sa3_mlps: tuple[tuple[int, ...], ...] = ((128, 128, 256), (128, 196, 256))
    """SA3: the shared MLP widths of each scale; their last widths must sum to 8 * resnet_width (the point and
    image features go through one fusion MLP)."""
    fp3_mlp: tuple[int, ...] = (768, 512)
    """Widths of the first feature-propagation MLP (the aligned point tokens up to the SA2 points)."""
    fp2_mlp: tuple[int, ...] = (768, 512)
    """Widths of the second feature-propagation MLP (up to the SA1 points)."""
    fp1_mlp: tuple[int, ...] | None = None
    """Widths of the last feature-propagation MLP, ending in emb_dim (the decoder's tokens gate its output); unset:
    (emb_dim, emb_dim), following emb_dim. The paper's is (512, 512); a built config holds the widths."""
    head_hidden: int = 64
    """Hidden width of the per-point head (linear, BatchNorm, ReLU, linear, sigmoid)."""
    fps_start: Literal["random", "first"] = "random"
    """Farthest-point sampling start index: `random` as the original, `first` for determinism."""
    fps_impl: Literal["loop", "compiled"] = "loop"
    """Farthest-point sampling: `loop` (eager, one small kernel per op and pick: best on CPU) or `compiled`
    (torch.compile, 8 picks per call: for GPUs, where the loop is launch-bound; same indices)."""
    # Language backbone (presets: README, Configs).
    backbone: str = "llava-1.6-vicuna-7b"
    """Preset (`tiny`, `minilm`, `llava-1.6-vicuna-7b`) or a local Hugging Face model path."""
    backbone_path: str = ""
    """Local weights for a preset that has none on disk (the 7B backbone)."""
    backbone_mode: Literal["frozen", "lora", "full"] = "frozen"
    """`frozen`: the language backbone is not trained (the paper); `lora`: LoRA adapters on lora_targets are
    (not with train.zero_stage 3); `full`: every backbone weight is."""
    backbone_dtype: Literal["fp32", "bf16", "fp16"] = "fp16"
    """The dtype the language backbone's weights are held in (the original loads its LLM in fp16)."""
    max_txt_len: int = 32
    """Instruction tokens kept; a longer instruction is truncated."""
    lora_r: int = 8
    """LoRA rank (backbone_mode lora)."""
    lora_alpha: int = 32
    """LoRA scaling: the adapters' output is multiplied by lora_alpha / lora_r."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA adapters' input."""
    lora_targets: tuple[str, ...] = field(default=("q_proj", "v_proj"))
    """Names of the backbone's linear layers that get LoRA adapters (LLaMA's; BERT-style names are mapped)."""

    def __post_init__(self) -> None:
        if self.fp1_mlp is None:
            self.fp1_mlp = (self.emb_dim, self.emb_dim)
        sizes = ("num_points", "image_size", "resnet_width", "emb_dim", "num_heads", "fusion_hidden", "sa1_npoint",
                 "sa2_npoint", "sa3_npoint", "head_hidden", "max_txt_len", "lora_r")  # fmt: skip
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("sa1_nsample", "sa2_nsample", "sa3_nsample", "fp3_mlp", "fp2_mlp", "fp1_mlp"):
            if not getattr(self, name) or not all(v >= 1 for v in getattr(self, name)):
                raise ValueError(f"model.{name} must hold sizes >= 1, got {list(getattr(self, name))}")
        for name in ("sa1_mlps", "sa2_mlps", "sa3_mlps"):
            mlps = getattr(self, name)
            if not mlps or not all(mlp and all(v >= 1 for v in mlp) for mlp in mlps):
                raise ValueError(f"model.{name} must hold sizes >= 1")
        for name in ("sa1_radii", "sa2_radii", "sa3_radii"):
            if not all(0.0 < r < float("inf") for r in getattr(self, name)):  # also refuses NaN
                raise ValueError(f"model.{name} must hold finite radii > 0, got {list(getattr(self, name))}")
        if not 0.0 < self.lora_alpha < float("inf") or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError("model.lora_alpha must be a finite number > 0 and model.lora_dropout in [0, 1)")
        if self.image_size % 32:
            raise ValueError(f"model.image_size must be a multiple of 32, got {self.image_size}")
        if self.emb_dim % self.num_heads:
            raise ValueError(f"model.emb_dim {self.emb_dim} must be divisible by model.num_heads {self.num_heads}")
        for level in ("sa1", "sa2", "sa3"):
            radii, nsample, mlps = (getattr(self, f"{level}_{k}") for k in ("radii", "nsample", "mlps"))
            if not len(radii) == len(nsample) == len(mlps):
                raise ValueError(f"model.{level}_radii/_nsample/_mlps must have the same length")
        if not self.sa3_npoint <= self.sa2_npoint <= self.sa1_npoint <= self.num_points:
            raise ValueError("model: need sa3_npoint <= sa2_npoint <= sa1_npoint <= num_points")
        self._module_rules()

    def _module_rules(self) -> None:
        """What the modules' constructors would refuse (model/head.py, model/lmaffordance3d.py), refused here
        instead: a config is checked when it is read, on the driver, not when a worker builds the model."""
        if self.fp1_mlp[-1] != self.emb_dim:
            raise ValueError(
                f"model.fp1_mlp {list(self.fp1_mlp)} must end in model.emb_dim ({self.emb_dim}): the decoder's tokens "
                "gate its output (leave model.fp1_mlp unset to follow model.emb_dim)"
            )
        sa3_channels, layer4 = sum(mlp[-1] for mlp in self.sa3_mlps), 8 * self.resnet_width
        if sa3_channels != layer4:
            raise ValueError(
                f"model.sa3_mlps end in {sa3_channels} channels in all, but 8 * model.resnet_width is {layer4}: the "
                "point and image features share one fusion MLP"
            )

    @property
    def image_tokens(self) -> int:
        return (self.image_size // 32) ** 2

    @property
    def spatial_tokens(self) -> int:
        """N_S = point tokens + image tokens (113 at paper size)."""
        return self.sa3_npoint + self.image_tokens
