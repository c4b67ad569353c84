"""Token ids and the added [PAD] row of a LLaMA backbone (issue 16 §3, §5), against a LLaMA-style SentencePiece
tokenizer trained in the test. The reference ids are a transcription of what transformers 4.33.2's slow
LlamaTokenizer emitted after the original's add_special_tokens: `[bos_token_id] + sp.encode(text)`, with
bos_token_id = id of `</s>` = 2, left truncation of the pieces to max_length - 1, right padding with [PAD]."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from llama_folder import HIDDEN, SENTENCES, VOCAB, write_llama_folder, write_tokenizer

from model.config import ModelConfig
from model.language import LanguageAdapter

pytest.importorskip("sentencepiece")
EOS_ID = 2  # </s> in every LLaMA SentencePiece model (and in ours: eos_id=2)
PAD_ID = VOCAB  # the original's [PAD], the first id after the SentencePiece vocabulary


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_folder(tmp_path_factory.mktemp("llama") / "tiny-llama")


def _adapter(folder: Path, fidelity: str = "released", max_txt_len: int = 32) -> LanguageAdapter:
    cfg = ModelConfig(
        fidelity=fidelity, backbone=str(folder), backbone_dtype="fp32", max_txt_len=max_txt_len, emb_dim=32,
        num_heads=2,
    )  # fmt: skip
    return LanguageAdapter(cfg, pretrained=True)


def _original_ids(folder: Path, texts: list[str], max_len: int) -> tuple[list[list[int]], list[int]]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    rows = [[EOS_ID] + sp.encode(t)[-(max_len - 1) :] for t in texts]
    width = max(len(r) for r in rows)
    return [r + [PAD_ID] * (width - len(r)) for r in rows], [len(r) for r in rows]


def test_released_llama_tokens_lead_with_eos_id_2_as_the_original(llama_folder: Path) -> None:
    adapter = _adapter(llama_folder)
    texts = ["grasp the mug by its handle", "Could you lift the bag, please?", "open it"]
    ids, lengths = adapter.tokenize(texts, torch.device("cpu"))
    expected, expected_lengths = _original_ids(llama_folder, texts, 32)
    assert ids.tolist() == expected
    assert lengths.tolist() == expected_lengths
    assert adapter.tokenizer.bos_token_id == EOS_ID and adapter.tokenizer.pad_token_id == PAD_ID


def test_released_llama_truncates_left_and_keeps_the_leading_eos(llama_folder: Path) -> None:
    adapter = _adapter(llama_folder, max_txt_len=8)
    text = [" ".join(SENTENCES)]
    ids, lengths = adapter.tokenize(text, torch.device("cpu"))
    expected, _ = _original_ids(llama_folder, text, 8)
    assert ids.tolist() == expected and lengths.tolist() == [8]


def test_released_pad_row_is_drawn_from_normal_0_002_and_seeded(llama_folder: Path) -> None:
    from safetensors.torch import load_file

    stored = load_file(str(llama_folder / "model.safetensors"))
    original_rows = next(v for k, v in stored.items() if k.endswith("embed_tokens.weight"))
    first, second = _adapter(llama_folder), _adapter(llama_folder)
    weight = first.backbone.get_input_embeddings().weight.detach()
    assert weight.shape == (VOCAB + 1, HIDDEN)
    assert torch.equal(weight[:VOCAB], original_rows)  # the old rows are untouched
    pad_row = weight[PAD_ID]
    # N(0, 0.02²) over 256 values: sample std within 20 % of 0.02 (±4.5 standard errors); the mean of the
    # other rows (what mean-resizing would give) has std ~0.02/sqrt(300) ≈ 0.001.
    assert 0.016 < float(pad_row.std()) < 0.024
    assert abs(float(pad_row.mean())) < 0.02 * 4.5 / HIDDEN**0.5
    assert torch.equal(pad_row, second.backbone.get_input_embeddings().weight.detach()[PAD_ID])


def test_corrected_llama_keeps_the_tokenizers_own_bos(llama_folder: Path) -> None:
    ids, _ = _adapter(llama_folder, fidelity="corrected").tokenize(["lift the bag"], torch.device("cpu"))
    assert ids[0, 0].item() == 1  # <s>


def test_llava_layout_tokenizer_folder_loads_with_sentencepiece(tmp_path: Path) -> None:
    """Only tokenizer.model + tokenizer_config.json (no tokenizer.json): loading needs the sentencepiece package."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = write_tokenizer(tmp_path / "llava-tokenizer")
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=False)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert tokenizer("pour water from the bottle")["input_ids"] == [1] + sp.encode("pour water from the bottle")
