"""lma3d shard: Ray Data job: raw dataset -> WebDataset shards + memory-mapped point bank + manifest.

    lma3d shard --source work/raw/Full_view/Seen --format agpil --out work/shards/full-seen
    lma3d shard --source data/PIAD/Seen --out shards/piad-seen --samples-per-shard 512
    lma3d shard --source /mnt/cluster_storage/raw --out /mnt/cluster_storage/shards --address ray://head:10001
    lma3d shard --source work/raw/Full_view/Seen --out /tmp/shards --no-ray    # this process, no Ray

OUT gets train/shard-NNNNNN.tar (images + instructions), test/shard-NNNNNN.tar (image, points, GT column,
instruction), points.arrow (the train point clouds), manifest.json, sizes.json and quarantine.jsonl (one line
per rejected raw record, with the reason). Exits 1 when nothing was written or more than --max-bad-fraction of
the raw records was quarantined.
"""

from __future__ import annotations

import argparse

from jobs.entry import UserError, entry, stage
from pipeline.formats import FORMATS
from pipeline.shards.config import ShardConfig


@entry("shard")
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lma3d shard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = ShardConfig()
    parser.add_argument("--source", required=True, help="raw dataset root (AGPIL view x setting folder, PIAD, LASO)")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="raw format (default: detect)")
    parser.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    parser.add_argument(
        "--samples-per-shard", type=int, default=d.samples_per_shard, help=f"default {d.samples_per_shard}"
    )
    parser.add_argument("--max-bad-fraction", type=float, default=d.max_bad_fraction, help="default 0.01")
    parser.add_argument("--min-shards", type=int, default=d.min_shards, help="warn below this many shards per split")
    parser.add_argument("--num-points", type=int, default=2048, help="points per cloud (default 2048)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument(
        "--no-ray",
        action="store_true",
        help="every shard in this process, one after the other, same output (a dataset too small to pay for "
        "Ray's start, or a reader debugged with breakpoint())",
    )
    args = parser.parse_args(argv)
    if args.no_ray and args.address:
        raise UserError("--no-ray shards in this process: --address needs Ray")

    from pipeline.shards.job import run

    try:
        cfg = ShardConfig(args.samples_per_shard, args.max_bad_fraction, min_shards=args.min_shards)
        with stage("sharding in this process (--no-ray)" if args.no_ray else "Ray Data sharding"):
            manifest = run(
                args.source, args.format, args.out, cfg, args.num_points, args.overwrite, args.address,
                use_ray=not args.no_ray,
            )  # fmt: skip
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    read, written, bad = manifest["read"], manifest["written"], manifest["quarantined"]
    lines = [f"sharded {args.source} ({manifest['source_format']}) -> {args.out}"]
    for split, info in manifest["splits"].items():
        lines.append(f"  {split:<6} {info['samples']:>7} samples in {info['shards']} shards")
        if info["shards"] < cfg.min_shards:
            lines.append(
                f"  warning: {split} has {info['shards']} shards < {cfg.min_shards} (train workers x loader "
                "processes): some will idle; lower --samples-per-shard"
            )
    if manifest["point_bank"]:
        lines.append(f"  points {manifest['point_bank']['clouds']:>7} clouds in points.arrow")
    lines.append(f"  read {read} = written {written} + quarantined {bad}  {manifest['quarantine_reasons'] or ''}")
    print("\n".join(lines))
    if written == 0:
        print("lma3d shard: error: nothing could be written; see quarantine.jsonl")
        return 1
    if read and bad / read > cfg.max_bad_fraction:
        print(f"lma3d shard: error: {bad}/{read} records quarantined > --max-bad-fraction {cfg.max_bad_fraction}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
