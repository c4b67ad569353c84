"""A LLaMA-style model folder built in a test: a SentencePiece model trained on a few instructions, wrapped as
a LLaVA-layout tokenizer (tokenizer.model + tokenizer_config.json only), and a tiny random LlamaModel."""

from __future__ import annotations

import io
import json
from pathlib import Path

SENTENCES = [
    "grasp the mug by its handle", "sit on the chair please", "open the door of the fridge", "lift the bag",
    "pour water from the bottle", "cut the bread with the knife", "press the button", "wear the hat",
]  # fmt: skip
VOCAB = 300
"""SentencePiece pieces: <unk>=0, <s>=1, </s>=2, 256 byte-fallback pieces, then BPE merges (as LLaMA's)."""
HIDDEN = 256


def write_tokenizer(folder: Path) -> Path:
    """tokenizer.model + tokenizer_config.json, the files of a LLaVA-1.6 folder's tokenizer (no tokenizer.json)."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 10), model_writer=model, vocab_size=VOCAB, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "padding_side": "right", "model_max_length": 4096,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def write_llama_folder(folder: Path, seed: int = 0) -> Path:
    """The tokenizer above plus a 1-layer random LlamaModel saved with save_pretrained (vocab = the tokenizer's)."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    write_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    LlamaModel(config).save_pretrained(str(folder))
    return folder
