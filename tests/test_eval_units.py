"""Evaluation pieces without Ray: result files, collecting by key, votes, colours, model sources."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from inprocess_eval import read_predictions
from tiny import tiny_model_config

from jobs.entry import UserError
from jobs.evaluation.outputs import PredictionCollector, Predictions, write_outputs
from jobs.inference import predict_batch, vote_shift
from jobs.loading import Resolved, model_config, provenance, resolve
from jobs.tracking import choose_tracking_uri
from jobs.viz import heat_colors


def _scores(n: int) -> dict[str, np.ndarray]:
    return {key: np.zeros(n) for key in ("auc", "aiou", "sim", "mae")}  # what the actors computed: not read here


def _predictions(scratch: Path) -> Predictions:
    collector = PredictionCollector(scratch)
    collector.add({
        "key": np.array(["a_Bag_grasp_1", "b_Mug_cut_2"]),
        "pred": np.array([[0.9, 0.1, 0.8, 0.2], [0.25, 0.5, 0.75, 1.0]], np.float32),
        "label": np.array([[1.0, 0.0, 0.6, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32),
        "object": np.array(["Bag", "Mug"]), "affordance": np.array(["grasp", "cut"]), **_scores(2),
    })  # fmt: skip
    return collector.finish()


def test_result_files_by_hand(tmp_path: Path) -> None:
    predictions = _predictions(tmp_path / "scratch")
    metrics = {  # what evaluate() returns; Mug has no positive GT point, so its AUC / aIOU are NaN
        "auc": 1.0, "aiou": 0.5, "sim": 0.6, "mae": 0.3, "n": 2,
        "per_object": {"Bag": {"auc": 1.0, "aiou": 0.5, "sim": 0.9, "mae": 0.1, "n": 1},
                       "Mug": {"auc": float("nan"), "aiou": float("nan"), "sim": 0.0, "mae": 0.625, "n": 1}},
        "per_affordance": {"grasp": {"auc": 1.0, "aiou": 0.5, "sim": 0.9, "mae": 0.1, "n": 1}},
    }  # fmt: skip
    paths = write_outputs(tmp_path / "out", predictions, metrics, {"source": "x"})
    document = json.loads(paths["metrics.json"].read_text())  # strict JSON: no NaN tokens
    assert document["per_object"]["Mug"]["auc"] is None and document["auc"] == 1.0 and document["info"]["source"] == "x"
    rows = list(csv.DictReader(paths["per_class.csv"].open()))
    assert [(r["group"], r["name"], r["auc"], r["n"]) for r in rows] == [
        ("object", "Bag", "1.000000", "1"), ("object", "Mug", "nan", "1"), ("affordance", "grasp", "1.000000", "1"),
    ]  # fmt: skip
    keys, stored = read_predictions(paths["predictions.npz"])
    assert keys == predictions.keys and stored.dtype == np.float16 and stored.shape == (2, 4)
    assert paths["prediction.txt"].read_text().splitlines() == [
        "0.900000 0.100000 0.800000 0.200000",
        "0.250000 0.500000 0.750000 1.000000",
    ]


def test_collector_drops_padding_and_duplicates_and_keeps_arrival_order(tmp_path: Path) -> None:
    batch = {
        "key": np.array(["k2", "k1", "k1"]),
        "pred": np.arange(6, dtype=np.float32).reshape(3, 2),
        "label": np.arange(6, 12, dtype=np.float32).reshape(3, 2),
        "object": np.array(["Bag", "Mug", "Mug"]),
        "affordance": np.array(["grasp", "cut", "cut"]),
        "valid": np.array([True, True, False]),  # the third row is padding
        **{key: np.array([1.0, 2.0, 3.0]) for key in ("auc", "aiou", "sim", "mae")},
    }
    again = {k: v[:1] for k, v in batch.items()}  # k2 once more: a duplicate
    collector = PredictionCollector(tmp_path)
    collector.add(batch)
    collector.add(again)
    merged = collector.finish()
    assert merged.keys == ["k2", "k1"] and collector.duplicates == 1  # the test list's order, not string order
    np.testing.assert_array_equal(merged.read("pred"), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(merged.read("gt", [1]), [[8, 9]])
    np.testing.assert_array_equal(merged.scores["sim"], [1.0, 2.0])
    assert merged.objects == ["Bag", "Mug"] and merged.affordances == ["grasp", "cut"]


def test_predictions_are_read_back_in_blocks_across_block_edges(tmp_path: Path, monkeypatch) -> None:
    import jobs.evaluation.outputs as outputs

    monkeypatch.setattr(outputs, "BLOCK_ROWS", 2)
    collector = PredictionCollector(tmp_path)
    rows = np.arange(15, dtype=np.float32).reshape(5, 3) / 15
    names = np.array(["x"] * 5)
    collector.add({"key": np.array(list("abcde")), "pred": rows, "label": rows, "object": names,
                   "affordance": names, **_scores(5)})  # fmt: skip
    blocks = list(collector.finish().blocks("pred"))
    assert [len(b) for b in blocks] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(blocks), rows)


def test_pick_samples_takes_objects_in_turn_then_their_next_affordance() -> None:
    from jobs.viz import pick_samples

    objects = ["Mug", "Bag", "Bag", "Mug", "Bag", "Knife"]
    affordances = ["grasp", "lift", "lift", "wrap_grasp", "contain", "cut"]
    # Bag: lift (row 1), then contain (row 4); Knife: cut (row 5); Mug: grasp (row 0), then wrap_grasp (row 3)
    assert pick_samples(objects, affordances, 4) == [1, 5, 0, 4]
    assert pick_samples(objects, affordances, 10) == [1, 5, 0, 4, 3]
    assert pick_samples(objects, affordances, 0) == []


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    from model.lmaffordance3d import build_model

    torch.manual_seed(0)
    return build_model(tiny_model_config(fidelity="corrected"), pretrained=False).eval()


def test_votes_average_passes_started_at_a_per_sample_point(tiny_model: torch.nn.Module) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
    points = rng.normal(size=(2, 3, 256)).astype(np.float32)
    text, keys = ["grasp the mug", "open the bag"], ["s0", "s1"]
    averaged = predict_batch(tiny_model, image, points, text, keys, votes=2, seed=5)
    first = predict_batch(tiny_model, image, points, text)
    # pass 1 by hand: roll each cloud so its hashed start point comes first, predict, roll the result back
    shifts = [vote_shift(k, 1, 5, 256) for k in keys]
    assert vote_shift("s0", 0, 5, 256) == 0 and any(shifts)
    rolled = np.stack([np.roll(points[i], -shifts[i], axis=1) for i in range(2)])
    second = predict_batch(tiny_model, image, rolled, text)
    second = np.stack([np.roll(second[i], shifts[i]) for i in range(2)])
    np.testing.assert_allclose(averaged, (first + second) / 2, atol=1e-6)


def test_a_samples_prediction_does_not_depend_on_its_batch(tiny_model: torch.nn.Module) -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 3, 64, 64)).astype(np.float32)
    points = rng.normal(size=(3, 3, 256)).astype(np.float32)
    text, keys = ["grasp", "open the bag on the table", "cut"], ["a", "b", "c"]
    together = predict_batch(tiny_model, image, points, text, keys, votes=2)
    alone = predict_batch(tiny_model, image[1:2], points[1:2], text[1:2], keys[1:2], votes=2)
    np.testing.assert_allclose(together[1], alone[0], atol=1e-5)


def test_predictions_leave_the_callers_random_stream_where_it_was(tiny_model: torch.nn.Module) -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(size=(1, 3, 64, 64)).astype(np.float32)
    points = rng.normal(size=(1, 3, 256)).astype(np.float32)
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    predict_batch(tiny_model, image, points, ["grasp"], ["a"], votes=2)  # seeds each pass, on a fork of the RNG
    assert torch.equal(torch.rand(4), expected)


def test_heat_colours_run_from_grey_to_red() -> None:
    assert heat_colors(np.array([0.0, 1.0, 0.2, -1.0, 2.0])).tolist() == [
        [190, 190, 190], [255, 0, 0], [203, 152, 152], [190, 190, 190], [255, 0, 0],
    ]  # fmt: skip


def test_model_overrides_apply_to_the_stored_config_and_unknown_keys_fail() -> None:
    stored = {"backbone": "llava-1.6-vicuna-7b", "image_size": 224}
    cfg = model_config(stored, ["model.backbone_path=/models/vicuna", "model.image_size=96"], "meta.json")
    assert cfg.backbone_path == "/models/vicuna" and cfg.image_size == 96
    with pytest.raises(UserError, match="model.no_such_key"):
        model_config(stored, ["model.no_such_key=1"], "meta.json")


def test_explicit_tracking_uri_wins_over_the_checkpoints() -> None:
    assert choose_tracking_uri("http://mine", True, "http://recorded") == "http://mine"
    assert choose_tracking_uri("sqlite:///default.db", False, "http://recorded") == "http://recorded"
    assert choose_tracking_uri("sqlite:///default.db", False, None) == "sqlite:///default.db"


def test_unknown_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder"):
        resolve(str(tmp_path / "absent"), "sqlite:///x.db")
    (tmp_path / "run" / "checkpoint_step000000004").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint_step000000004" / "lma3d_meta.json").write_text("{}")
    with pytest.raises(UserError, match="a run folder; pass one of its checkpoints \\(checkpoint_step000000004\\)"):
        resolve(str(tmp_path / "run"), "sqlite:///x.db")


def test_shards_with_another_point_count_than_the_model_are_refused() -> None:
    from jobs.evaluation.job import check_fit

    source = Resolved(tiny_model_config(), {}, provenance("ckpt", "checkpoint"))
    check_fit({"config": {"num_points": 256}}, source, "shards")
    with pytest.raises(UserError, match="shards holds 2048-point clouds but ckpt expects model.num_points=256"):
        check_fit({"config": {"num_points": 2048}}, source, "shards")


def test_shuffled_instruction_runs_are_named_apart_from_evaluations() -> None:
    from jobs.evaluation.job import run_name

    stepped = Resolved(tiny_model_config(), {}, provenance("ckpt", "checkpoint", step=40))
    named = Resolved(tiny_model_config(), {}, provenance("export", "exported", name="demo-model"))
    assert [run_name(stepped, False), run_name(stepped, True)] == ["eval-step40", "eval-shuffled-step40"]
    assert [run_name(named, False), run_name(named, True)] == ["eval-demo-model", "eval-shuffled-demo-model"]


@pytest.mark.parametrize(
    ("changes", "resources", "expected"),
    [
        ({"use_gpu": True}, {"CPU": 176.0, "GPU": 8.0}, 8),  # one actor per GPU
        ({"use_gpu": True}, {"CPU": 8.0}, 1),  # GPU group at zero replicas: one actor's demand scales it up
        ({"cpus_per_actor": 0.5}, {"CPU": 2.0}, 2),  # (2 - 1 read CPU) / 0.5
        ({"cpus_per_actor": 2.0}, {"CPU": 9.0}, 4),  # (9 - 1) / 2
        ({"cpus_per_actor": 3.0}, {"CPU": 9.0}, 2),  # (9 - 1) / 3 = 2.67, whole actors only
        ({}, {"CPU": 1.0}, 1),  # nothing left after the reader: still one actor
        ({"num_actors": 3, "use_gpu": True}, {"CPU": 64.0, "GPU": 8.0}, 3),  # a number is taken as is
    ],
)
def test_auto_pool_size_from_cluster_resources(changes, resources, expected) -> None:
    from jobs.evaluation.eval_config import EvalConfig
    from jobs.evaluation.runner import pool_size

    assert pool_size(EvalConfig(**({"num_actors": "auto"} | changes)), resources) == expected


def test_eval_num_actors_defaults_to_auto_and_accepts_a_number_or_auto_only() -> None:
    from jobs.evaluation.eval_config import EvalConfig
    from jobs.experiment_config import ExperimentConfig
    from jobs.typed_yaml import ConfigError, build

    assert EvalConfig().num_actors == "auto"
    assert build(ExperimentConfig, {"eval": {"num_actors": 4}}, "<t>").eval.num_actors == 4
    with pytest.raises(ConfigError, match="eval.num_actors"):
        build(ExperimentConfig, {"eval": {"num_actors": "all"}}, "<t>")
    with pytest.raises(ConfigError, match="eval.num_actors"):
        build(ExperimentConfig, {"eval": {"num_actors": 0}}, "<t>")
