"""`lma3d export`: any model source -> DIR/model.safetensors + DIR/config.json, optionally registered in MLflow."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobs.config import ExperimentConfig
from jobs.entry import UserError
from jobs.evaluation import tracking
from jobs.evaluation.sources import ModelSource, resolve

log = logging.getLogger("lma3d.export")


@dataclass
class ExportReport:
    out_dir: Path
    tensors: int
    parameters: int
    source: ModelSource
    registered: dict[str, Any] | None = None


def check_weights(source: ModelSource) -> Any:
    """The model skeleton (meta device, no weights read) after checking the weights fit it key by key."""
    from model.pretrained import BadModelFolder
    from model.pretrained import check_weights as fit

    try:
        return fit(source.model, source.weights, source.spec)
    except BadModelFolder as e:
        raise UserError(str(e)) from None


def export(
    cfg: ExperimentConfig,
    spec: str,
    out: str | Path,
    model_overrides: list[str] = (),
    register_name: str | None = None,
    alias: str | None = None,
) -> ExportReport:
    from model.pretrained import save_pretrained

    source = resolve(spec, cfg.tracking_uri, list(model_overrides))
    tracking_uri = tracking.choose_tracking_uri(
        cfg.tracking_uri, tracking.explicit_tracking(cfg.mlflow.tracking_uri), source.tracking_uri
    )
    if register_name:
        from jobs.training.tracking import check_tracking_uri

        check_tracking_uri(tracking_uri)
    skeleton = check_weights(source)
    out = Path(out)
    save_pretrained(skeleton, out, weights=source.weights)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["precision"] = source.precision  # predict and eval of the exported model compute under it
    config["source"] = {
        "spec": source.spec,
        "kind": source.kind,
        "step": source.step,
        "run_id": source.run_id,
        "tracking_uri": source.tracking_uri,
    }
    config_path.write_text(json.dumps(config, indent=2))
    _verify(out, source.weights)
    report = ExportReport(
        out, len(source.weights), sum(v.numel() for v in source.weights.values() if v.is_floating_point()), source
    )
    if register_name:
        from jobs.evaluation.registry import register

        run_id = tracking.start_run(
            tracking_uri,
            parent_run_id=source.run_id,
            experiment=cfg.experiment_name,
            workdir=cfg.workdir,
            run_name=f"export-{register_name}",
            tags={tracking.SOURCE_TAG: source.spec, tracking.KIND_TAG: "export"},
        )
        if run_id is None:
            raise UserError(f"MLflow at {tracking_uri} keeps failing: {out} was written but not registered")
        report.registered = register(out, register_name, alias, tracking_uri, run_id)
    return report


def _verify(out: Path, weights: dict[str, torch.Tensor]) -> None:
    """Read the file back: every tensor identical to what was consolidated (in fp32)."""
    from safetensors.torch import load_file

    written = load_file(str(out / "model.safetensors"))
    for key, value in weights.items():
        expected = value.float() if value.is_floating_point() else value
        if key not in written or not torch.equal(written[key], expected.cpu()):
            raise RuntimeError(f"{out / 'model.safetensors'}: {key} differs from the checkpoint after writing")
