"""Train loader: image samples streamed from the train shards, each paired with K point clouds of its object.

Rules (all explicit, all seeded by (data.seed, epoch, ...)):
- streams: rank r, loader process w is stream s = r * W + w of S = world * W. With at least S shards, stream s
  reads shards[s::S] of the epoch's shuffled shard list; with fewer, every stream reads all shards and keeps
  samples i with i % S == s. A stream cycles over its part until it has produced its quota.
- quota: every rank yields exactly floor(train samples / (world * batch)) batches per epoch, computed from the
  manifest, so no rank waits at the end of an epoch (no DDP / ZeRO hang).
- verification: every shard is read whole and checked (sha256, count, keys, values) before its samples enter
  the shuffle buffer (reading.py); the point bank is verified once per process before the workers fork
  (bank.py). A corrupt one stops the job, or with `data.on_corrupt_shard: skip` is dropped and counted: each
  batch carries the names of the shards its worker skipped so far, which `Loader` collects.
- pairing: K clouds of the image's object drawn without replacement from the point bank by a generator seeded
  with (seed, epoch, stream, sample number); Rotation view rotates each drawn cloud by a fresh random rotation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pipeline.loaders.bank import PointBank, open_bank
from pipeline.loaders.config import DataConfig
from pipeline.loaders.reading import BadData, ShardPolicy, policy_for, read_manifest, shard_paths
from pipeline.loaders.transforms import decode_image, normalize_points, random_rotation

CORRUPT_KEY = "corrupt_shards"


def batches_per_epoch(manifest: dict, batch_size: int, world_size: int) -> int:
    samples = int(manifest["splits"].get("train", {}).get("samples", 0))
    return samples // (world_size * batch_size)


def collate(samples: list[dict]) -> dict:
    batch: dict = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        batch[key] = torch.from_numpy(np.stack(values)) if isinstance(values[0], np.ndarray) else values
    return batch


class TrainStream(torch.utils.data.IterableDataset):
    def __init__(self, cfg: DataConfig, image_size: int, rank: int, world_size: int, epoch: int) -> None:
        super().__init__()
        self.cfg, self.image_size, self.rank, self.world, self.epoch = cfg, image_size, rank, world_size, epoch
        self.manifest = read_manifest(cfg.shards)
        self.shards = shard_paths(cfg.shards, self.manifest, "train")
        self.batches = batches_per_epoch(self.manifest, cfg.batch_size, world_size)
        self.processes = max(1, cfg.num_workers)
        self.bank: PointBank | None = None

    def prepare(self) -> None:
        """Open (and verify) the point bank in this process; forked loader workers inherit it."""
        if self.bank is None:
            self.bank = open_bank(self.cfg.shards, self.manifest)

    def __len__(self) -> int:
        return self.batches

    def _raw(self, stream: int, streams: int, policy: ShardPolicy) -> Iterator[dict]:
        names = [e for e in self.shards if e.samples > 0]
        if not names:
            raise ValueError(f"{self.cfg.shards}: no train samples")
        cycle = 0
        while True:
            produced = 0
            order = np.random.default_rng([self.cfg.seed, self.epoch, cycle]).permutation(len(names))
            ordered = [names[i] for i in order]
            if len(ordered) >= streams:
                mine, keep = ordered[stream::streams], None
            else:
                mine, keep = ordered, stream
            counter = 0
            for entry in mine:
                for sample in policy.samples(entry):
                    counter += 1
                    if keep is None or (counter - 1) % streams == keep:
                        produced += 1
                        yield sample
            if produced == 0 and all(e.name in policy.corrupt for e in names):  # skip mode, nothing left
                raise ValueError(
                    f"{self.cfg.shards}: no readable train samples left for loader stream {stream} "
                    f"({len(policy.corrupt)} corrupt shards skipped)"
                )
            cycle += 1

    def _shuffled(self, samples: Iterator[dict], rng: np.random.Generator) -> Iterator[dict]:
        buffer: list[dict] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= max(1, self.cfg.shuffle_buffer):
                yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:  # unreachable for an endless stream; kept for finite ones
            yield buffer.pop(int(rng.integers(len(buffer))))

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        streams, stream = self.world * workers, self.rank * workers + worker
        mine = len(range(worker, self.batches, workers))  # DataLoader takes batches round-robin from workers
        if mine == 0:
            return
        self.prepare()
        bank = self.bank
        bad = BadData(self.cfg.max_bad_fraction)
        policy = policy_for(self.manifest, self.cfg.on_corrupt_shard)
        shuffle_rng = np.random.default_rng([self.cfg.seed, self.epoch, stream, 1])
        samples = self._shuffled(self._raw(stream, streams, policy), shuffle_rng)
        number, pending = 0, []
        for raw in samples:
            number += 1
            try:
                pending.append(
                    self._decode(raw, bank, np.random.default_rng([self.cfg.seed, self.epoch, stream, 2, number]))
                )
                bad.ok()
            except Exception as error:  # noqa: BLE001 - any undecodable sample is skipped and counted
                bad.failed(f"{raw.get('__url__', 'train shard')} sample {raw.get('__key__')}", error)
                continue
            if len(pending) == self.cfg.batch_size:
                yield collate(pending) | {CORRUPT_KEY: tuple(policy.corrupt)}
                pending = []
                mine -= 1
                if mine == 0:
                    return

    def _decode(self, raw: dict, bank: PointBank, rng: np.random.Generator) -> dict:
        import json

        meta = json.loads(raw["json"])
        points, labels = [], []
        for index in bank.draw(meta["object"], self.cfg.pairs, rng):
            xyz, label = bank.cloud(index, meta["affordance"])
            if self.cfg.view == "rotation":
                xyz = xyz @ random_rotation(rng).T
            points.append(normalize_points(xyz))
            labels.append(label)
        return {
            "image": decode_image(raw["jpg"], self.image_size),
            "points": np.stack(points),
            "label": np.stack(labels),
            "instruction": meta["instruction"],
            "key": raw["__key__"],
            "object": meta["object"],
            "affordance": meta["affordance"],
        }


class Loader:
    """A DataLoader with a known length: `len()` is the batches per epoch on this rank. `corrupt_shards` are
    the names of the shards its workers skipped as corrupt so far (`data.on_corrupt_shard: skip`)."""

    def __init__(self, dataset: TrainStream, batches: int, num_workers: int) -> None:
        self.batches, self.dataset = batches, dataset
        self.corrupt_shards: set[str] = set()
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=num_workers, persistent_workers=False,
            multiprocessing_context="fork" if num_workers else None,
        )  # fmt: skip

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[dict]:
        self.dataset.prepare()  # before the workers fork: the bank is hashed once, here
        for batch in self.loader:
            self.corrupt_shards.update(batch.pop(CORRUPT_KEY, ()))
            yield batch


def train_loader(cfg: DataConfig, image_size: int, rank: int, world_size: int, epoch: int) -> Loader:
    dataset = TrainStream(cfg, image_size, rank, world_size, epoch)
    return Loader(dataset, len(dataset), cfg.num_workers)
