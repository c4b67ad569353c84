"""The Ray Data evaluation: test shards -> actor pool (one model per actor) -> predictions by key -> metrics.

    read_test_shards(shards) ─ map_batches(Predictor, ActorPoolStrategy(size=pool_size(...)), eval.batch_size)
                             ─ iter_batches on the driver ─ PredictionCollector (exactly once per key, test-list
                               order; the maps to a scratch folder) ─ summarize the per-sample scores

Each actor scores its own batches (model.metrics.per_sample is per row), so the driver never holds the test
set's maps: its memory is an index of the test samples, whatever their number.

The weights travel once through the object store (safetensors bytes, no pickled tensors); every actor
rebuilds the model from its config. Order is preserved (`preserve_order`), so batches hold the same samples
on every run whatever the number of actors: with fidelity `released` a sample's prediction depends on the
text padding of its batch (docs/original.md §1.5), and this keeps re-runs identical.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.evaluation.eval_config import EvalConfig
from jobs.evaluation.outputs import PredictionCollector, Predictions, as_list
from jobs.inference import predict_batch
from jobs.loading import Resolved, model_from_package, model_package

log = logging.getLogger("lma3d.eval")
READ_CPUS = 1
"""What a read task of read_test_shards asks Ray for (Ray Data's default)."""


@dataclass
class PoolOutput:
    predictions: Predictions
    duplicates: int
    busy_s: float
    """From the first batch an actor started to the last one finished: the pool's steady-state window."""
    actors: int = 1
    """Size of the actor pool (eval.num_actors, or what `auto` gave)."""


@dataclass
class EvalResult:
    predictions: Predictions
    metrics: dict
    duplicates: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    actors: int = 1
    """seconds: inference (read + decode + forward, wall), pool_busy (steady state, no start-up), metrics, total."""


class Predictor:
    """A Ray Data actor: decodes raw test samples and predicts them with its own copy of the model."""

    def __init__(
        self, package: list, image_size: int, votes: int, seed: int, threads: int, use_gpu: bool, shuffle: bool = False
    ) -> None:
        import ray

        if threads > 0:
            torch.set_num_threads(threads)
        data = ray.get(package[0]) if isinstance(package[0], ray.ObjectRef) else package[0]
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = model_from_package(data, device)
        self.image_size, self.votes, self.seed, self.shuffle = image_size, votes, seed, shuffle

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from model.metrics import per_sample
        from pipeline.loaders.raydata import decode_test_batch

        started = time.time()
        decoded = decode_test_batch(batch, self.image_size)
        keys = as_list(decoded["key"])
        instructions = as_list(decoded["instruction"])
        if self.shuffle:
            instructions = instructions[1:] + instructions[:1]
        pred = predict_batch(
            self.model,
            decoded["image"],
            decoded["points"],
            instructions,
            keys,
            self.votes,
            self.seed,
        )
        label = np.asarray(decoded["label"], np.float32).reshape(len(keys), -1)
        return {
            "key": np.asarray(keys),
            "pred": pred,
            "label": label,
            "object": np.asarray(as_list(decoded["object"])),
            "affordance": np.asarray(as_list(decoded["affordance"])),
            **per_sample(pred, label),
            "busy": np.full((len(keys), 2), [started, time.time()]),  # wall-clock span of this batch's work
        }


def predict_shards(
    shards: str, source: Resolved, cfg: EvalConfig, scratch: str | Path, on_corrupt: str = "fail"
) -> PoolOutput:
    """Every test sample of `shards` predicted and scored once by `source`'s model (at its config's image size,
    under its training precision; fp32 when the provenance names none) through the actor pool, collected by key
    (the maps into `scratch`). Test shards are verified as they are read (`on_corrupt`: data.on_corrupt_shard)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.loaders.raydata import read_test_shards

    precision = source.provenance.get("precision", "fp32")
    package = ray.put(model_package(source.config, source.weights, precision))
    resources = ray.cluster_resources()
    size = pool_size(cfg, resources)
    cpus = actor_cpus(cfg, resources.get("CPU", 1.0), size)
    log.info("evaluation pool: %d actors x (%.2g CPU%s)", size, cpus, " + 1 GPU" if cfg.use_gpu else "")
    context = DataContext.get_current()
    previous = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        dataset = read_test_shards(shards, on_corrupt).map_batches(
            Predictor,
            fn_constructor_kwargs={
                "package": [package],
                "image_size": source.config.image_size,
                "votes": cfg.votes,
                "seed": cfg.seed,
                "threads": cfg.threads_per_actor or max(1, int(cfg.cpus_per_actor)),
                "use_gpu": cfg.use_gpu,
                "shuffle": cfg.shuffle_instructions,
            },
            batch_size=cfg.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=size),
            num_cpus=cpus,
            num_gpus=1 if cfg.use_gpu else 0,
        )
        collector = PredictionCollector(scratch)
        first, last = np.inf, -np.inf
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            collector.add(batch)
            if len(batch["busy"]):
                first, last = min(first, batch["busy"][:, 0].min()), max(last, batch["busy"][:, 1].max())
    finally:
        context.execution_options.preserve_order = previous
    return PoolOutput(collector.finish(), collector.duplicates, float(last - first), size)


def pool_size(cfg: EvalConfig, cluster_resources: dict[str, float]) -> int:
    """Actors in the pool: eval.num_actors, or for `auto` one per GPU of the cluster (use_gpu), else as many as
    its CPUs hold at eval.cpus_per_actor each once one CPU is left for reading shards; at least 1 (on a cluster
    whose GPU group is scaled to zero, that one actor's demand makes the autoscaler add a GPU node)."""
    if cfg.num_actors != "auto":
        return cfg.num_actors
    if cfg.use_gpu:
        return max(1, int(cluster_resources.get("GPU", 0)))
    spare = cluster_resources.get("CPU", 0) - READ_CPUS
    return max(1, int(spare / cfg.cpus_per_actor + 1e-9))


def actor_cpus(cfg: EvalConfig, cluster_cpus: float, actors: int) -> float:
    """CPUs reserved per actor: eval.cpus_per_actor, lowered when `actors` of them would leave less than one CPU
    for the shard-reading tasks (each asks for 1): Ray Data would then wait for it forever. Threads are unchanged."""
    if cfg.use_gpu or actors * cfg.cpus_per_actor <= cluster_cpus - READ_CPUS:
        return cfg.cpus_per_actor
    fitted = max(0.05, round((cluster_cpus - READ_CPUS) / actors, 2))
    log.warning(
        "%d actors x %.2g CPUs would leave the shard readers less than %d CPU of %.0f: reserving %.2g CPUs per actor",
        actors, cfg.cpus_per_actor, READ_CPUS, cluster_cpus, fitted,
    )  # fmt: skip
    return fitted


def run_eval(
    shards: str, source: Resolved, cfg: EvalConfig, scratch: str | Path, on_corrupt: str = "fail"
) -> EvalResult:
    """predict_shards (under the training precision) + the exact metrics (model.metrics, per sample in the actors,
    summarized here); the maps stay in `scratch` until the caller has written them out."""
    from model.metrics import summarize

    start = time.perf_counter()
    pool = predict_shards(shards, source, cfg, scratch, on_corrupt)
    inferred = time.perf_counter()
    if pool.duplicates:
        log.warning("%d duplicate test rows dropped (a key occurs twice in %s)", pool.duplicates, shards)
    p = pool.predictions
    metrics = summarize(p.scores, p.objects, p.affordances)
    done = time.perf_counter()
    timings = {
        "inference_s": inferred - start,
        "pool_busy_s": pool.busy_s,
        "metrics_s": done - inferred,
        "total_s": done - start,
    }
    log.info(
        "evaluated %d test samples in %.1f s (actors busy %.1f s, metrics %.3f s)",
        len(p), done - start, pool.busy_s, done - inferred,
    )  # fmt: skip
    return EvalResult(p, metrics, pool.duplicates, timings, pool.actors)


def viz_inputs(shards: str, keys: list[str], image_size: int, on_corrupt: str = "fail") -> dict[str, dict[str, Any]]:
    """Decoded inputs (normalised points [N,3], ImageNet-normalised image, instruction) of a few test keys."""
    from pipeline.loaders.raydata import decode_test_batch, read_test_shards

    wanted = np.asarray(sorted(keys))

    def keep(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        column = "__key__" if "__key__" in batch else "key"
        mask = np.isin(np.asarray(batch[column]).astype(str), wanted)
        return {name: values[mask] for name, values in batch.items()}

    parts = [
        b
        for b in read_test_shards(shards, on_corrupt)
        .map_batches(keep, batch_format="numpy")
        .iter_batches(batch_format="numpy")
        if len(next(iter(b.values())))
    ]
    if not parts:
        return {}
    batch = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    decoded = decode_test_batch(batch, image_size)
    out = {}
    for i, key in enumerate(as_list(decoded["key"])):
        points = np.asarray(decoded["points"][i], np.float32).reshape(3, -1).T
        out[key] = {"points": points, "image": decoded["image"][i], "instruction": as_list(decoded["instruction"])[i]}
    return out
