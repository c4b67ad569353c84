"""The model: paper parameter counts (docs/original.md §1.4), the released quirks (§1.5), shapes, gradients,
overfit."""

import math

import pytest
import torch
from tiny import NUM_POINTS, tiny_model_config

from model.config import ModelConfig
from model.decoder import AffordanceDecoder
from model.fusion import SelfAttention
from model.language import insert_spatial
from model.lmaffordance3d import build_model, param_groups
from model.loss import heatmap_loss
from model.pretrained import from_pretrained, save_pretrained


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _inputs(b: int = 2, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 64, 64, generator=g), torch.randn(b, k, 3, NUM_POINTS, generator=g)


@pytest.fixture(scope="module")
def paper_model():
    return build_model(ModelConfig(), device="meta", pretrained=False)


def test_paper_preset_has_the_original_parameter_counts(paper_model):
    m = paper_model
    assert [_count(getattr(m.point_encoder, f"sa{i}")) for i in (1, 2, 3)] == [36_768, 210_380, 259_532]
    assert _count(m.image_encoder) == 11_176_512  # 11.18 M: ResNet18 without the unused fc
    assert _count(m.fusion) == 3_420_160
    assert _count(m.language.adapter_up) == 2_363_904
    assert _count(m.language.adapter_down) == 18_878_976
    assert _count(m.decoder) == 1_840_128
    assert [_count(m.head.fp3), _count(m.head.fp2), _count(m.head.fp1)] == [1_183_488, 1_036_032, 530_432]
    assert _count(m.head) == 2_786_945
    assert _count(m) == pytest.approx(41.0e6, rel=0.002)


def test_frozen_backbone_is_left_out_of_the_optimizer_groups(paper_model):
    groups = param_groups(paper_model, 0.06)
    in_groups = sum(p.numel() for g in groups for p in g["params"])
    assert in_groups == _count(paper_model)
    assert sum(p.numel() for p in paper_model.language.backbone.parameters()) > 6.5e9
    assert all(p.ndim > 1 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.06
    assert all(p.ndim <= 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("fidelity", ["released", "corrected"])
def test_forward_shapes_for_pairs_and_single_clouds(fidelity):
    model = build_model(tiny_model_config(fidelity=fidelity)).eval()
    image, points = _inputs()
    with torch.no_grad():
        pairs = model(image, points, ["grasp the mug", "where do I sit"])
        single = model(image, points[:, 0], ["grasp the mug", "where do I sit"])
    assert pairs.shape == (2, 3, NUM_POINTS) and single.shape == (2, NUM_POINTS)
    assert float(pairs.min()) >= 0 and float(pairs.max()) <= 1
    assert torch.allclose(pairs[:, 0], single, atol=1e-5)  # batching the pairs changes nothing in eval mode


def test_fps_start_first_makes_evaluation_deterministic():
    model = build_model(tiny_model_config(fps_start="first")).eval()
    image, points = _inputs()
    with torch.no_grad():
        assert torch.equal(model(image, points, ["a", "b"]), model(image, points, ["a", "b"]))


def test_gradients_reach_both_encoders_through_the_frozen_backbone():
    model = build_model(tiny_model_config())
    image, points = _inputs()
    model(image, points, ["grasp it", "pour"]).sum().backward()
    assert model.image_encoder.conv1.weight.grad.abs().sum() > 0
    assert model.point_encoder.sa1.branches[0][0].weight.grad.abs().sum() > 0
    assert model.language.adapter_up[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.language.backbone.parameters())


def test_self_attention_scale_is_the_hidden_size_in_released_mode():
    assert SelfAttention(512, 4, released=True).scale == pytest.approx(1 / math.sqrt(512))
    assert SelfAttention(512, 4, released=False).scale == pytest.approx(1 / math.sqrt(128))


def test_decoder_released_reinterprets_memory_instead_of_transposing():
    torch.manual_seed(0)
    released, corrected = AffordanceDecoder(8, released=True), AffordanceDecoder(8, released=False)
    corrected.load_state_dict(released.state_dict())
    spatial, instr, sem = torch.randn(1, 5, 8), torch.randn(1, 6, 8), torch.randn(1, 5, 8)
    scrambled = instr.reshape(1, 8, -1).mT  # what view(B, C, -1).mT gives: not instr
    assert not torch.equal(scrambled, instr)
    a = released.eval()(spatial, instr, sem)
    b = corrected.eval()(spatial, scrambled, sem.reshape(1, 8, -1).mT)
    assert torch.allclose(a, b, atol=1e-6)


def test_released_head_normalises_over_the_point_axis():
    released = build_model(tiny_model_config(fidelity="released"))
    corrected = build_model(tiny_model_config(fidelity="corrected"))
    assert released.head.norm.num_features == NUM_POINTS  # BatchNorm1d(N_raw): the 2048 quirk
    assert corrected.head.norm.num_features == 16  # over the hidden channels
    assert released.head.fp1.eps == 0.01 and corrected.head.fp1.eps == 1e-8


def test_spatial_tokens_go_after_each_samples_valid_text_and_the_mask_drops_pads():
    text = torch.arange(2 * 4).float().view(2, 4, 1) + 100  # sample 0: 4 valid tokens; sample 1: 2 valid + 2 pads
    spatial = -torch.arange(2 * 3).float().view(2, 3, 1) - 1
    inputs, mask = insert_spatial(text, torch.tensor([4, 2]), spatial)
    assert inputs[0, :, 0].tolist() == [100, 101, 102, 103, -1, -2, -3]
    assert inputs[1, :, 0].tolist() == [104, 105, -4, -5, -6, 106, 107]
    assert mask.tolist() == [[1] * 7, [1, 1, 1, 1, 1, 0, 0]]


def test_released_split_is_at_the_spatial_token_count_and_corrected_follows_the_mask():
    for fidelity in ("released", "corrected"):
        model = build_model(tiny_model_config(fidelity=fidelity)).eval()
        ids, lengths = model.language.tokenize(["hold", "where would i pour tea from this"], torch.device("cpu"))
        spatial = torch.randn(2, model.cfg.spatial_tokens, 32)
        semantic, instructional, mask = model.language(spatial, ids, lengths)
        assert semantic.shape[1] == model.cfg.spatial_tokens and instructional.shape[1] == ids.shape[1]
        assert (mask is None) == (fidelity == "released")


def test_save_and_load_pretrained_round_trip_gives_identical_predictions(tmp_path):
    model = build_model(tiny_model_config()).eval()
    image, points = _inputs()
    with torch.no_grad():
        expected = model(image, points, ["grasp", "cut"])
    save_pretrained(model, tmp_path / "model")
    assert "language.backbone.embed_tokens.weight" not in set(model.trainable_state_dict())
    loaded = from_pretrained(tmp_path / "model")
    with torch.no_grad():
        assert torch.equal(loaded(image, points, ["grasp", "cut"]), expected)


def test_lora_mode_trains_only_lora_weights_in_the_backbone():
    model = build_model(tiny_model_config(backbone_mode="lora"))
    trainable = [n for n, p in model.language.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_overfits_one_fixed_batch():
    torch.manual_seed(0)
    model = build_model(tiny_model_config(fidelity="corrected"))
    image, points = _inputs(b=2, k=2)
    label = (points[:, :, 0] > 0).float()  # a learnable target: the points with positive x
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):
        loss = heatmap_loss(model(image, points, ["left", "right"]), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
