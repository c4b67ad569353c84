"""lma3d synth: write a synthetic AGPIL-format dataset (one view x setting folder) from a seed.

    lma3d synth --out work/raw/Full_view/Seen --view full --setting seen --seed 0
    lma3d synth --out work/raw/Rotation_view/Unseen --view rotation --setting unseen --train-images 30000 --workers 4

Procedural objects of the 23 classes built from parts, per-point GT falling off from the part each affordance
belongs to, interaction images with a hand at the used part (with probability --cue-prob), and instructions
that name the action directly or indirectly. The AGPIL reader (lma3d inspect / lma3d shard) reads it as is.
"""

from __future__ import annotations

import argparse
import json

from jobs.entry import UserError, entry
from pipeline.synth.config import SynthConfig
from pipeline.synth.generate import default_workers, generate


@entry("synth")
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lma3d synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = SynthConfig()
    parser.add_argument("--out", default=d.out, help=f"AGPIL root to write (default {d.out})")
    parser.add_argument("--view", default=d.view, choices=("full", "partial", "rotation"))
    parser.add_argument("--setting", default=d.setting, choices=("seen", "unseen"))
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--train-images", type=int, default=d.train_images, help=f"default {d.train_images}")
    parser.add_argument("--test-samples", type=int, default=d.test_samples, help=f"default {d.test_samples}")
    parser.add_argument("--points-per-object", type=int, default=d.points_per_object, help="train clouds per class")
    parser.add_argument("--num-points", type=int, default=d.num_points)
    parser.add_argument("--image-size", type=int, default=d.image_size)
    parser.add_argument("--cue-prob", type=float, default=d.cue_prob, help="chance the hand marks the used part")
    parser.add_argument("--workers", type=int, default=default_workers(), help="processes (output is identical)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    try:
        cfg = SynthConfig(
            out=args.out, view=args.view, setting=args.setting, seed=args.seed, train_images=args.train_images,
            test_samples=args.test_samples, points_per_object=args.points_per_object, num_points=args.num_points,
            image_size=args.image_size, cue_prob=args.cue_prob,
        )  # fmt: skip
        summary = generate(cfg, workers=args.workers, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
