"""`lma3d eval` end to end: resolve the model, run the Ray Data evaluation, write results and renders, log them."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobs import preflight, tracking
from jobs.cluster_storage import check_eval_outputs
from jobs.entry import UserError, stage
from jobs.evaluation.outputs import write_outputs
from jobs.evaluation.runner import EvalResult, run_eval, viz_inputs
from jobs.evaluation.tracking import log_inputs, log_on_training_run, log_results
from jobs.experiment_config import ExperimentConfig
from jobs.loading import Resolved, resolve
from jobs.typed_yaml import flatten, to_dict
from jobs.viz import display_image, pick_samples, render_sample
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
    """The shard folder's manifest, validated (pipeline.shards.manifest via jobs.preflight): one line, exit 2."""
    return preflight.shard_folder(shards, "--shards", ("test",))


def _corrupt_or(error: Exception) -> Exception:
    """A corrupt test shard (raised in a Ray task) as its one line; anything else unchanged."""
    from pipeline.loaders.reading import corrupt_shard_line

    line = corrupt_shard_line(error)
    return UserError(line) if line else error


def check_fit(manifest: dict, source: Resolved, shards: str) -> None:
    points = (manifest.get("config") or {}).get("num_points")
    if points is not None and int(points) != source.config.num_points:
        raise UserError(
            f"{shards} holds {points}-point clouds but {source.provenance['spec']} expects "
            f"model.num_points={source.config.num_points}"
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
    check_eval_outputs(cfg, out, False, address)
    manifest = read_manifest(shards)
    source = resolve(spec, cfg.tracking_uri, list(model_overrides))
    preflight.model_files(source.config)
    check_fit(manifest, source, shards)
    explicit = tracking.explicit_tracking(cfg.mlflow.tracking_uri)
    recorded = source.provenance["tracking_uri"]
    check_eval_outputs(cfg, out, track and not explicit and not recorded, address)
    tracking_uri = tracking.choose_tracking_uri(cfg.tracking_uri, explicit, recorded)
    if track:
        from jobs.tracking import check_tracking_uri

        check_tracking_uri(tracking_uri)  # before the long part: an unreachable server is an error now
    began_ms = int(time.time() * 1000)  # the eval run's start: it spans Ray, inference, outputs and logging
    out_dir = Path(out or Path(cfg.workdir, "eval", source.provenance["name"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".predictions-", dir=out_dir))  # the maps until they are written out
    on_corrupt, started = cfg.data.on_corrupt_shard, False
    try:
        started = ensure_ray(address)
        _check_gpus(cfg, address)
        with stage("Ray Data evaluation"):
            try:
                result = run_eval(shards, source, cfg.eval, scratch, on_corrupt)
            except Exception as error:
                raise _corrupt_or(error) from None
        skipped = int(manifest["splits"].get("test", {}).get("samples", 0)) - len(result.predictions)
        if skipped > 0:
            log.warning("%d test samples of corrupt shards skipped (data.on_corrupt_shard: skip)", skipped)
        info = _info(source, shards, cfg) | {
            "shards_fingerprint": manifest.get("fingerprint"), "skipped": skipped, "actors": result.actors,
        }  # fmt: skip
        files = write_outputs(out_dir, result.predictions, result.metrics, info)
        try:
            viz_files = _render(shards, result, out_dir / "viz", cfg.eval.viz_samples, source.config.image_size)
        except Exception as error:
            raise _corrupt_or(error) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if started:
            import ray

            ray.shutdown()
    report = EvalReport(result, out_dir, files, viz_files, tracking_uri=tracking_uri)
    if track:
        report.run_id = _log(cfg, source, tracking_uri, report, info, manifest, began_ms)
    return report


def _check_gpus(cfg: ExperimentConfig, address: str | None) -> None:
    """A local Ray without a GPU would leave eval.use_gpu actors waiting forever: refuse. A cluster may still add
    GPU nodes (autoscaler), so there the pool waits for them."""
    import ray

    from jobs.cluster_storage import on_cluster

    if cfg.eval.use_gpu and not on_cluster(address) and ray.cluster_resources().get("GPU", 0) < 1:
        raise UserError("eval.use_gpu is true but this machine's Ray has no GPU; set eval.use_gpu=false to run on CPU")


def _info(source: Resolved, shards: str, cfg: ExperimentConfig) -> dict:
    origin = source.provenance
    return {
        "source": origin["spec"],
        "source_kind": origin["kind"],
        "step": origin["step"],
        "training_run_id": origin["run_id"],
        "backbone_id": origin["backbone_id"],
        "precision": origin["precision"],
        "shards": str(shards),
        "eval": to_dict(cfg.eval),
        "model": to_dict(source.config),
    }


def _render(shards: str, result: EvalResult, out_dir: Path, count: int, image_size: int) -> list[Path]:
    """GT/prediction PLY + PNG of `count` samples spread over objects and affordances (viz.pick_samples), each
    titled with its key, AUC and aIOU: the same samples every evaluation."""
    predictions = result.predictions
    rows = pick_samples(predictions.objects, predictions.affordances, count)
    if not rows:
        return []
    keys = [predictions.keys[r] for r in rows]
    inputs = viz_inputs(shards, keys, image_size, on_corrupt="skip")  # the evaluation itself already read them
    pred, gt = predictions.read("pred", rows), predictions.read("gt", rows)
    auc, aiou = predictions.scores["auc"], predictions.scores["aiou"]
    paths: list[Path] = []
    for i, row in enumerate(rows):
        key = predictions.keys[row]
        sample = inputs.get(key)
        if sample is None:
            log.warning("viz: test key %s could not be read back; not rendered", key)
            continue
        paths += render_sample(
            out_dir,
            key,
            sample["points"],
            pred[i],
            gt[i],
            display_image(sample["image"]),
            sample["instruction"],
            title=f"{key}   AUC {_percent(auc[row])}   aIOU {_percent(aiou[row])}",
        )
    return paths


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}"  # NaN: the GT has no positive point


def run_name(source: Resolved, shuffled: bool) -> str:
    """`eval-step<N>` (or `eval-<model>`); the instruction-shuffle ablation is `eval-shuffled-…` beside it."""
    kind, step = "eval-shuffled" if shuffled else "eval", source.provenance["step"]
    return f"{kind}-step{step}" if step is not None else f"{kind}-{source.provenance['name']}"


def _log(
    cfg: ExperimentConfig,
    source: Resolved,
    tracking_uri: str,
    report: EvalReport,
    info: dict,
    manifest: dict,
    began_ms: int,
) -> str | None:
    run_id = tracking.start_run(
        tracking_uri,
        parent_run_id=source.provenance["run_id"],
        experiment=cfg.experiment_name,
        workdir=cfg.workdir,
        run_name=run_name(source, cfg.eval.shuffle_instructions),
        tags={
            tracking.SOURCE_TAG: info["source"],
            tracking.KIND_TAG: "eval",
            "lma3d.shards": info["shards"],
            "lma3d.shards_fingerprint": str(info.get("shards_fingerprint") or ""),
        },
        start_time_ms=began_ms,
    )
    if run_id is None:
        return None
    log_inputs(tracking_uri, run_id, info["shards"], manifest)
    params = flatten({"eval": info["eval"], "model": info["model"]}) | {key: info[key] for key in ("source", "shards")}
    params["eval.actors"] = info["actors"]  # what eval.num_actors (e.g. auto) came to on this cluster
    files, step = list(report.files.values()), info["step"] or 0
    log_results(tracking_uri, run_id, report.result.metrics, step, params, files, report.viz_files)
    if source.provenance["run_id"] and info["step"] is not None:
        prefix = "test_shuffled" if cfg.eval.shuffle_instructions else "test"
        log_on_training_run(tracking_uri, source.provenance["run_id"], report.result.metrics, info["step"], prefix)
    return run_id
