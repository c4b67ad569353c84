"""What a registered lma3d model says about itself: where it came from (the training run and the LoggedModel of its
checkpoint), its signature and input example (image, points, instruction -> heat map), a description naming the
metrics it was chosen on, and tags for fidelity, backbone and precision.

The signature types `image` and `points` as `any`: callers pass a file path, image bytes (base64 in JSON) or an
[N, 3] array, and MLflow enforces a signature on every predict, so a narrower type would refuse inputs
`models:/name@alias` takes today. The input example is synthetic (a gradient image, a sphere of the model's point
count), built here so an export needs no dataset.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.loading import Resolved

log = logging.getLogger("lma3d.export.registry")
EXAMPLE_INSTRUCTION = "Grasp the object where a hand would hold it."
FIDELITY_TAG, BACKBONE_TAG, PRECISION_TAG = "fidelity", "backbone", "precision"


@dataclass
class ModelCard:
    """What register() attaches to the logged model and the registered version."""

    signature: Any
    input_example: Any
    description: str
    tags: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None
    """The training checkpoint's LoggedModel, when found: the pyfunc is logged into it."""
    training_run_id: str | None = None
    step: int = 0


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import AnyType, Array, ColSpec, Schema

    inputs = Schema([
        ColSpec(AnyType(), "image"),  # file path, or encoded image bytes (base64 text in JSON)
        ColSpec(AnyType(), "points"),  # [N, 3] array of xyz, or a .txt/.npy/.ply file path
        ColSpec(DataType.string, "instruction"),
    ])  # fmt: skip
    outputs = Schema([ColSpec(Array(DataType.float), "heatmap")])  # per row: the affordance of each input point
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(image_size: int, num_points: int) -> Any:
    """One row: a PNG of the model's image size, a unit sphere of its point count, an instruction."""
    import pandas as pd
    from PIL import Image

    ramp = np.linspace(0, 255, image_size, dtype=np.float32)
    rgb = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (image_size, 1)), np.full((image_size,) * 2, 128.0)],
                   axis=-1).astype(np.uint8)  # fmt: skip
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    i = np.arange(num_points) + 0.5  # a Fibonacci sphere: evenly spread, deterministic
    polar, azimuth = np.arccos(1 - 2 * i / num_points), np.pi * (1 + 5**0.5) * i
    xyz = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=-1)
    points = np.round(xyz, 4).tolist()
    return pd.DataFrame([{"image": png.getvalue(), "points": points, "instruction": EXAMPLE_INSTRUCTION}])


def image_value(value: Any) -> Any:
    """A row's image as predict reads it: base64 text (what MLflow's JSON makes of image bytes, the input example
    included) decoded to bytes; a path, bytes or anything else unchanged."""
    if not isinstance(value, str) or len(value) < 64 or _is_path(value):
        return value
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        return value  # not base64 ('.' and '/' of a path name are not all of it): a path that is missing


def _is_path(value: str) -> bool:
    try:
        return Path(value).exists()
    except OSError:  # a name longer than a path may be (base64 text of an image): not a path
        return False


def card(source: Resolved, tracking_uri: str, registered_name: str) -> ModelCard:
    """The card of the model `source` resolved: linked to its checkpoint's LoggedModel when the training run that
    wrote it is in this tracking store (found, or created for a run that predates them)."""
    origin, cfg = source.provenance, source.config
    tags = {
        FIDELITY_TAG: cfg.fidelity,
        BACKBONE_TAG: origin.get("backbone_id") or cfg.backbone_path or cfg.backbone,
        PRECISION_TAG: str(origin.get("precision") or "fp32"),
    }
    result = ModelCard(signature(), input_example(cfg.image_size, cfg.num_points), "", tags)
    linked = _checkpoint_model(origin, tracking_uri)
    metrics, chosen, run_name = {}, f"named explicitly ({origin['spec']})", ""
    if linked is not None:
        model, run = linked
        result.model_id, result.training_run_id = model.model_id, run.info.run_id
        result.step = int(origin["step"])
        metrics = {m.key: m.value for m in model.metrics or [] if m.key.startswith("val/")}
        run_name = run.info.run_name
        chosen = _how_chosen(origin, run.data.tags, model)
        tags |= {"lma3d.training_run": run.info.run_id, "lma3d.step": str(origin["step"]),
                 "lma3d.checkpoint": model.name}  # fmt: skip
    result.description = _describe(registered_name, origin, metrics, chosen, run_name, result.model_id)
    return result


def _checkpoint_model(origin: dict[str, Any], tracking_uri: str) -> tuple[Any, Any] | None:
    """(the checkpoint's LoggedModel, the training run) or None (no training run known here)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from jobs import checkpoint_models
    from jobs.checkpoint_meta import dir_name_for

    run_id, step = origin.get("run_id"), origin.get("step")
    if not run_id or step is None:
        return None
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
        model = checkpoint_models.find(client, run_id, step=int(step), experiment_id=run.info.experiment_id)
        if model is None and origin.get("checkpoint"):  # a run trained before checkpoints were LoggedModels
            model_id = checkpoint_models.record(client, run_id, dir_name_for(int(step)), int(step),
                                                origin["checkpoint"], {})  # fmt: skip
            model = client.get_logged_model(model_id)
    except MlflowException as e:
        log.warning("training run %s at %s: %s; the version links to the export run only", run_id, tracking_uri,
                    str(e).splitlines()[0])  # fmt: skip
        return None
    return (model, run) if model is not None else None


def _how_chosen(origin: dict[str, Any], run_tags: dict[str, str], model: Any) -> str:
    if origin.get("kind") != "run":
        return f"named explicitly ({origin['spec']})"
    path = model.tags.get("lma3d.checkpoint.path", "")
    for tag, words in (("checkpoint.best", "the run's best kept checkpoint by val/auc"),
                       ("checkpoint.latest", "the run's latest checkpoint")):  # fmt: skip
        if run_tags.get(tag) and path and Path(run_tags[tag]).name == Path(path).name:
            return words
    return f"from run {origin['spec']}"


def _describe(
    name: str, origin: dict[str, Any], metrics: dict[str, float], chosen: str, run_name: str, model_id: str | None
) -> str:
    measured = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k != "val/n")
    if metrics.get("val/n"):
        measured += f" (on {int(metrics['val/n'])} validation samples)"
    lines = [f"lma3d affordance model {name}: image + point cloud + instruction -> per-point heat map in [0, 1]."]
    if model_id:
        lines.append(f"Checkpoint of step {origin['step']} of training run {run_name or origin['run_id']} "
                     f"({origin['run_id']}), LoggedModel {model_id}; chosen as {chosen}.")  # fmt: skip
        lines.append(f"Validation metrics at that step: {measured}." if measured else
                     "No validation metrics were measured at that step.")  # fmt: skip
    else:
        lines.append(f"Exported from {origin['spec']} ({origin['kind']}); no training run of it in this store, "
                     "so no validation metrics are linked.")  # fmt: skip
    return "\n".join(lines)
