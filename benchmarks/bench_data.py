"""Data pipeline throughput, measured side by side in one run on a synthetic AGPIL dataset.

    python benchmarks/bench_data.py [--images 5000] [--workdir /tmp/lma3d-bench-data]

1. synth: generation speed with 1 and 2 processes.
2. shard: the Ray Data job vs the same parse-and-write in one plain Python process vs the floor of reading
   every raw byte once.
3. loader: train batches (3 point clouds per image) with 0/1/2 loader processes vs a tight loop that only
   decodes the same JPEGs and reads the same point arrays; peak RSS and PSS of a loader process.
4. verification: reading every train shard with and without the sha256 / count / value checks, and the train
   loader (1 process) with and without them (without = the same tar parse, no hashing, no checks, no bank hash);
   the goal is <= 5 % of loader throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil

from pipeline.formats import iter_records, list_items
from pipeline.loaders import bank as bank_module
from pipeline.loaders import reading, train_loader
from pipeline.loaders.bank import PointBank
from pipeline.loaders.config import DataConfig
from pipeline.loaders.reading import iter_samples, read_manifest, shard_paths
from pipeline.loaders.transforms import decode_image, normalize_points
from pipeline.record import Rejection
from pipeline.shards.config import ShardConfig
from pipeline.shards.job import run as shard_job
from pipeline.shards.samples import sample_members, write_tar
from pipeline.synth.config import SynthConfig
from pipeline.synth.generate import generate


def raw_read_floor(root: Path) -> tuple[float, int]:
    start, total = time.perf_counter(), 0
    for path in root.rglob("*"):
        if path.is_file():
            total += len(path.read_bytes())
    return time.perf_counter() - start, total


def plain_shard(root: Path, out: Path, per_shard: int) -> float:
    start = time.perf_counter()
    batch, index = [], 0
    for record in iter_records(root, "agpil"):
        if isinstance(record, Rejection) or record.kind == "points":
            continue
        batch.append((record.key, sample_members(record)))
        if len(batch) == per_shard:
            write_tar(out / f"shard-{index:06d}.tar", batch)
            batch, index = [], index + 1
    if batch:
        write_tar(out / f"shard-{index:06d}.tar", batch)
    return time.perf_counter() - start


def decode_floor(shards: Path, image_size: int, samples: int, pairs: int) -> float:
    manifest = read_manifest(shards)
    bank = PointBank(shards / "points.arrow")
    rng = np.random.default_rng(0)
    start, seen = time.perf_counter(), 0
    for entry in shard_paths(shards, manifest, "train"):
        for raw in iter_samples(entry):
            decode_image(raw["jpg"], image_size)
            for index in rng.integers(0, len(bank), pairs):
                normalize_points(bank.cloud(int(index), "grasp")[0])
            seen += 1
            if seen >= samples:
                return time.perf_counter() - start
    return time.perf_counter() - start


def loader_rate(cfg: DataConfig, image_size: int) -> tuple[float, int, float, float]:
    loader = train_loader(cfg, image_size, 0, 1, 0)
    start, images, rss, pss = time.perf_counter(), 0, 0.0, 0.0
    for i, batch in enumerate(loader):
        images += len(batch["key"])
        if i % 10 == 5:
            for child in psutil.Process().children(recursive=True):
                try:
                    info = child.memory_full_info()
                    rss, pss = max(rss, info.rss), max(pss, info.pss)
                except psutil.Error:
                    pass
    return time.perf_counter() - start, images, rss / 2**20, pss / 2**20


def unverified_read(entry: reading.ShardEntry, num_points: int | None = None) -> list[dict]:
    """The loaders' tar parse with nothing checked: no hashing, no count, key or value checks."""
    with open(entry.path, "rb", buffering=reading.READ_CHUNK) as raw:
        samples, _ = reading._parse(raw, entry)
    return samples


@contextlib.contextmanager
def verification_off(shards: Path) -> Iterator[None]:
    """Readers without verification: read_shard swapped for the unchecked parse, the bank taken as verified."""
    manifest = read_manifest(shards)
    PointBank(shards / "points.arrow", manifest["point_bank"])  # registers the bank as verified in this process
    original = reading.read_shard
    reading.read_shard = unverified_read
    try:
        yield
    finally:
        reading.read_shard = original
        bank_module._VERIFIED.clear()


def shard_read_rate(shards: Path, verified: bool) -> float:
    """MB/s reading every train shard into samples (no decode)."""
    manifest = read_manifest(shards)
    entries = shard_paths(shards, manifest, "train")
    read = reading.read_shard if verified else unverified_read
    start = time.perf_counter()
    for entry in entries:
        read(entry, manifest["config"]["num_points"])
    return sum(e.bytes for e in entries) / 2**20 / (time.perf_counter() - start)


def verification_rows(shards: Path, image_size: int) -> list[tuple[str, float, float, str]]:
    rows = []
    off, on = shard_read_rate(shards, False), shard_read_rate(shards, True)
    rows.append(("shard read MB/s: unverified vs verified", off, on, f"{100 * (1 - on / off):.1f}% cost"))
    cfg = DataConfig(shards=str(shards), batch_size=6, num_workers=1, shuffle_buffer=200)
    with verification_off(shards):
        seconds, images, _, _ = loader_rate(cfg, image_size)
    plain = images / seconds
    bank_module._VERIFIED.clear()
    seconds, images, _, _ = loader_rate(cfg, image_size)
    checked = images / seconds
    rows.append(
        ("loader img/s, 1 proc: unverified vs verified", plain, checked, f"{100 * (1 - checked / plain):.1f}% cost")
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--workdir", default="/tmp/lma3d-bench-data")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    rows = []

    small = SynthConfig(out=str(work / "raw-small"), train_images=400, test_samples=100)
    t1 = generate(small, workers=1)["samples_per_s"]
    t2 = generate(SynthConfig(**{**small.__dict__, "out": str(work / "raw-small2")}), workers=2)["samples_per_s"]
    rows.append(("synth samples/s (demo size), 1 vs 2 procs", t1, t2, ""))
    big = generate(
        SynthConfig(out=str(work / "raw"), train_images=args.images, test_samples=args.images // 5), workers=2
    )
    rows.append((f"synth samples/s at {args.images} images, 2 procs", big["samples_per_s"], big["samples_per_s"], ""))

    root = work / "raw"
    items = len(list_items(root, "agpil"))
    floor_s, raw_bytes = raw_read_floor(root)
    start = time.perf_counter()
    manifest = shard_job(root, "agpil", work / "shards", ShardConfig(samples_per_shard=256))
    ray_s = time.perf_counter() - start
    plain_s = plain_shard(root, work / "plain", 256)
    mb = raw_bytes / 2**20
    rows.append(("shard MB/s: raw-read floor vs Ray Data", mb / floor_s, mb / ray_s, f"{ray_s / floor_s:.1f}x floor"))
    rows.append(("shard samples/s: plain process vs Ray Data", items / plain_s, items / ray_s,
                 f"{plain_s / ray_s:.2f}x plain"))  # fmt: skip

    samples = 1200
    floor = decode_floor(work / "shards", 224, samples, 3)
    floor_rate = samples / floor
    for workers in (0, 1, 2):
        cfg = DataConfig(shards=str(work / "shards"), batch_size=6, num_workers=workers, shuffle_buffer=200)
        seconds, images, rss, pss = loader_rate(cfg, 224)
        rate = images / seconds
        note = f"{100 * rate / floor_rate:.0f}% of floor"
        if workers:
            note += f"; loader process RSS {rss:.0f} MiB, PSS {pss:.0f} MiB"
        rows.append((f"loader img/s (3 pairs), {workers} procs vs decode floor", floor_rate, rate, note))
    rows += verification_rows(work / "shards", 224)

    print(f"dataset: {args.images} train images, {manifest['splits']['test']['samples']} test triplets, "
          f"{manifest['point_bank']['clouds']} train clouds, {mb:.0f} MiB raw\n")  # fmt: skip
    print(f"{'measurement':<52}{'reference':>11}{'ours':>10}  ratio")
    for name, ref, ours, note in rows:
        print(f"{name:<52}{ref:>11.1f}{ours:>10.1f}  {note or f'{ours / ref:.2f}x'}")


if __name__ == "__main__":
    main()
