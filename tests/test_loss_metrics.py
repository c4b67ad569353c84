"""Loss golden values by hand (docs/original.md §3.3); metrics against per-sample scikit-learn and plain-numpy
references."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from jobs.verbs.metrics import main as metrics_main
from model.loss import heatmap_loss
from model.metrics import evaluate, format_table, per_sample


def test_loss_of_a_hand_computed_pair():
    pred, gt = torch.tensor([[0.8, 0.2]]), torch.tensor([[1.0, 0.0]])
    # focal per point: y=1: -0.25 * 0.2^2 * ln(0.8+1e-6); y=0: -0.75 * 0.2^2 * ln(0.8+1e-6)
    focal = (-0.25 * 0.04 * math.log(0.800001) - 0.75 * 0.04 * math.log(0.800001)) / 2
    d_pos = (0.8 + 1e-6) / (0.8 + 0.2 + 1.0 + 1e-6)
    d_neg = (0.8 + 1e-6) / ((2 - 0.8 - 1.0) + (2 - 0.2 - 0.0) + 1e-6)
    assert float(heatmap_loss(pred, gt)) == pytest.approx(focal + 1.5 - d_pos - d_neg, rel=1e-5)


def test_loss_sums_over_the_pairs():
    pred = torch.rand(2, 3, 16, generator=torch.Generator().manual_seed(0))
    gt = torch.rand(2, 3, 16, generator=torch.Generator().manual_seed(1))
    per_pair = [float(heatmap_loss(pred[:, k], gt[:, k])) for k in range(3)]
    assert float(heatmap_loss(pred, gt)) == pytest.approx(sum(per_pair), rel=1e-6)


def _reference(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """The original's per-sample loop (docs/original.md §4) with scikit-learn's AUC."""
    out = {k: [] for k in ("auc", "aiou", "sim", "mae")}
    for p, g in zip(pred, gt):
        b = g >= 0.5
        if b.sum() == 0 or b.all():
            out["auc"].append(np.nan)
        else:
            out["auc"].append(roc_auc_score(b, p))
        if b.sum() == 0:
            out["aiou"].append(np.nan)
        else:
            out["aiou"].append(np.mean([((p >= t) & b).sum() / ((p >= t) | b).sum() for t in np.linspace(0, 1, 20)]))
        out["sim"].append(np.minimum(p / (p.sum() + 1e-12), g / (g.sum() + 1e-12)).sum())
        out["mae"].append(np.abs(p - g).mean())
    return {k: np.array(v) for k, v in out.items()}


def test_per_sample_metrics_equal_scikit_learn_with_ties_and_degenerate_gt():
    rng = np.random.default_rng(0)
    pred = np.round(rng.random((40, 200)), 1)  # rounding makes many ties
    gt = rng.random((40, 200)) ** 3
    gt[0], gt[1], gt[2] = 0.0, 1.0, 0.49  # empty, all-positive, just under the threshold
    pred[3] = 0.5  # a constant prediction: AUC 0.5
    got, ref = per_sample(pred, gt, block_rows=16), _reference(pred, gt)  # 40 rows: three blocks
    for key in ("auc", "aiou", "sim", "mae"):
        np.testing.assert_allclose(got[key], ref[key], atol=1e-6, equal_nan=True)
    assert np.isnan(got["auc"][0]) and np.isnan(got["aiou"][0]) and got["auc"][3] == pytest.approx(0.5)


def test_per_sample_metrics_are_exact_at_the_aiou_thresholds_and_for_float32():
    rng = np.random.default_rng(2)
    at = np.linspace(0, 1, 20)
    # each threshold itself and its float64 neighbours: where a floor(p * 19) shortcut would be off by one
    edges = np.concatenate([at, np.nextafter(at, 2.0), np.nextafter(at, -1.0)]).clip(0, 1)
    pred = rng.choice(edges, size=(30, 120))
    gt = rng.random((30, 120)) ** 2
    got, ref = per_sample(pred, gt), _reference(pred, gt)
    np.testing.assert_array_equal(got["aiou"], ref["aiou"])  # from integer counts: equal, not close
    np.testing.assert_allclose(got["auc"], ref["auc"], rtol=1e-12)  # scikit-learn sums trapezoids
    pred32 = rng.random((10, 64)).astype(np.float32)
    np.testing.assert_allclose(per_sample(pred32, gt[:10, :64])["auc"], _reference(pred32, gt[:10, :64])["auc"])


def test_per_sample_rejects_predictions_outside_zero_one():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        per_sample(np.array([[0.2, 1.5]]), np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        per_sample(np.array([[0.2, np.nan]]), np.array([[1.0, 0.0]]))


def test_evaluate_uses_nanmean_and_breaks_down_per_class():
    pred = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    gt = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    result = evaluate(pred, gt, ["Mug", "Mug", "Bag"], ["grasp", "pour", "grasp"])
    assert result["auc"] == pytest.approx((1.0 + 0.5) / 2)  # the empty-GT sample is left out
    assert result["n"] == 3 and result["per_object"]["Mug"]["n"] == 2
    assert result["per_affordance"]["grasp"]["auc"] == pytest.approx(0.75)
    assert "AUC" in format_table(result) and "Mug" in format_table(result)


def test_metrics_cli_prints_json(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "p.npy", rng.random((5, 64)))
    np.save(tmp_path / "g.npy", rng.random((5, 64)))
    (tmp_path / "o.txt").write_text("Mug\nMug\nBag\nBag\nBag\n")
    code = metrics_main(
        [
            "--pred",
            str(tmp_path / "p.npy"),
            "--gt",
            str(tmp_path / "g.npy"),
            "--objects",
            str(tmp_path / "o.txt"),
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"auc", "aiou", "sim", "mae", "n", "per_object", "per_affordance"} and out["n"] == 5


@pytest.mark.parametrize(
    "pred, message",
    [
        (np.full((5, 64), np.nan), "non-finite"),
        (np.full((5, 64), 1.5), "outside [0, 1]"),
        (np.full((4, 64), 0.5), "has shape"),
    ],
)
def test_metrics_cli_rejects_bad_arrays_with_one_clear_line(tmp_path, capsys, pred, message):
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "g.npy", np.zeros((5, 64)))
    assert metrics_main(["--pred", str(tmp_path / "p.npy"), "--gt", str(tmp_path / "g.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
