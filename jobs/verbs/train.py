"""lma3d train: Ray Train + DeepSpeed ZeRO training with checkpoints, resume and MLflow tracking.

    lma3d train --config configs/agpil/full_seen.yaml model.backbone_path=/models/llava-v1.6-vicuna-7b
    lma3d train --config configs/demo.yaml train.num_workers=2 train.zero_stage=2 --run-name demo-z2
    lma3d train --config configs/demo.yaml --run-name demo-z2 --resume latest      (continue a run)
    lma3d train --config configs/demo.yaml --no-ray --run-name debug        (one process; breakpoint() works)
    lma3d submit train --config configs/agpil/full_seen.yaml train.num_workers=8 --address http://HEAD:8265

A run lives in <train.storage_path>/<run name> (default <workdir>/runs/<date>-<view>-<setting>-lr<lr>-bs<bs>).
An existing run with checkpoints is resumed; one without is never overwritten unless --overwrite is given.
Without --address / RAY_ADDRESS a local Ray cluster is started; MLflow defaults to sqlite:///<workdir>/mlflow.db.
On a cluster (--address, RAY_ADDRESS, a submitted job) those defaults under a relative workdir are refused: set
train.storage_path and mlflow.tracking_uri to shared storage. Faults (a dead worker, an out-of-memory kill, a lost
node) are retried from the latest checkpoint up to train.max_failures times in all.
--no-ray runs the same training loop in this process as one rank (no Ray imported), with the same checkpoints
and MLflow run, resumed the same way: for debugging a loss with breakpoint() or pdb.
"""

from __future__ import annotations

import argparse

from jobs.entry import UserError, entry
from jobs.experiment_config import add_config_args, resolve_config


def parser() -> argparse.ArgumentParser:
    """lma3d train's flags (`lma3d submit train` parses them too, to check the job before it submits it)."""
    parser = argparse.ArgumentParser(
        prog="lma3d train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    parser.add_argument("--resume", metavar="latest|PATH", help="continue this run, or start it from a checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run of the same name first")
    parser.add_argument("--run-name", help="run name (default: train.run_name, else <date>-<view>-<setting>-lr-bs)")
    parser.add_argument("--no-ray", action="store_true", help="train in this process as one rank, without Ray "
                        "(same checkpoints and MLflow run; for debugging: breakpoint() works)")  # fmt: skip
    return parser


@entry("train")
def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    cfg = resolve_config(args)

    from jobs.training.launcher import launch
    from pipeline.loaders.reading import corrupt_shard_line

    try:
        summary = launch(cfg, address=args.address, resume=args.resume, overwrite=args.overwrite,
                         run_name=args.run_name, no_ray=args.no_ray)  # fmt: skip
    except Exception as error:
        line = corrupt_shard_line(error)  # a corrupt shard a loader met (data.on_corrupt_shard: fail): one line
        if line:
            raise UserError(line) from None
        raise
    print(summary.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
