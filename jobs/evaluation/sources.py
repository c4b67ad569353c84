"""What `--checkpoint` / `--model` may name, resolved to a model config + fp32 trainable weights.

- a Ray checkpoint folder of `lma3d train` (has lma3d_meta.json; local or a pyarrow URI such as s3://…),
- an exported folder (config.json + model.safetensors, from `lma3d export`),
- an MLflow run id of a training run (`<id>` or `runs:/<id>`): its `checkpoint.best` tag, else
  `checkpoint.latest`; when that path is unreachable, the run's `weights/best|last` artifact + its config,
- a registered model, `models:/<name>@<alias>` or `models:/<name>/<version>`.
Weights are only ever read with safetensors or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jobs.entry import UserError
from jobs.typed_yaml import ConfigError, apply_override, build
from model.config import ModelConfig

log = logging.getLogger("lma3d.eval.source")
RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-f]{32})/?$")
META_FILE = "lma3d_meta.json"


@dataclass
class ModelSource:
    spec: str
    """What the user passed."""
    kind: str
    """checkpoint | exported | run | registry"""
    model: ModelConfig
    weights: dict[str, torch.Tensor] = field(repr=False)
    backbone_id: str = ""
    step: int | None = None
    run_id: str | None = None
    """The training run this model belongs to (evaluations nest under it)."""
    tracking_uri: str | None = None
    """Where that run lives (from the checkpoint's meta), when known."""
    name: str = "model"
    """Short name for output folders."""
    precision: str = "fp32"
    """The training precision (train.precision) evaluation and predict compute under."""


def model_config(values: dict[str, Any], overrides: list[str], where: str) -> ModelConfig:
    """ModelConfig from a stored dict, then the user's `model.*` overrides (e.g. a local model.backbone_path)."""
    data = {"model": dict(values)}
    for item in overrides:
        apply_override(data, item)
    try:
        return build(ModelConfig, data["model"], where, prefix="model.")
    except ConfigError as e:
        raise UserError(str(e)) from None


def resolve(spec: str, tracking_uri: str, overrides: list[str] = ()) -> ModelSource:
    """The model `spec` names; `overrides` are `model.key=value` items applied to its config. Its weights
    are checked against the config (every tensor present, of the right shape, finite) before it is returned."""
    from model.pretrained import BadModelFolder, check_weights

    source = _resolve(spec, tracking_uri, overrides)
    try:
        check_weights(source.model, source.weights, source.spec if source.kind != "exported" else
                      str(Path(spec.removeprefix("file://"), "model.safetensors")))  # fmt: skip
    except BadModelFolder as e:
        raise UserError(str(e)) from None
    return source


def _resolve(spec: str, tracking_uri: str, overrides: list[str]) -> ModelSource:
    if spec.startswith("models:/"):
        return _registry(spec, tracking_uri, overrides)
    match = RUN_ID.match(spec)
    if match and not Path(spec).exists():
        return _run(spec, match.group(1), tracking_uri, overrides)
    if "://" in spec and not spec.startswith("file://"):
        with tempfile.TemporaryDirectory(prefix="lma3d-ckpt-") as tmp:
            return _folder(spec, _download(spec, Path(tmp)), overrides)
    return _folder(spec, Path(spec.removeprefix("file://")), overrides)


def _folder(spec: str, path: Path, overrides: list[str]) -> ModelSource:
    if not path.is_dir():
        raise UserError(f"{spec}: no such folder (expected a checkpoint, an exported model, a run id or models:/…)")
    if (path / META_FILE).is_file():
        return _checkpoint(spec, path, overrides)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return _exported(spec, path, overrides)
    inside = sorted(p.name for p in path.glob("checkpoint_*") if (p / META_FILE).is_file())
    if inside:
        raise UserError(f"{spec}: a run folder; pass one of its checkpoints ({', '.join(inside[-3:])})")
    raise UserError(f"{spec}: neither an lma3d checkpoint ({META_FILE}) nor an exported model (config.json)")


def _checkpoint(spec: str, path: Path, overrides: list[str]) -> ModelSource:
    from jobs.evaluation.consolidate import UnsafeCheckpoint, consolidate

    try:
        meta = json.loads((path / META_FILE).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path / META_FILE}: not valid JSON ({e})") from None
    config = (meta.get("config") or {}).get("model")
    if not isinstance(config, dict):
        raise UserError(f"{path / META_FILE}: no config.model (not written by lma3d train?)")
    try:
        weights = consolidate(path, meta.get("tag"))
    except UnsafeCheckpoint as e:
        raise UserError(str(e)) from None
    return ModelSource(
        spec=spec,
        kind="checkpoint",
        model=model_config(config, overrides, str(path / META_FILE)),
        weights=weights,
        backbone_id=str(meta.get("backbone_id", "")),
        step=meta.get("step"),
        run_id=meta.get("mlflow_run_id") or None,
        tracking_uri=meta.get("tracking_uri") or None,
        name=path.name,
        precision=_precision(meta, path / META_FILE),
    )


def _precision(record: dict, where: Path | str) -> str:
    from jobs.precision import from_meta

    try:
        return from_meta(record)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def _exported(spec: str, path: Path, overrides: list[str]) -> ModelSource:
    from model.pretrained import BadModelFolder, read_json, read_weights

    try:
        config = read_json(path / "config.json")
        weights = read_weights(path / "model.safetensors")
    except BadModelFolder as e:
        raise UserError(str(e)) from None
    if not isinstance(config.get("model"), dict):
        raise UserError(f"{path / 'config.json'}: no model config in it (not written by lma3d export?)")
    origin = config.get("source") or {}  # what lma3d export recorded about the checkpoint it came from
    if not isinstance(origin, dict):
        raise UserError(f"{path / 'config.json'}: source must be a mapping, got {type(origin).__name__}")
    return ModelSource(
        spec=spec,
        kind="exported",
        model=model_config(config["model"], overrides, str(path / "config.json")),
        weights=weights,
        backbone_id=str(config.get("backbone_id", "")),
        step=origin.get("step"),
        run_id=origin.get("run_id") or None,
        tracking_uri=origin.get("tracking_uri") or None,
        name=path.name,
        precision=_precision(config, path / "config.json"),
    )


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


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    from jobs.training.tracking import check_tracking_uri

    check_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri)


def _run(spec: str, run_id: str, tracking_uri: str, overrides: list[str]) -> ModelSource:
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise UserError(f"{spec}: no such MLflow run at {tracking_uri} ({e.message})") from None
    tags = run.data.tags
    for tag in ("checkpoint.best", "checkpoint.latest"):
        path = tags.get(tag)
        if path and (Path(path).is_dir() or "://" in path):
            try:
                source = resolve(path, tracking_uri, overrides)
            except UserError as e:
                log.warning("run %s: %s %s is not usable (%s); trying the next", run_id, tag, path, e)
                continue
            source.spec, source.kind, source.run_id, source.tracking_uri = spec, "run", run_id, tracking_uri
            return source
    return _run_artifacts(spec, run_id, client, tracking_uri, overrides)


def _run_artifacts(spec: str, run_id: str, client: Any, tracking_uri: str, overrides: list[str]) -> ModelSource:
    """The weights a training run logged (weights/best, else weights/last) with the run's config/config.yaml."""
    import yaml
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="lma3d-run-") as tmp:
        try:
            config_file = client.download_artifacts(run_id, "config/config.yaml", tmp)
        except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact
            raise UserError(f"{spec}: run has no usable checkpoint tag and no config/config.yaml artifact") from None
        config = yaml.safe_load(Path(config_file).read_text()) or {}
        for which in ("best", "last"):
            try:
                weights_file = client.download_artifacts(run_id, f"weights/{which}/model.safetensors", tmp)
            except Exception:  # noqa: BLE001
                continue
            log.info("run %s: using its logged weights/%s", run_id, which)
            return ModelSource(
                spec=spec,
                kind="run",
                model=model_config(config.get("model") or {}, overrides, f"{spec} config/config.yaml"),
                weights=load_file(weights_file),
                run_id=run_id,
                tracking_uri=tracking_uri,
                name=f"run-{run_id[:8]}-{which}",
                precision=_precision({"config": config}, f"{spec} config/config.yaml"),
            )
    raise UserError(f"{spec}: run has no reachable checkpoint and no weights/best or weights/last artifact")


def exported_folder(root: Path) -> Path | None:
    """The folder holding config.json + model.safetensors at or below root (a downloaded registry model)."""
    for config in sorted(root.rglob("config.json")):
        if (config.parent / "model.safetensors").is_file():
            return config.parent
    return None


def download_registered(spec: str, tracking_uri: str, into: Path) -> Path:
    """Download `models:/name@alias` (or /version) and return its exported model folder."""
    import mlflow

    _client(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=str(into), tracking_uri=tracking_uri)
    except Exception as e:  # noqa: BLE001 - MLflow raises MlflowException / RestException / OSError
        raise UserError(f"{spec}: cannot fetch the registered model from {tracking_uri} ({e})") from None
    folder = exported_folder(Path(local))
    if folder is None:
        raise UserError(f"{spec}: the registered model holds no config.json + model.safetensors (not lma3d's?)")
    return folder


def _registry(spec: str, tracking_uri: str, overrides: list[str]) -> ModelSource:
    with tempfile.TemporaryDirectory(prefix="lma3d-model-") as tmp:
        source = _exported(spec, download_registered(spec, tracking_uri, Path(tmp)), overrides)
    source.kind, source.name = "registry", re.sub(r"[^A-Za-z0-9._-]+", "-", spec.removeprefix("models:/"))
    return source
