"""lma3d metrics: AUC / aIOU / SIM / MAE (docs/original.md §4) of a prediction array against a GT array.

    lma3d metrics --pred work/eval/pred.npy --gt gt.npy
    lma3d metrics --pred pred.npy --gt gt.npy --objects objects.txt --affordances affordances.txt --json

PRED and GT are float arrays [N, points] with values in [0, 1]; the names files hold one name per sample line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jobs.entry import UserError, entry


def _array(path: str, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{what} {path}: cannot read as a .npy array ({e})") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{what} {path}: expected a float array [N, points], got {array.dtype} {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserError(f"{what} {path}: {int(bad.sum())} non-finite values (first at row {row}, column {col})")
    outside = (array < 0) | (array > 1)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise UserError(f"{what} {path}: values outside [0, 1] (first {array[row, col]:g} at row {row}, column {col})")
    return array


def _names(path: str | None, rows: int) -> list[str] | None:
    if path is None:
        return None
    names = Path(path).read_text().splitlines()
    if len(names) != rows:
        raise UserError(f"{path}: {len(names)} lines for {rows} samples")
    return names


@entry("metrics")
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lma3d metrics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pred", required=True, help="predictions .npy, float [N, points] in [0, 1]")
    parser.add_argument("--gt", required=True, help="ground truth .npy, float [N, points] in [0, 1]")
    parser.add_argument("--objects", help="text file: the object of each sample, one per line")
    parser.add_argument("--affordances", help="text file: the affordance of each sample, one per line")
    parser.add_argument("--json", action="store_true", help="print JSON (AUC and aIOU as fractions)")
    args = parser.parse_args(argv)

    from model.metrics import evaluate, format_table

    pred, gt = _array(args.pred, "--pred"), _array(args.gt, "--gt")
    if pred.shape != gt.shape:
        raise UserError(f"--pred {args.pred} has shape {pred.shape} but --gt {args.gt} has {gt.shape}")
    metrics = evaluate(pred, gt, _names(args.objects, len(pred)), _names(args.affordances, len(pred)))
    print(json.dumps(metrics, indent=2) if args.json else format_table(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
