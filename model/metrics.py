"""AUC, aIOU, SIM, MAE exactly as the original's evaluation (docs/original.md §4), vectorised over samples.

Per sample: GT binarised at 0.5 for AUC and aIOU (NaN when it has no positive point, excluded by nanmean);
SIM and MAE on the continuous GT. Overall numbers are per-sample means (micro), as the original.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = np.linspace(0, 1, 20)
KEYS = ("auc", "aiou", "sim", "mae")
"""The reported metrics, in the paper's order: metrics.json, the tables, MLflow and validation use these."""


def _auc(pred: np.ndarray, binary: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Row-wise ROC AUC in its Mann-Whitney form, ties counted half, from one integer sort per row.

    For values in [0, 1] the float64 bit pattern orders like the value and stays below 2**62, so
    (bits << 1) | label sorts by value and, among equal values, puts negatives before positives. A positive
    then beats the negatives counted before its tie group and ties with the ones counted inside it."""
    m, n = pred.shape
    keys = (pred.view(np.int64) << 1) | binary
    keys.sort(axis=1)
    positive = (keys & 1).astype(bool)
    negative = ~positive
    negatives_through = np.cumsum(negative, axis=1)  # negatives at or before each sorted position
    value = keys >> 1
    tie = value[:, 1:] == value[:, :-1]
    if tie.any():
        new_group = np.ones((m, n), dtype=bool)
        new_group[:, 1:] = ~tie
        negatives_below = np.maximum.accumulate(np.where(new_group, negatives_through - negative, 0), axis=1)
        wins = (negatives_through + negatives_below) / 2  # below: 1 each; tied (all before a positive): 1/2 each
    else:
        wins = negatives_through
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positive, wins, 0).sum(1) / (positives * (n - positives))


def _threshold_counts(pred: np.ndarray, binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row and threshold t: |{p >= t} & positives| and |{p >= t}|, from one histogram per row (each point
    falls in the bin of the number of thresholds <= p) instead of a [M, thresholds, N] comparison."""
    m, t = pred.shape[0], len(THRESHOLDS)
    # THRESHOLDS[j] is j/(t-1) up to rounding, so floor(p*(t-1))+1 thresholds are <= p give or take one at a
    # boundary; comparing against the two neighbouring thresholds makes the count exact.
    level = np.minimum(np.floor(pred * (t - 1)), t - 1).astype(np.intp) + 1
    level += pred >= np.append(THRESHOLDS, np.inf)[level]
    level -= pred < THRESHOLDS[level - 1]
    flat = ((level + (np.arange(m) * (t + 1))[:, None]) * 2 + binary).ravel()
    counts = np.bincount(flat, minlength=m * (t + 1) * 2).reshape(m, t + 1, 2)
    at_least = lambda c: np.cumsum(c[:, ::-1], axis=1)[:, ::-1][:, 1:]  # sum over levels > j
    return at_least(counts[..., 1]), at_least(counts.sum(2))


def per_sample(pred: np.ndarray, gt: np.ndarray, block_rows: int = 64) -> dict[str, np.ndarray]:
    """pred, gt [M,N] in [0,1] -> {auc, aiou, sim, mae}: arrays [M] (NaN where undefined)."""
    pred = np.ascontiguousarray(pred, dtype=np.float64)  # _auc reads its bits
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be the same [M,N]")
    if not ((pred >= 0) & (pred <= 1)).all():
        raise ValueError("pred must hold probabilities in [0, 1] (no NaN)")
    # Blocks of rows keep every temporary in cache: 1.6x faster than whole arrays at 1000 x 2048.
    blocks = [_block(pred[i : i + block_rows], gt[i : i + block_rows]) for i in range(0, max(len(pred), 1), block_rows)]
    return {key: np.concatenate([b[key] for b in blocks]) for key in KEYS}


def _block(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    n = pred.shape[1]
    binary = gt >= 0.5
    positives = binary.sum(1)
    auc = _auc(pred, binary, positives)
    auc = np.where(positives == n, np.nan, auc)  # all-positive GT: roc_auc_score is undefined too
    intersection, predicted = _threshold_counts(pred, binary)
    with np.errstate(invalid="ignore", divide="ignore"):
        aiou = (intersection / (predicted + positives[:, None] - intersection)).mean(1)
    empty = positives == 0
    auc[empty] = np.nan
    aiou = np.where(empty, np.nan, aiou)
    p_norm = pred / (pred.sum(1, keepdims=True) + 1e-12)
    g_norm = gt / (gt.sum(1, keepdims=True) + 1e-12)
    sim = np.minimum(p_norm, g_norm).sum(1)
    mae = np.abs(pred - gt).mean(1)
    return {"auc": auc, "aiou": aiou, "sim": sim, "mae": mae}


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
    return summarize(per_sample(pred, gt), objects, affordances)


def summarize(
    values: dict[str, np.ndarray], objects: list[str] | None = None, affordances: list[str] | None = None
) -> dict:
    """per_sample's arrays (computed in any number of pieces, concatenated) -> evaluate's result: the overall
    per-sample means and the per-object and per-affordance ones."""
    result: dict = _summary(values, slice(None))
    for name, labels in (("per_object", objects), ("per_affordance", affordances)):
        table = {}
        if labels is not None:
            labels_array = np.asarray(labels)
            if labels_array.shape[0] != len(values["mae"]):
                raise ValueError(f"{name}: {labels_array.shape[0]} names for {len(values['mae'])} samples")
            for label in sorted(set(labels)):
                table[label] = _summary(values, labels_array == label)
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
