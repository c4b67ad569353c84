"""`lma3d export`: any model source -> DIR/model.safetensors + DIR/config.json, optionally registered in MLflow."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobs import tracking
from jobs.entry import UserError
from jobs.experiment_config import ExperimentConfig
from jobs.loading import Resolved, resolve
from pipeline.writer_lock import OutputBusy, exclusive

log = logging.getLogger("lma3d.export")


@dataclass
class ExportReport:
    out_dir: Path
    tensors: int
    parameters: int
    source: Resolved
    registered: dict[str, Any] | None = None


def export(
    cfg: ExperimentConfig,
    spec: str,
    out: str | Path,
    model_overrides: list[str] = (),
    register_name: str | None = None,
    alias: str | None = None,
) -> ExportReport:
    from model.lmaffordance3d import build_model
    from model.pretrained import save_pretrained

    source = resolve(spec, cfg.tracking_uri, list(model_overrides))  # weights checked against the config here
    origin = source.provenance
    tracking_uri = tracking.choose_tracking_uri(
        cfg.tracking_uri, tracking.explicit_tracking(cfg.mlflow.tracking_uri), origin["tracking_uri"]
    )
    if register_name:
        from jobs.tracking import check_tracking_uri

        check_tracking_uri(tracking_uri)
    skeleton = build_model(source.config, device="meta", pretrained=False)  # config + backbone id, no weights
    out = Path(out)
    recorded = {key: origin[key] for key in ("spec", "kind", "step", "run_id", "tracking_uri")}
    try:
        with exclusive(out, "export folder"):  # two exports into one folder would mix weights and config
            save_pretrained(skeleton, out, weights=source.weights, source=recorded, precision=origin["precision"])
            _verify(out, source.weights)
    except OutputBusy as e:
        raise UserError(str(e)) from None
    report = ExportReport(
        out, len(source.weights), sum(v.numel() for v in source.weights.values() if v.is_floating_point()), source
    )
    if register_name:
        from jobs.serving.model_registry import register

        run_id = tracking.start_run(
            tracking_uri,
            parent_run_id=origin["run_id"],
            experiment=cfg.experiment_name,
            workdir=cfg.workdir,
            run_name=f"export-{register_name}",
            tags={tracking.SOURCE_TAG: origin["spec"], tracking.KIND_TAG: "export"},
        )
        if run_id is None:
            raise UserError(f"MLflow at {tracking_uri} keeps failing: {out} was written but not registered")
        from jobs.serving.model_card import card

        described = card(source, tracking_uri, register_name)  # linked to the checkpoint's LoggedModel when found
        backbone = source.config.backbone_path or source.config.backbone  # a folder, or a preset's name
        report.registered = register(out, register_name, alias, tracking_uri, run_id, described, backbone)
    return report


def _verify(out: Path, weights: dict[str, torch.Tensor]) -> None:
    """Read the file back: every tensor identical to what was consolidated (in fp32)."""
    from safetensors.torch import load_file

    written = load_file(str(out / "model.safetensors"))
    for key, value in weights.items():
        expected = value.float() if value.is_floating_point() else value
        if key not in written or not torch.equal(written[key], expected.cpu()):
            raise RuntimeError(f"{out / 'model.safetensors'}: {key} differs from the checkpoint after writing")
