"""AUC, aIOU, SIM, MAE (and KLD) exactly as the original's evaluation (spec §4), vectorised over samples.

Per sample: GT binarised at 0.5 for AUC and aIOU (NaN when it has no positive point, excluded by nanmean);
SIM and MAE on the continuous GT. Overall numbers are per-sample means (micro), as the original.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = np.linspace(0, 1, 20)
KEYS = ("auc", "aiou", "sim", "mae")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Row-wise ranks 1..N with ties given their average rank (what roc_auc_score's Mann-Whitney form needs)."""
    m, n = values.shape
    order = np.argsort(values, axis=1, kind="mergesort")
    sorted_values = np.take_along_axis(values, order, axis=1)
    new_group = np.ones((m, n), dtype=bool)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = np.cumsum(new_group, axis=1) - 1  # group id per sorted position
    position = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (m, n))
    offsets = (np.arange(m) * n)[:, None]
    flat_group = (group + offsets).ravel()
    sums = np.bincount(flat_group, weights=position.ravel(), minlength=m * n)
    counts = np.bincount(flat_group, minlength=m * n)
    mean_rank = (sums / np.maximum(counts, 1))[flat_group].reshape(m, n)
    ranks = np.empty((m, n))
    np.put_along_axis(ranks, order, mean_rank, axis=1)
    return ranks


def _threshold_counts(pred: np.ndarray, binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row and threshold t: |{p >= t} & positives| and |{p >= t}|, from one histogram per row (each point
    falls in the bin of the number of thresholds <= p) instead of a [M, thresholds, N] comparison."""
    m, t = pred.shape[0], len(THRESHOLDS)
    level = np.searchsorted(THRESHOLDS, pred, side="right")  # p >= THRESHOLDS[j] exactly when j < level
    flat = (level + (np.arange(m) * (t + 1))[:, None]).ravel()
    every = np.bincount(flat, minlength=m * (t + 1)).reshape(m, t + 1)
    hits = np.bincount(flat, weights=binary.ravel().astype(np.float64), minlength=m * (t + 1)).reshape(m, t + 1)
    at_least = lambda counts: np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]  # sum over levels > j
    return at_least(hits), at_least(every)


def per_sample(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """pred, gt [M,N] in [0,1] -> {auc, aiou, sim, mae, kld}: arrays [M] (NaN where undefined)."""
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be the same [M,N]")
    n = pred.shape[1]
    binary = gt >= 0.5
    positives = binary.sum(1)
    negatives = n - positives
    with np.errstate(invalid="ignore", divide="ignore"):
        rank_sum = np.where(binary, _average_ranks(pred), 0.0).sum(1)
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
        auc = np.where(negatives == 0, np.nan, auc)  # all-positive GT: roc_auc_score is undefined too
        intersection, predicted = _threshold_counts(pred, binary)
        aiou = (intersection / (predicted + positives[:, None] - intersection)).mean(1)
    empty = positives == 0
    auc[empty] = np.nan
    aiou = np.where(empty, np.nan, aiou)
    p_norm = pred / (pred.sum(1, keepdims=True) + 1e-12)
    g_norm = gt / (gt.sum(1, keepdims=True) + 1e-12)
    sim = np.minimum(p_norm, g_norm).sum(1)
    mae = np.abs(pred - gt).mean(1)
    kld = (g_norm * np.log(g_norm / (p_norm + 1e-12) + 1e-12)).sum(1)
    return {"auc": auc, "aiou": aiou, "sim": sim, "mae": mae, "kld": kld}


def _summary(values: dict[str, np.ndarray], rows: np.ndarray | slice) -> dict[str, float]:
    out = {}
    for key, array in values.items():
        chosen = array[rows]
        finite = chosen[~np.isnan(chosen)]
        out[key] = float(finite.mean()) if finite.size else float("nan")
    out["n"] = int(np.asarray(values["mae"][rows]).size)
    return out


def evaluate(
    pred: np.ndarray, gt: np.ndarray, objects: list[str] | None = None, affordances: list[str] | None = None
) -> dict:
    """Overall metrics (AUC and aIOU as fractions) plus per-object and per-affordance breakdowns."""
    values = per_sample(pred, gt)
    result: dict = _summary(values, slice(None))
    for name, labels in (("per_object", objects), ("per_affordance", affordances)):
        table = {}
        if labels is not None:
            labels_array = np.asarray(labels)
            if labels_array.shape[0] != len(values["mae"]):
                raise ValueError(f"{name}: {labels_array.shape[0]} names for {len(values['mae'])} samples")
            for label in sorted(set(labels)):
                table[label] = {k: v for k, v in _summary(values, labels_array == label).items() if k != "kld"}
        result[name] = table
    return result


def _row(name: str, m: dict) -> str:
    return f"{name:<18}{100 * m['auc']:>8.2f}{100 * m['aiou']:>8.2f}{m['sim']:>8.3f}{m['mae']:>8.3f}{m['n']:>7d}"


def format_table(metrics: dict) -> str:
    """The paper's layout: AUC and aIOU in %, SIM and MAE as fractions; then per object and per affordance."""
    header = f"{'':<18}{'AUC':>8}{'aIOU':>8}{'SIM':>8}{'MAE':>8}{'n':>7}"
    lines = [header, _row("overall", metrics)]
    for title in ("per_object", "per_affordance"):
        if metrics.get(title):
            lines += ["", f"{title.replace('_', ' ')}:", header]
            lines += [_row(name, m) for name, m in sorted(metrics[title].items())]
    return "\n".join(lines)
