"""lma3d sweep: Ray Tune over the training job; one MLflow parent run, a child run per trial, best.json.

    lma3d sweep --config configs/demo.yaml --search configs/sweeps/demo.yaml --trials 8 --scheduler asha
    lma3d sweep --config configs/agpil/full_seen.yaml --search SPACE.yaml --trials 16 --max-concurrent 2 \\
        --name lr-wd model.backbone_path=/models/llava-v1.6-vicuna-7b
    lma3d submit sweep --config … --search … --trials 16 --address http://HEAD:8265

SPACE.yaml maps dotted config keys to {loguniform: [a, b]}, {uniform: [a, b]}, {choice: [...]} or
{randint: [a, b]}; keys and values are checked against the config before Ray starts. Each trial is `lma3d train`
with those values (resources: train.num_workers x train.cpus_per_worker, GPUs with train.use_gpu). ASHA stops
weak trials at validation rounds (one per checkpoint report: keep train.checkpoint_every 0 so a round is a
validated epoch). Results: <workdir>/sweeps/<name>/trials.csv and best.json (its checkpoint goes straight to
`lma3d eval --checkpoint` and `lma3d export`). Ctrl-C, then the same command, resumes without re-running
finished trials.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from jobs.cluster_storage import check_train_outputs
from jobs.entry import UserError, entry
from jobs.experiment_config import add_config_args, resolve_config_mapping


def parser() -> argparse.ArgumentParser:
    """lma3d sweep's flags (`lma3d submit sweep` parses them too, to check the job before it submits it)."""
    parser = argparse.ArgumentParser(
        prog="lma3d sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument("--search", required=True, metavar="SPACE.yaml",
                        help="the search space: a file, or a shipped space's name (demo, agpil)")  # fmt: skip
    parser.add_argument("--trials", type=int, required=True, help="number of trials to sample")
    parser.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default: what fits)")
    parser.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo", help="asha stops weak trials")
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA: rounds before a trial can be stopped")
    parser.add_argument("--metric", default="val/auc", help="the metric to optimise (default: val/auc)")
    parser.add_argument("--mode", choices=("max", "min"), default="max")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    parser.add_argument("--name", help="sweep name (default: sweep-<date>); the same name resumes it")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    return parser


@entry("sweep")
def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.trials < 1 or args.max_concurrent < 0 or args.grace_period < 1:
        raise UserError("--trials and --grace-period must be >= 1, --max-concurrent >= 0")
    cfg, data = resolve_config_mapping(args)
    check_train_outputs(cfg, args.address)  # on a cluster every trial's checkpoints and MLflow store must be shared

    from jobs.resources import SPACES, find_config
    from jobs.sweeping.inputs import check_trial_inputs, resolve_sweep
    from jobs.sweeping.runner import SweepSpec, sweep, sweep_dir
    from pipeline.ray_session import ensure_ray
    from pipeline.writer_lock import OutputBusy, exclusive

    # Paths absolute and every value of the space built into the config, here: trials never re-decide.
    inputs = resolve_sweep(cfg, data, find_config(args.search, SPACES))
    check_trial_inputs(inputs)  # the shards, model files and the storage every trial uses: one line, before Ray
    space = inputs.space
    name = args.name or f"sweep-{dt.date.today().isoformat()}"
    spec = SweepSpec(
        name, args.trials, args.metric, args.mode, args.scheduler, args.grace_period, args.max_concurrent, args.seed
    )
    try:
        with exclusive(sweep_dir(inputs.cfg, name), "sweep"):  # two drivers of one sweep would run its trials twice
            ensure_ray(args.address)
            summary = sweep(inputs.cfg, spec, space, inputs.base)
    except OutputBusy as e:
        raise UserError(str(e)) from None
    print(summary.table(sorted(space)))
    if summary.interrupted:
        print(f"sweep {name} interrupted: run the same command again to resume it ({summary.folder})")
        return 130
    for trial in summary.failed:  # each errored trial and why; the whole story is in Ray Tune's trial folder
        run = f" (MLflow run {trial['mlflow_run_id']})" if trial["mlflow_run_id"] else ""
        print(f"trial {trial['trial']} failed: {trial['error'] or 'error'}{run}", file=sys.stderr)
    best = summary.best
    if best is None:
        print(f"sweep {name}: no trial reported {args.metric}", file=sys.stderr)
        return 1
    print(f"best: trial {best['trial']} {args.metric}={best['best']:.4f} {best['overrides']}")
    print(f"      {summary.folder / 'best.json'} -> lma3d eval --checkpoint {best['checkpoint']}")
    if summary.failed:
        print(f"sweep {name}: {len(summary.failed)} of {len(summary.trials)} trials failed (the same command runs "
              "them again)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
