"""The one way from "a thing on disk" to a model: `load(spec) -> (model, config, provenance)`.

`spec` names
- an exported folder (config.json + model.safetensors, from `lma3d export`),
- a checkpoint folder of `lma3d train` (lma3d_meta.json; local or a pyarrow URI such as s3://…),
- an MLflow run id of a training run (`<id>` or `runs:/<id>`): its `checkpoint.best` tag, else
  `checkpoint.latest`; when that path is unreachable, the run's `weights/best|last` artifact + its config,
- a registered model, `models:/<name>@<alias>` or `models:/<name>/<version>`,
- a LoggedModel `models:/m-<id>`: a training checkpoint's is read from its checkpoint folder (when reachable),
- an MLflow model URI (`runs:/<id>/model`, `mlflow-artifacts:/…`) or a local folder of a logged lma3d model.

`resolve(spec)` is the first half: the checked config and fp32 trainable weights with their provenance, no
model built (eval ships the weights to its actors, export writes them). `build_inference_model` is the second
half, also run by each eval actor on the package `model_package` made. Weights are only ever read with
safetensors or `torch.load(weights_only=True)`, and checked against the config (every tensor present, of the
right shape, finite) before anything is built; a tampered folder is a one-line UserError naming file and field.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from jobs.checkpoint_meta import META_FILE
from jobs.entry import UserError
from jobs.log import quiet_progress_bars
from jobs.typed_yaml import ConfigError, apply_override
from model.config import ModelConfig
from model.pretrained import BadModelFolder, check_weights, config_from_dict, instantiate, read_pretrained

log = logging.getLogger("lma3d.load")
RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-f]{32})/?$")
MLFLOW_URI = re.compile(r"^(?:models|runs|mlflow-artifacts):/")
LOGGED_MODEL = re.compile(r"^models:/(m-[0-9a-f]{32})/?$")
"""A LoggedModel; a training checkpoint's (jobs/checkpoint_models.py) is read from its checkpoint folder."""
"""Specs MLflow resolves (a bare run id or `runs:/<id>` is a training run, matched by RUN_ID first)."""


def provenance(spec: str, kind: str, name: str = "model", **known: Any) -> dict[str, Any]:
    """Where a model came from: spec (what the user passed), kind (checkpoint | exported | run | registry |
    mlflow), name (short, for output folders), step, run_id (the training run: evaluations nest under it),
    tracking_uri (where that run lives, when known), backbone_id, precision (the training precision inference
    computes under); other facts may be added by the readers (a checkpoint's: `checkpoint`, its location)."""
    return {"spec": spec, "kind": kind, "name": name, "step": None, "run_id": None, "tracking_uri": None,
            "backbone_id": "", "precision": "fp32"} | known  # fmt: skip


@dataclass
class Resolved:
    """A model named by a spec, not built yet: its config, its checked fp32 trainable weights, its provenance."""

    config: ModelConfig
    weights: dict[str, torch.Tensor] = field(repr=False)
    provenance: dict[str, Any] = field(default_factory=dict)


class Loaded(NamedTuple):
    model: torch.nn.Module
    config: ModelConfig
    """The config the model was built with (FPS from point 0)."""
    provenance: dict[str, Any]


def load(spec: str, tracking_uri: str | None = None, overrides: list[str] = (), device: str = "cpu") -> Loaded:
    """The model `spec` names, ready for inference; `overrides` are `model.key=value` items (e.g. a local
    model.backbone_path). `tracking_uri` is needed only for MLflow specs (default: MLflow's own)."""
    resolved = resolve(spec, tracking_uri, overrides)
    model = build_inference_model(resolved.config, resolved.weights, device, resolved.provenance["precision"])
    return Loaded(model, model.cfg, resolved.provenance)


def inference_config(cfg: ModelConfig) -> ModelConfig:
    """The model config used for inference: FPS starts at point 0 (the original draws a random start), and the
    ImageNet resnet18 file is not read (the trained weights replace it; it need not exist where we predict)."""
    return dataclasses.replace(cfg, fps_start="first", resnet_weights="none")


def build_inference_model(
    cfg: ModelConfig, weights: dict[str, torch.Tensor], device: str = "cpu", precision: str = "fp32"
) -> torch.nn.Module:
    """The model for inference: backbone rebuilt from its preset/path, trainable weights loaded (strict), eval(),
    in its training `precision` (cast for bf16/fp16; `inference_precision` tells predict_batch to autocast)."""
    return in_precision(instantiate(inference_config(cfg), weights, "cpu"), precision).to(device).eval()


def in_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """`model` as training computed: cast for bf16/fp16, and `inference_precision` for predict_batch's autocast."""
    from jobs.precision import for_inference

    model = for_inference(model, precision)
    model.inference_precision = precision
    return model


def model_package(cfg: ModelConfig, weights: dict[str, torch.Tensor], precision: str = "fp32") -> dict[str, Any]:
    """Config + weights + training precision as plain data for the object store: safetensors bytes, never a
    pickle of tensors."""
    from safetensors.torch import save

    from jobs.typed_yaml import to_dict

    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    return {"model": to_dict(cfg), "weights": save(tensors), "precision": precision}


def model_from_package(package: dict[str, Any], device: str = "cpu") -> torch.nn.Module:
    from safetensors.torch import load as load_bytes

    cfg = config_from_dict(package["model"], "<model package>")
    return build_inference_model(cfg, load_bytes(package["weights"]), device, package.get("precision", "fp32"))


def _precision(record: dict, where: Path | str) -> str:
    """The training precision a checkpoint meta or an exported config.json records (jobs.precision.from_meta)."""
    from jobs.precision import from_meta

    try:
        return from_meta(record)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def model_config(values: dict[str, Any], overrides: list[str], where: str) -> ModelConfig:
    """ModelConfig from a stored dict, then the user's `model.*` overrides (e.g. a local model.backbone_path)."""
    try:
        return config_from_dict({**values, **_parse_overrides(overrides)}, where)
    except BadModelFolder as e:
        raise UserError(str(e)) from None


def _parse_overrides(overrides: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {"model": {}}
    try:
        for item in overrides:
            apply_override(data, item)
    except ConfigError as e:
        raise UserError(str(e)) from None
    return data["model"]


def resolve(spec: str, tracking_uri: str | None, overrides: list[str] = ()) -> Resolved:
    """Config + checked weights + provenance of the model `spec` names (see the module doc for what it may be)."""
    try:
        return _resolve(spec, tracking_uri, list(overrides))
    except BadModelFolder as e:
        raise UserError(str(e)) from None


def _resolve(spec: str, tracking_uri: str | None, overrides: list[str]) -> Resolved:
    logged = LOGGED_MODEL.match(spec)
    if logged:
        checkpoint = _checkpoint_of(spec, logged.group(1), tracking_uri, overrides)
        if checkpoint is not None:
            return checkpoint
    if spec.startswith("models:/"):
        return _downloaded(spec, tracking_uri, overrides, "registry")
    match = RUN_ID.match(spec)
    if match and not Path(spec).exists():
        return _run(spec, match.group(1), tracking_uri, overrides)
    if MLFLOW_URI.match(spec):
        return _downloaded(spec, tracking_uri, overrides, "mlflow")
    if "://" in spec and not spec.startswith("file://"):
        with tempfile.TemporaryDirectory(prefix="lma3d-ckpt-") as tmp:
            return _folder(spec, _download(spec, Path(tmp)), overrides)
    return _folder(spec, Path(spec.removeprefix("file://")), overrides)


def _folder(spec: str, path: Path, overrides: list[str]) -> Resolved:
    if not path.is_dir():
        raise UserError(f"{spec}: no such folder (expected a checkpoint, an exported model, a run id or models:/…)")
    if os.path.lexists(path / META_FILE):  # a meta that is a FIFO or a device is refused by its reader
        return _checkpoint(spec, path, overrides)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return _exported(spec, path, overrides)
    inside = sorted(p.name for p in path.glob("checkpoint_*") if (p / META_FILE).is_file())
    if inside:
        raise UserError(f"{spec}: a run folder; pass one of its checkpoints ({', '.join(inside[-3:])})")
    logged = exported_folder(path) if (path / "MLmodel").is_file() else None  # a logged pyfunc model's folder
    if logged is not None:
        return _exported(spec, logged, overrides)
    raise UserError(f"{spec}: neither an lma3d checkpoint ({META_FILE}) nor an exported model (config.json)")


def _checkpoint(spec: str, path: Path, overrides: list[str]) -> Resolved:
    from jobs.checkpoint_meta import read_meta
    from jobs.consolidate import BadCheckpoint, consolidate

    try:
        meta = read_meta(path)  # the validated reader: the tag it returns names a folder inside the checkpoint
        config = meta.get("config")
        config = config.get("model") if isinstance(config, dict) else None
        if not isinstance(config, dict):
            raise UserError(f"{path / META_FILE}: no config.model (not written by lma3d train?)")
        cfg = model_config(config, overrides, str(path / META_FILE))
        weights = consolidate(path, meta["tag"])
    except BadCheckpoint as e:
        raise UserError(str(e)) from None
    check_weights(cfg, weights, spec, str(path / META_FILE))
    origin = provenance(
        spec, "checkpoint", path.name, step=meta.get("step"), run_id=meta.get("mlflow_run_id") or None,
        tracking_uri=meta.get("tracking_uri") or None, backbone_id=str(meta.get("backbone_id", "")),
        precision=_precision(meta, path / META_FILE),
        checkpoint=spec if "://" in spec and not spec.startswith("file://") else str(path.resolve()),
    )  # fmt: skip
    return Resolved(cfg, weights, origin)


def _exported(spec: str, path: Path, overrides: list[str]) -> Resolved:
    try:
        cfg, weights, config = read_pretrained(path, _parse_overrides(overrides))
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    origin = config.get("source") or {}  # what lma3d export recorded about the checkpoint it came from
    if not isinstance(origin, dict):
        raise UserError(f"{path / 'config.json'}: source must be a mapping, got {type(origin).__name__}")
    known = provenance(
        spec, "exported", path.name, step=origin.get("step"), run_id=origin.get("run_id") or None,
        tracking_uri=origin.get("tracking_uri") or None, backbone_id=str(config.get("backbone_id", "")),
        precision=_precision(config, path / "config.json"),
    )  # fmt: skip
    return Resolved(cfg, weights, known)


def _download(uri: str, into: Path) -> Path:
    """Copy a remote checkpoint folder (s3://, gs://, hdfs://…) next to us; consolidation reads local files."""
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(uri)
        target = into / Path(root).name
        pyarrow.fs.copy_files(
            root, str(target), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem()
        )
    except (OSError, ValueError) as e:
        raise UserError(f"{uri}: cannot copy the checkpoint ({e})") from None
    return target


def _tracking(tracking_uri: str | None) -> str:
    """The tracking URI an MLflow spec is read from (MLflow's default when none is given), checked."""
    from jobs.tracking import check_tracking_uri

    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    check_tracking_uri(tracking_uri)
    return tracking_uri


def _run(spec: str, run_id: str, tracking_uri: str | None, overrides: list[str]) -> Resolved:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    tracking_uri = _tracking(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise UserError(f"{spec}: no such MLflow run at {tracking_uri} ({e.message})") from None
    tags = run.data.tags
    for tag in ("checkpoint.best", "checkpoint.latest"):
        path = tags.get(tag)
        if path and (Path(path).is_dir() or "://" in path):
            try:
                resolved = resolve(path, tracking_uri, overrides)
            except UserError as e:
                log.warning("run %s: %s %s is not usable (%s); trying the next", run_id, tag, path, e)
                continue
            resolved.provenance.update(spec=spec, kind="run", run_id=run_id, tracking_uri=tracking_uri)
            return resolved
    return _run_artifacts(spec, run_id, client, tracking_uri, overrides)


def _checkpoint_of(spec: str, model_id: str, tracking_uri: str | None, overrides: list[str]) -> Resolved | None:
    """The checkpoint folder a training checkpoint's LoggedModel names, when reachable (None: read the model's
    own artifacts, e.g. a registered one whose folder the run no longer keeps)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from jobs.checkpoint_models import PATH_TAG

    tracking_uri = _tracking(tracking_uri)
    try:
        model = MlflowClient(tracking_uri).get_logged_model(model_id)
    except MlflowException as e:
        raise UserError(f"{spec}: no such LoggedModel at {tracking_uri} ({e.message})") from None
    path = model.tags.get(PATH_TAG)
    if not path or not (Path(path).is_dir() or "://" in path):
        return None
    resolved = resolve(path, tracking_uri, overrides)
    resolved.provenance.update(spec=spec, run_id=resolved.provenance["run_id"] or model.source_run_id,
                               tracking_uri=tracking_uri)  # fmt: skip
    return resolved


def _run_artifacts(spec: str, run_id: str, client: Any, tracking_uri: str, overrides: list[str]) -> Resolved:
    """The weights a training run logged (weights/best, else weights/last) with the run's config/config.yaml."""
    import yaml
    from safetensors.torch import load_file

    from jobs.bounded import CONFIG_MAX_BYTES, ReadRefused, load_yaml, read_text, short

    quiet_progress_bars()  # a Ray Serve replica sets up no logging of ours: its stderr is a log file
    with tempfile.TemporaryDirectory(prefix="lma3d-run-") as tmp:
        try:
            config_file = client.download_artifacts(run_id, "config/config.yaml", tmp)
        except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact
            raise UserError(f"{spec}: run has no usable checkpoint tag and no config/config.yaml artifact") from None
        where = f"{spec} config/config.yaml"
        try:
            config = load_yaml(read_text(config_file, CONFIG_MAX_BYTES, "a run config"), where) or {}
        except ReadRefused as e:
            raise UserError(str(e)) from None
        except yaml.YAMLError as e:
            raise UserError(f"{where}: not valid YAML ({short(str(e).splitlines()[0])})") from None
        if not isinstance(config, dict):
            raise UserError(f"{where}: not a mapping")
        for which in ("best", "last"):
            try:
                weights_file = client.download_artifacts(run_id, f"weights/{which}/model.safetensors", tmp)
            except Exception:  # noqa: BLE001
                continue
            log.info("run %s: using its logged weights/%s", run_id, which)
            cfg = model_config(config.get("model") or {}, overrides, f"{spec} config/config.yaml")
            weights = load_file(weights_file)
            check_weights(cfg, weights, spec, f"{spec} config/config.yaml")
            origin = provenance(
                spec, "run", f"run-{run_id[:8]}-{which}", run_id=run_id, tracking_uri=tracking_uri,
                precision=_precision({"config": config}, f"{spec} config/config.yaml"),
            )  # fmt: skip
            return Resolved(cfg, weights, origin)
    raise UserError(f"{spec}: run has no reachable checkpoint and no weights/best or weights/last artifact")


def exported_folder(root: Path) -> Path | None:
    """The folder holding config.json + model.safetensors at or below root (a downloaded registry model)."""
    for config in sorted(root.rglob("config.json")):
        if (config.parent / "model.safetensors").is_file():
            return config.parent
    return None


def _download_model(spec: str, tracking_uri: str | None, into: Path) -> Path:
    """Download an MLflow model (`models:/name@alias`, `models:/name/version`, `runs:/<id>/model`…) and return
    its exported model folder."""
    import mlflow

    from jobs.tracking import tracking_uri_for_now

    uri = _tracking(tracking_uri)
    try:
        # A logged model's `models:/m-<id>` is looked up through the process's tracking URI, whatever is passed.
        quiet_progress_bars()  # a Ray Serve replica sets up no logging of ours: its stderr is a log file
        with tracking_uri_for_now(uri):
            local = mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=str(into), tracking_uri=uri)
    except Exception as e:  # noqa: BLE001 - MLflow raises MlflowException / RestException / OSError
        raise UserError(f"{spec}: cannot fetch the model from {uri} ({e})") from None
    folder = exported_folder(Path(local))
    if folder is None:
        raise UserError(f"{spec}: the MLflow model holds no config.json + model.safetensors (not lma3d's?)")
    return folder


def _safe_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", re.sub(r"^[a-z-]+:/+", "", spec))


def _downloaded(spec: str, tracking_uri: str | None, overrides: list[str], kind: str) -> Resolved:
    """An MLflow model, downloaded to a temporary folder and read as an exported one; errors name the spec."""
    with tempfile.TemporaryDirectory(prefix="lma3d-model-") as tmp:
        try:
            resolved = _exported(spec, _download_model(spec, tracking_uri, Path(tmp)), overrides)
        except BadModelFolder as e:
            raise UserError(f"{spec}: {str(e).replace(tmp, '<model>')}") from None
    resolved.provenance.update(kind=kind, name=_safe_name(spec))
    return resolved
