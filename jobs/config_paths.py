"""Which config keys hold local paths, and what a relative one means: the folder the command was run from.

Ray Train workers and Ray Tune trials run in folders of their own, so a relative path must be made absolute on
the driver, before Ray starts: `lma3d train` does it to its config (jobs/training/launcher.py), `lma3d sweep` to
the mapping every trial is built from (jobs/sweeping/inputs.py), so a trial reads what `lma3d train` would read.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from jobs.preflight import PRESET_BACKBONES
from model.image_encoder import NO_WEIGHTS

PATH_KEYS: dict[str, tuple[str, ...]] = {
    "workdir": (),
    "data.shards": (),
    "model.backbone": PRESET_BACKBONES,
    "model.backbone_path": (),
    "model.resnet_weights": (NO_WEIGHTS,),
    "train.storage_path": (),
}
"""Dotted key -> the values of that key that are names, not paths. (`train.storage_path` empty: under workdir.)"""
TRACKING_KEY = "mlflow.tracking_uri"
"""A URI, but a local store's path in it may be relative (absolute_tracking_uri)."""


def absolute(path: str, names: tuple[str, ...] = ()) -> str:
    """`path` made absolute against the current folder (`~` expanded); empty values, `names` and URIs unchanged."""
    if not isinstance(path, str) or not path or path in names or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def absolute_tracking_uri(uri: str) -> str:
    """An MLflow tracking URI whose local path is relative (`sqlite:///db/mlflow.db`: three slashes, or a bare
    folder, MLflow's file store) made absolute; servers and absolute ones unchanged."""
    if isinstance(uri, str) and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + absolute(uri.removeprefix("sqlite:///"))
    return absolute(uri, ("databricks",))  # MLflow's name for a Databricks workspace, not a folder


def absolute_value(key: str, value: Any) -> Any:
    """`value` of dotted `key` with its path made absolute if `key` holds a path; other keys' values unchanged."""
    if key == TRACKING_KEY:
        return absolute_tracking_uri(value)
    return absolute(value, PATH_KEYS[key]) if key in PATH_KEYS else value


def absolute_mapping(data: dict[str, Any], built: Any) -> dict[str, Any]:
    """A copy of the config mapping `data` (what the user wrote: files and overrides) in which every path key
    holds the absolute form of its value in `built` (the ExperimentConfig built from `data`). Set even where
    `data` left a key out: a default like `workdir: work` is relative too. Other keys stay as written, so that
    values derived from them (model.fp1_mlp from model.emb_dim) are derived again when a trial changes them."""
    out = copy.deepcopy(data)
    for key in (*PATH_KEYS, TRACKING_KEY):
        section, _, name = key.rpartition(".")
        value = getattr(getattr(built, section) if section else built, name)
        if value or key in _dotted_keys(data):  # an empty default (storage_path) stays unset: it follows workdir
            node = out.setdefault(section, {}) if section else out
            node[name] = absolute_value(key, value)
    return out


def _dotted_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for k, v in data.items():
        keys.add(f"{prefix}{k}")
        if isinstance(v, dict):
            keys |= _dotted_keys(v, f"{prefix}{k}.")
    return keys
