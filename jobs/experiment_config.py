"""ExperimentConfig: one YAML per experiment, composed of the components' own configs."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jobs.config_help import HelpConfig
from jobs.evaluation.eval_config import EvalConfig
from jobs.resources import find_config
from jobs.serving.serve_config import ServeConfig
from jobs.training.train_config import TrackingConfig, TrainConfig
from jobs.typed_yaml import ConfigError, build, dump, load_mapping, to_dict
from model.config import ModelConfig
from pipeline.loaders.config import DataConfig


@dataclass
class ExperimentConfig:
    workdir: str = "work"
    """Everything a run writes lives under here unless a path says otherwise."""
    dataset: str = "synthetic"
    """Dataset name, used in the MLflow experiment name."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mlflow: TrackingConfig = field(default_factory=TrackingConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        # Rules across sections (each section checks its own): here, not in the engine that meets them in a worker.
        if self.model.backbone_mode == "lora" and self.train.zero_stage == 3:
            raise ValueError("model.backbone_mode lora is not supported with train.zero_stage 3; use zero_stage 2")

    @property
    def storage_path(self) -> str:
        return self.train.storage_path or str(Path(self.workdir, "runs").resolve())

    @property
    def tracking_uri(self) -> str:
        return (
            self.mlflow.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI", "")
            or f"sqlite:///{Path(self.workdir, 'mlflow.db').resolve()}"
        )

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or f"lma3d/{self.dataset}-{self.data.view}-{self.data.setting}"


def add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """--config FILE, --set key=value (repeatable), bare key=value overrides, --print-config, --help-config."""
    parser.add_argument(
        "--config", default=default, help=f"experiment YAML: a file, or a shipped config's name (demo, "
        f"agpil/full_seen, ...) from any folder (default: {default or 'built-in defaults'})"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)",
    )
    parser.add_argument(
        "override_args", nargs="*", metavar="KEY=VALUE", help="more overrides, e.g. model.fidelity=corrected"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--help-config", action=HelpConfig, help="list the config keys this verb reads (type, "
                        "default, what each means) and exit")  # fmt: skip


def resolve_config(args: argparse.Namespace, model_from_source: bool = False) -> ExperimentConfig:
    """Build the config from parsed args; prints it and exits on --print-config. With `model_from_source` (eval,
    export, predict, serve: the model config comes from the model they load) the printed config leaves out the
    model section, which the verb does not use, and names the `model.*` overrides it applies instead."""
    return resolve_config_mapping(args, model_from_source)[0]


def resolve_config_mapping(
    args: argparse.Namespace, model_from_source: bool = False
) -> tuple[ExperimentConfig, dict[str, Any]]:
    """resolve_config's config and the mapping it was built from (typed_yaml.load_mapping: what the files and
    overrides set). `--config` is a file if that file exists, else a shipped config's name (jobs.resources)."""
    for item in args.override_args:
        if "=" not in item:
            raise ConfigError(f"unexpected argument {item!r}: overrides are key.sub=value")
    path = find_config(args.config) if args.config is not None else None
    data = load_mapping(path, [*args.overrides, *args.override_args])
    cfg = build(ExperimentConfig, data, str(path) if path is not None else "<defaults>")
    if args.print_config:
        if model_from_source:
            used = {k: v for k, v in to_dict(cfg).items() if k != "model"}
            overrides = ", ".join(model_overrides(args)) or "none"
            print(f"# model: the config stored with the loaded model; model.* overrides applied: {overrides}")
            print(yaml.safe_dump(used, sort_keys=False), end="")
        else:
            print(dump(cfg), end="")
        raise SystemExit(0)
    return cfg, data


def model_overrides(args: argparse.Namespace) -> list[str]:
    """The `model.*` overrides of the command line: what eval, export, predict and serve apply to the config
    stored with the model they load (e.g. a local model.backbone_path)."""
    return [item for item in [*args.overrides, *args.override_args] if item.startswith("model.")]
