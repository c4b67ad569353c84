"""The model a replica serves: loaded once through the one loading path (jobs.loading.load), requests prepared
exactly as `lma3d predict` prepares files, batches run as one forward.

For `models:/name@alias` the alias is pinned to a version at load time, and `follow()` (called periodically by
the replica) loads the new version when the alias has moved and swaps it in with one reference assignment:
requests already prepared finish on the model they were prepared for. No Ray here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from jobs.entry import UserError
from jobs.serving.api import BadRequest, PredictRequest
from jobs.serving.batch_predict import BadInput, HeatMap, Item, Prepared, predict_prepared, prepare

log = logging.getLogger("lma3d.serve")
REGISTRY = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))$")


@dataclass(frozen=True)
class Loaded:
    model: torch.nn.Module
    info: dict[str, Any]
    """name, version (registered models; else None), spec, kind, num_points, min_points."""

    @property
    def min_points(self) -> int:
        return int(self.info["min_points"])


@dataclass
class Stats:
    forwards: int = 0
    predictions: int = 0
    reloads: int = 0
    batch_sizes: list[int] = field(default_factory=list)


def alias_version(name: str, alias: str, tracking_uri: str) -> str:
    """The version `models:/name@alias` points at now."""
    from mlflow.tracking import MlflowClient

    return str(MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version)


def load(spec: str, tracking_uri: str, overrides: list[str] = (), device: str = "cpu") -> Loaded:
    """The model `spec` names (anything `lma3d eval` / `lma3d predict` accepts), in eval mode, FPS from point 0."""
    from jobs.loading import load as load_model

    registry = REGISTRY.match(spec)
    version, pinned = None, spec
    if registry:
        version = registry["version"]
        if registry["alias"]:
            try:
                version = alias_version(registry["name"], registry["alias"], tracking_uri)
            except Exception as e:  # noqa: BLE001 - MLflow raises MlflowException / RestException / OSError
                raise UserError(f"{spec}: cannot read the alias from {tracking_uri} ({e})") from None
        pinned = f"models:/{registry['name']}/{version}"  # the version the alias named, not whatever it names later
    model, config, origin = load_model(pinned, tracking_uri, list(overrides), device)
    info = {
        "name": registry["name"] if registry else origin["name"],
        "version": version,
        "spec": spec,
        "kind": origin["kind"],
        "num_points": config.num_points,
        "min_points": config.sa1_npoint,
    }
    return Loaded(model, info)


class Predictor:
    """What one replica holds: the current model, its counters, and the alias it follows (if any)."""

    def __init__(self, spec: str, tracking_uri: str, overrides: list[str] = (), device: str = "cpu") -> None:
        self.spec, self.tracking_uri, self.overrides, self.device = spec, tracking_uri, list(overrides), device
        match = REGISTRY.match(spec)
        self.alias = (match["name"], match["alias"]) if match and match["alias"] else None
        self.stats = Stats()
        self._lock = threading.Lock()
        started = time.perf_counter()
        self.loaded = load(spec, tracking_uri, self.overrides, device)
        log.info("loaded %s (%s) in %.1f s", spec, self.loaded.info, time.perf_counter() - started)

    def prepare(self, request: PredictRequest, name: str = "request") -> tuple[Loaded, Prepared]:
        """Checks against the current model and preprocessing (as `lma3d predict`); BadRequest when unusable."""
        loaded = self.loaded  # one read: the request stays with this model even if a reload swaps it
        if len(request.points) < loaded.min_points:
            raise BadRequest(
                f"points: {len(request.points)} given, the model needs at least {loaded.min_points} "
                "(its first sampling level)"
            )
        try:
            item = Item(name, request.image, request.points, request.instruction)
            return loaded, prepare(loaded.model.cfg, item, shown=False)  # nothing renders a served request
        except BadInput as e:
            raise BadRequest(str(e)) from None

    def run(self, batch: list[tuple[Loaded, Prepared]]) -> list[tuple[Loaded, HeatMap]]:
        """One forward per model in `batch` (one in all but the moment of a reload), results in input order."""
        out: list[tuple[Loaded, HeatMap] | None] = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for i, (loaded, _) in enumerate(batch):
            groups.setdefault(id(loaded), []).append(i)
        for indices in groups.values():
            loaded = batch[indices[0]][0]
            heat = predict_prepared(loaded.model, [batch[i][1] for i in indices])
            with self._lock:
                self.stats.forwards += 1
                self.stats.predictions += len(indices)
                self.stats.batch_sizes = (self.stats.batch_sizes + [len(indices)])[-100:]
            for i, h in zip(indices, heat):
                out[i] = (loaded, h)
        return out  # type: ignore[return-value]

    def follow(self) -> bool:
        """If the followed alias now names another version, load that version and swap it in; True if swapped."""
        if self.alias is None:
            return False
        name, alias = self.alias
        version = alias_version(name, alias, self.tracking_uri)
        if version == self.loaded.info["version"]:
            return False
        fresh = load(f"models:/{name}/{version}", self.tracking_uri, self.overrides, self.device)
        fresh.info.update(spec=self.spec)
        self.loaded = fresh
        with self._lock:
            self.stats.reloads += 1
        log.info("%s moved to version %s: reloaded", self.spec, version)
        return True

    def health(self) -> dict[str, Any]:
        with self._lock:
            stats = {"forwards": self.stats.forwards, "predictions": self.stats.predictions,
                     "reloads": self.stats.reloads, "last_batch_sizes": self.stats.batch_sizes[-10:]}  # fmt: skip
        return {"status": "ok", "model": self.loaded.info, "stats": stats}
