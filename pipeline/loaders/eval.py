"""Eval loader and the decode shared with the Ray Data evaluation job.

Every test sample exactly once across ranks, in manifest order: rank r takes samples r, r + world, ...;
ranks with fewer samples repeat their last one, marked `valid = False`, so all ranks run the same number of
batches (ZeRO-3 forwards are collective). No shuffling, no resampling, points as stored (normalised only).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator

import numpy as np
import torch

from pipeline.loaders.config import DataConfig
from pipeline.loaders.reading import BadData, policy_for, read_manifest, shard_paths
from pipeline.loaders.train import collate
from pipeline.loaders.transforms import decode_image, normalize_points


def decode_test_sample(raw: dict, image_size: int) -> dict:
    """A test shard sample (member bytes) -> model inputs with K = 1."""
    meta = json.loads(raw["json"])
    xyz = np.load(io.BytesIO(raw["points.npy"]), allow_pickle=False)
    label = np.load(io.BytesIO(raw["label.npy"]), allow_pickle=False).astype(np.float32)
    if "jpg" not in raw:
        raise ValueError(f"test sample {raw.get('__key__')} has no image (a LASO-style sample)")
    return {
        "image": decode_image(raw["jpg"], image_size),
        "points": normalize_points(xyz)[None],
        "label": label[None],
        "instruction": meta["instruction"],
        "key": raw["__key__"],
        "object": meta["object"],
        "affordance": meta["affordance"],
    }


class EvalLoader:
    def __init__(self, cfg: DataConfig, image_size: int, rank: int, world_size: int) -> None:
        self.cfg, self.image_size, self.rank, self.world = cfg, image_size, rank, world_size
        self.manifest = read_manifest(cfg.shards)
        self.shards = shard_paths(cfg.shards, self.manifest, "test")
        self.total = sum(e.samples for e in self.shards)
        self.corrupt_shards: dict[str, str] = {}
        self.per_rank = math.ceil(self.total / world_size)
        self.batches = math.ceil(self.per_rank / cfg.eval_batch_size)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[dict]:
        bad = BadData(self.cfg.max_bad_fraction)
        policy = policy_for(self.manifest, self.cfg.on_corrupt_shard)
        self.corrupt_shards = policy.corrupt
        mine: list[dict] = []
        index = 0
        for entry in self.shards:
            path = entry.path
            for raw in policy.samples(entry):
                if index % self.world == self.rank:
                    try:
                        mine.append(decode_test_sample(raw, self.image_size) | {"valid": True})
                        bad.ok()
                    except Exception as error:  # noqa: BLE001 - skipped, counted, warned
                        bad.failed(f"{path} sample {raw.get('__key__')}", error)
                index += 1
                if len(mine) == self.cfg.eval_batch_size:
                    yield self._collate(mine)
                    mine = []
        produced = (index - self.rank + self.world - 1) // self.world if index > self.rank else 0
        padding = self.per_rank - produced
        if mine or padding > 0:
            yield from self._pad(mine, padding)

    def _pad(self, mine: list[dict], padding: int) -> Iterator[dict]:
        """Finish with copies of a real sample marked invalid until this rank has `batches` batches."""
        template = (mine[-1] if mine else self._first()) | {"valid": False}
        while padding > 0 or mine:
            while len(mine) < self.cfg.eval_batch_size and padding > 0:
                mine.append(template)
                padding -= 1
            yield self._collate(mine)
            mine = []

    def _first(self) -> dict:
        policy = policy_for(self.manifest, "skip")
        for entry in self.shards:
            for raw in policy.samples(entry):
                return decode_test_sample(raw, self.image_size)
        raise ValueError(f"{self.cfg.shards}: no readable test samples")

    @staticmethod
    def _collate(samples: list[dict]) -> dict:
        batch = collate([{k: v for k, v in s.items() if k != "valid"} for s in samples])
        batch["valid"] = torch.tensor([s["valid"] for s in samples], dtype=torch.bool)
        return batch


def eval_loader(cfg: DataConfig, image_size: int, rank: int, world_size: int) -> EvalLoader:
    return EvalLoader(cfg, image_size, rank, world_size)
