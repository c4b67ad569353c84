"""lma3d eval: distributed evaluation (Ray Data actor pool) of a checkpoint, run or registered model on test shards.

    lma3d eval --checkpoint work/runs/demo/checkpoint_step000000120 --shards work/shards/demo
    lma3d eval --checkpoint RUN_ID --config configs/agpil/full_seen.yaml       (an MLflow training run)
    lma3d eval --checkpoint models:/lma3d@champion --shards work/shards/full-seen eval.num_actors=2 --votes 3
    lma3d eval --checkpoint CKPT --shards SHARDS model.backbone_path=/models/llava-v1.6-vicuna-7b

Writes OUT/metrics.json, per_class.csv, predictions.npz (float16), prediction.txt (the original's N x 2048
layout, rows in the test list's order) with prediction_keys.txt (each row's key), and viz/ (GT and prediction
PLY + PNG of test samples spread over objects and affordances, the same every run); prints the paper's table;
logs to MLflow as a child of the training run when the model came from a tracked run, else as a run of its own
(`eval-step<N>`, or `eval-shuffled-step<N>` with --shuffle-instructions).
The model config comes from the checkpoint; `model.*` overrides on the command line are applied to it.
"""

from __future__ import annotations

import argparse

from jobs.entry import entry
from jobs.experiment_config import add_config_args, model_overrides, resolve_config


@entry("eval")
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lma3d eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder | exported folder | run id | models:/…")
    parser.add_argument("--shards", help="shard folder of lma3d shard (default: data.shards)")
    parser.add_argument("--out", help="result folder (default: <workdir>/eval/<checkpoint name>)")
    parser.add_argument("--votes", type=int, help="average K seeded passes per sample (sets eval.votes)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument(
        "--shuffle-instructions", action="store_true", help="ablation: each sample gets another's instruction"
    )
    args = parser.parse_args(argv)
    if args.shuffle_instructions:
        args.overrides.append("eval.shuffle_instructions=true")
    if args.votes is not None:
        args.overrides.append(f"eval.votes={args.votes}")
    cfg = resolve_config(args, model_from_source=True)

    from jobs.evaluation.job import evaluate
    from model.metrics import format_table

    report = evaluate(
        cfg, args.checkpoint, args.shards, args.out, args.address, model_overrides(args), not args.no_mlflow
    )
    print(format_table(report.result.metrics))
    print(f"\nresults: {report.out_dir}" + (f"   MLflow run: {report.run_id}" if report.run_id else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
