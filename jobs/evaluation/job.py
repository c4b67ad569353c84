"""`lma3d eval` end to end: resolve the model, run the Ray Data evaluation, write results and renders, log them."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from jobs.config import ExperimentConfig
from jobs.entry import UserError
from jobs.evaluation import tracking
from jobs.evaluation.outputs import write_outputs
from jobs.evaluation.runner import EvalResult, run_eval, viz_inputs
from jobs.evaluation.sources import ModelSource, resolve
from jobs.evaluation.viz import display_image, render_sample
from jobs.typed_yaml import flatten, to_dict
from pipeline.ray_session import ensure_ray

log = logging.getLogger("lma3d.eval")


@dataclass
class EvalReport:
    result: EvalResult
    out_dir: Path
    files: dict[str, Path]
    viz_files: list[Path] = field(default_factory=list)
    run_id: str | None = None
    tracking_uri: str = ""


def read_manifest(shards: str) -> dict:
    """The shard folder's manifest ({} for a remote folder, which the readers check themselves)."""
    if "://" in shards:
        return {}
    path = Path(shards, "manifest.json")
    if not path.is_file():
        raise UserError(f"{shards}: no manifest.json (not an lma3d shard folder; run lma3d shard first)")
    return json.loads(path.read_text())


def check_fit(manifest: dict, source: ModelSource, shards: str) -> None:
    points = (manifest.get("config") or {}).get("num_points")
    if points is not None and int(points) != source.model.num_points:
        raise UserError(
            f"{shards} holds {points}-point clouds but {source.spec} expects model.num_points={source.model.num_points}"
        )


def evaluate(
    cfg: ExperimentConfig,
    spec: str,
    shards: str | None = None,
    out: str | None = None,
    address: str | None = None,
    model_overrides: list[str] = (),
    track: bool = True,
) -> EvalReport:
    shards = shards or cfg.data.shards
    manifest = read_manifest(shards)
    source = resolve(spec, cfg.tracking_uri, list(model_overrides))
    check_fit(manifest, source, shards)
    tracking_uri = tracking.choose_tracking_uri(
        cfg.tracking_uri, tracking.explicit_tracking(cfg.mlflow.tracking_uri), source.tracking_uri
    )
    if track:
        from jobs.training.tracking import check_tracking_uri

        check_tracking_uri(tracking_uri)  # before the long part: an unreachable server is an error now
    started = ensure_ray(address)
    try:
        _check_gpus(cfg, address)
        result = run_eval(shards, source.model, source.weights, cfg.eval, source.model.image_size)
        out_dir = Path(out or Path(cfg.workdir, "eval", source.name))
        info = _info(source, shards, cfg) | {"shards_fingerprint": manifest.get("fingerprint"), "actors": result.actors}
        files = write_outputs(out_dir, result.predictions, result.metrics, info)
        viz_files = _render(shards, result, out_dir / "viz", cfg.eval.viz_samples, source.model.image_size)
    finally:
        if started:
            import ray

            ray.shutdown()
    report = EvalReport(result, out_dir, files, viz_files, tracking_uri=tracking_uri)
    if track:
        report.run_id = _log(cfg, source, tracking_uri, report, info)
    return report


def _check_gpus(cfg: ExperimentConfig, address: str | None) -> None:
    """A local Ray without a GPU would leave eval.use_gpu actors waiting forever: refuse. A cluster may still add
    GPU nodes (autoscaler), so there the pool waits for them."""
    import ray

    local = not (address or os.environ.get("RAY_ADDRESS"))
    if cfg.eval.use_gpu and local and ray.cluster_resources().get("GPU", 0) < 1:
        raise UserError("eval.use_gpu is true but this machine's Ray has no GPU; set eval.use_gpu=false to run on CPU")


def _info(source: ModelSource, shards: str, cfg: ExperimentConfig) -> dict:
    return {
        "source": source.spec,
        "source_kind": source.kind,
        "step": source.step,
        "training_run_id": source.run_id,
        "backbone_id": source.backbone_id,
        "shards": str(shards),
        "eval": to_dict(cfg.eval),
        "model": to_dict(source.model),
    }


def _render(shards: str, result: EvalResult, out_dir: Path, count: int, image_size: int) -> list[Path]:
    """GT/prediction PLY + PNG for the first `count` keys in key order: the same samples every evaluation."""
    predictions = result.predictions
    keys = predictions.keys[:count]
    if not keys:
        return []
    inputs = viz_inputs(shards, keys, image_size)
    paths: list[Path] = []
    for key in keys:
        sample = inputs.get(key)
        if sample is None:
            log.warning("viz: test key %s could not be read back; not rendered", key)
            continue
        row = predictions.keys.index(key)
        paths += render_sample(
            out_dir,
            key,
            sample["points"],
            predictions.pred[row],
            predictions.gt[row],
            display_image(sample["image"]),
            sample["instruction"],
        )
    return paths


def _log(cfg: ExperimentConfig, source: ModelSource, tracking_uri: str, report: EvalReport, info: dict) -> str | None:
    run_name = f"eval-step{source.step}" if source.step is not None else f"eval-{source.name}"
    run_id = tracking.start_run(
        tracking_uri,
        parent_run_id=source.run_id,
        experiment=cfg.experiment_name,
        workdir=cfg.workdir,
        run_name=run_name,
        tags={
            tracking.SOURCE_TAG: source.spec,
            tracking.KIND_TAG: "eval",
            "lma3d.shards": info["shards"],
            "lma3d.shards_fingerprint": str(info.get("shards_fingerprint") or ""),
        },
    )
    if run_id is None:
        return None
    params = flatten({"eval": info["eval"], "model": info["model"]}) | {"source": source.spec, "shards": info["shards"]}
    params["eval.actors"] = info["actors"]  # what eval.num_actors (e.g. auto) came to on this cluster
    files = [report.files[name] for name in ("metrics.json", "per_class.csv", "predictions.npz", "prediction.txt")]
    tracking.log_results(tracking_uri, run_id, report.result.metrics, source.step or 0, params, files, report.viz_files)
    return run_id
