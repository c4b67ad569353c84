"""lma3d predict: affordance heat map of a point cloud, from an interaction image and an instruction.

    lma3d predict --model work/models/demo --image Img.jpg --points Point.txt --instruction "Lift the bag" --out pred/
    lma3d predict --model models:/lma3d@champion --batch inputs.tsv --out pred/
    lma3d predict --model work/models/demo --batch folder/ --instruction "Grasp the mug" --out pred/

Points: .txt (AGPIL/PIAD 22 columns or plain x y z), .npy [N,3] or .ply (ascii / binary), any number of points
(resampled to the model's count, predictions mapped back to every input point). Images: anything PIL reads.
Writes OUT/<name>.npy (one value per input point), OUT/<name>_Pred.ply (grey -> red) and OUT/<name>.png.
--batch takes a list file (image<TAB>points<TAB>instruction per line, or JSON lines) or a folder (X.jpg + X.txt
| X.npy | X.ply + X.instruction.txt); a bad item is reported on one line and the others still run.
--model also takes a training checkpoint or an MLflow run id, as lma3d eval does.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from jobs.entry import UserError, entry
from jobs.experiment_config import add_config_args, model_overrides, resolve_config

log = logging.getLogger("lma3d.predict")


@entry("predict")
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lma3d predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument("--model", required=True, help="exported folder | models:/name@alias | checkpoint | run id")
    parser.add_argument("--image", help="interaction image")
    parser.add_argument("--points", help="point cloud (.txt, .npy, .ply)")
    parser.add_argument("--instruction", help="language instruction (default for --batch items without one)")
    parser.add_argument("--batch", help="list file or folder of inputs instead of --image/--points")
    parser.add_argument("--name", help="output file stem for a single input (default: the image's stem)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    if bool(args.batch) == bool(args.image or args.points):
        raise UserError("give either --image, --points and --instruction, or --batch LIST|FOLDER")
    if not args.batch and not (args.image and args.points and args.instruction):
        raise UserError("--image, --points and --instruction are all needed (or --batch)")
    cfg = resolve_config(args, model_from_source=True)

    from jobs.serving.batch_predict import BadInput, Item, items_from, predict_item, write_heatmap

    try:
        items = (
            items_from(args.batch, args.instruction)
            if args.batch
            else [Item(args.name or Path(args.image).stem, args.image, args.points, args.instruction)]
        )
    except BadInput as e:
        raise UserError(str(e)) from None
    from jobs.loading import load

    model = load(args.model, cfg.tracking_uri, model_overrides(args)).model
    failed = 0
    for item in items:
        try:
            paths = write_heatmap(args.out, predict_item(model, item))
        except BadInput as e:
            if not args.batch:
                raise UserError(str(e)) from None
            print(f"lma3d predict: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{item.name}: " + "  ".join(str(p) for p in paths))
    if failed:
        print(f"lma3d predict: {failed} of {len(items)} inputs failed", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
