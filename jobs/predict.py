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
import tempfile
from pathlib import Path

from jobs.config import add_config_args, resolve_config
from jobs.entry import UserError, entry

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
    cfg = resolve_config(args)
    model_overrides = [o for o in [*args.overrides, *args.override_args] if o.startswith("model.")]

    from jobs.evaluation.predicting import BadInput, Item, items_from, predict_item, write_heatmap

    try:
        items = (
            items_from(args.batch, args.instruction)
            if args.batch
            else [Item(args.name or Path(args.image).stem, args.image, args.points, args.instruction)]
        )
    except BadInput as e:
        raise UserError(str(e)) from None
    model = _load(args.model, cfg.tracking_uri, model_overrides)
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


def _load(spec: str, tracking_uri: str, model_overrides: list[str]):
    from model.pretrained import BadModelFolder

    try:
        return _load_model(spec, tracking_uri, model_overrides)
    except BadModelFolder as e:  # a tampered or foreign model folder: one line naming the file and field
        raise UserError(str(e)) from None


def _load_model(spec: str, tracking_uri: str, model_overrides: list[str]):
    """Exported folders and registered models load with safetensors only (model.pretrained.from_pretrained);
    `model.*` overrides (e.g. a local backbone_path) go through the same resolution as lma3d eval. Every path
    computes under the training precision the checkpoint or export records."""
    if model_overrides:
        from jobs.evaluation.inference import build_inference_model
        from jobs.evaluation.sources import resolve

        source = resolve(spec, tracking_uri, model_overrides)
        return build_inference_model(source.model, source.weights, precision=source.precision)
    if spec.startswith("models:/"):
        from jobs.evaluation.sources import download_registered

        with tempfile.TemporaryDirectory(prefix="lma3d-model-") as tmp:
            return _exported(download_registered(spec, tracking_uri, Path(tmp)))
    if Path(spec, "config.json").is_file() and Path(spec, "model.safetensors").is_file():
        return _exported(Path(spec))
    from jobs.evaluation.inference import build_inference_model
    from jobs.evaluation.sources import resolve

    source = resolve(spec, tracking_uri)
    return build_inference_model(source.model, source.weights, precision=source.precision)


def _exported(folder: Path):
    """An exported folder, computing under the training precision its config.json records (fp32 if none)."""
    from jobs.evaluation.inference import in_precision
    from jobs.precision import from_meta
    from model.pretrained import BadModelFolder, from_pretrained, read_json

    model = from_pretrained(folder, fps_start="first")  # checks config.json and the weights first
    try:
        precision = from_meta(read_json(folder / "config.json"))
    except BadModelFolder:
        raise
    except ValueError as e:
        raise UserError(f"{folder / 'config.json'}: {e}") from None
    return in_precision(model, precision)


if __name__ == "__main__":
    raise SystemExit(main())
