"""lma3d export: a training checkpoint (any ZeRO stage), run or model -> a standalone model folder.

    lma3d export --checkpoint work/runs/demo/checkpoint_step000000120 --out work/models/demo
    lma3d export --checkpoint RUN_ID --out models/full-seen --register lma3d --alias champion

DIR gets model.safetensors (the trainable weights, fp32) and config.json (model config, backbone id/path,
where it came from). Loading it needs neither DeepSpeed nor Ray: jobs.loading.load(DIR) (what every verb
uses), or model.pretrained.from_pretrained(DIR) with torch alone.
Checkpoint files are only read with torch.load(weights_only=True); --register logs DIR as an MLflow pyfunc
model (predict takes image / points / instruction), registers a version and points --alias at it.
"""

from __future__ import annotations

import argparse

from jobs.entry import UserError, entry
from jobs.experiment_config import add_config_args, model_overrides, resolve_config


@entry("export")
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lma3d export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder | exported folder | run id | models:/…")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--register", metavar="NAME", help="register the model in MLflow under NAME")
    parser.add_argument("--alias", help="alias of the registered version, e.g. champion (needs --register)")
    args = parser.parse_args(argv)
    if args.alias and not args.register:
        raise UserError("--alias needs --register NAME")
    cfg = resolve_config(args, model_from_source=True)

    from jobs.serving.export_folder import export

    report = export(cfg, args.checkpoint, args.out, model_overrides(args), args.register, args.alias)
    lines = [
        f"exported {args.checkpoint} -> {report.out_dir}",
        f"  {report.tensors} tensors, {report.parameters:,} trainable values (fp32), backbone "
        f"{report.source.provenance['backbone_id'] or report.source.config.backbone}",
    ]
    if report.registered:
        from jobs.tracking import version_url

        registered = report.registered
        lines.append(f"  registered {registered['uri']} (version {registered['version']})")
        page = version_url(registered["tracking_uri"], registered["name"], registered["version"])
        lines.append(f"  MLflow UI: {page}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
