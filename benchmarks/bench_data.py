"""Data pipeline throughput, measured side by side in one run on a synthetic AGPIL dataset.

    python benchmarks/bench_data.py [--images 5000] [--workdir /tmp/lma3d-bench-data] [--cpus 2] [--nodes 2]
                                    [--shard-only] [--s3 | --s3-only] [--scale]

1. synth: generation speed with 1 and 2 processes.
2. shard: the Ray Data job vs the same parse-and-write in one plain Python process vs the floor of reading
   every raw byte once. The job three ways: as `lma3d shard` runs it (it starts a local Ray on every CPU of
   the machine: timed with the start), submitted to a Ray already running with `--cpus` CPUs (its workers
   start for it, as for any new driver), and run again in that driver (workers warm: the per-record cost).
   Beside them, Ray's fixed cost with no work (start, Ray Data's first run, shutdown) against the plain job's s.
   And the job with --no-ray: its parts in the driver, one after the other, plus its point bank and manifest.
   `--nodes 2`: the job on a local two-node cluster (tests/ray_cluster.py: a head and a second raylet on
   127.0.0.1, token auth, 1 CPU each), with the head alone and then with both nodes: samples/s and scaling.
3. loader: train batches (3 point clouds per image) with 0/1/2 loader processes vs a tight loop that only
   decodes the same JPEGs and reads the same point arrays; peak RSS and PSS of a loader process.
4. verification: reading every train shard with and without the sha256 / count / value checks, and the train
   loader (1 process) with and without them (without = the same tar parse, no hashing, no checks, no bank hash);
   the goal is <= 5 % of loader throughput.
5. `--s3`: the shard job, the train loader and the eval loader against a local S3 endpoint vs local disk
   (benchmarks/bench_data_s3.py).
6. `--scale` (alone): the shard job, the train loader and `lma3d eval` at 2,000 / 20,000 / 100,000 images
   (benchmarks/bench_data_scale.py).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import sys
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

ROOT = Path(__file__).resolve().parent.parent
PER_SHARD = 256
Row = tuple[str, float, float, str]


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


def shard_rows(root: Path, work: Path, items: int, cpus: int) -> tuple[float, dict, list[Row]]:
    """The Ray Data job against one plain process: started by the job, on a running Ray, and warm; (seconds of
    the first, its manifest, the rows). Writes work/shards."""
    import ray

    plain_s = plain_shard(root, work / "plain", PER_SHARD)
    rate = items / plain_s
    start = time.perf_counter()
    shard_job(root, "agpil", work / "shards-here", ShardConfig(samples_per_shard=PER_SHARD), use_ray=False)
    here_s = time.perf_counter() - start
    start = time.perf_counter()
    manifest = shard_job(root, "agpil", work / "shards", ShardConfig(samples_per_shard=PER_SHARD))
    cold_s = time.perf_counter() - start
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        timed = []
        for _ in range(2):  # the first run starts this driver's workers; the second finds them warm
            start = time.perf_counter()
            shard_job(root, "agpil", work / "shards-again", ShardConfig(samples_per_shard=PER_SHARD), overwrite=True)
            timed.append(time.perf_counter() - start)
    finally:
        ray.shutdown()
    machine = os.cpu_count()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        fixed = pool.apply(_ray_fixed_cost)
    return (
        cold_s,
        manifest,
        [
            (
                "shard s: plain job vs Ray's fixed cost alone (no work)",
                plain_s,
                sum(fixed.values()),
                " + ".join(f"{name} {seconds:.2f}" for name, seconds in fixed.items()),
            ),
            ("shard samples/s: plain vs job --no-ray (+bank, manifest)", rate, items / here_s, ""),
            (f"shard samples/s: plain vs job incl. Ray start ({machine} CPUs)", rate, items / cold_s, ""),
            (f"shard samples/s: plain vs job on a running Ray ({cpus} CPUs)", rate, items / timed[0], ""),
            (f"shard samples/s: plain vs job, again, warm ({cpus} CPUs)", rate, items / timed[1], ""),
        ],
    )


def _ray_fixed_cost() -> dict[str, float]:
    """Seconds of what the job with its own Ray pays around its work, without any work (run in a fresh process):
    a local Ray started as the job starts it, importing Ray Data and a first 4-row map on every CPU (its stats
    actor and workers start), ray.shutdown()."""
    import ray

    from pipeline.ray_session import ensure_ray

    phases, start = {}, time.perf_counter()
    ensure_ray(dashboard=False)
    phases["Ray start"], start = time.perf_counter() - start, time.perf_counter()
    import ray.data

    cpus = int(ray.cluster_resources()["CPU"])
    rows = ray.data.from_items([{"i": i} for i in range(4)], override_num_blocks=4)
    rows.map(lambda row: row, compute=ray.data.TaskPoolStrategy(size=cpus)).take_all()
    phases["first Ray Data run"], start = time.perf_counter() - start, time.perf_counter()
    ray.shutdown()
    phases["shutdown"] = time.perf_counter() - start
    return phases


def _timed_job(root: str, out: str, address: str) -> float:
    """Seconds of one shard job joining `address` (run in a fresh process: a new driver, as a submission is)."""
    start = time.perf_counter()
    shard_job(root, "agpil", out, ShardConfig(samples_per_shard=PER_SHARD), address=address, overwrite=True)
    return time.perf_counter() - start


def node_scaling_rows(root: Path, work: Path, items: int, nodes: int) -> list[Row]:
    """The job on a head with 1 CPU, then with `nodes - 1` more 1-CPU raylets joined (all on 127.0.0.1)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from ray_cluster import LocalRayCluster

    cluster = LocalRayCluster(work / "cluster", num_cpus=1, env={"PYTHONPATH": str(ROOT)})
    saved = dict(os.environ)
    os.environ.update(cluster.client_env())  # the drivers (spawned below) talk to the cluster with its token
    os.environ.pop("RAY_ADDRESS", None)
    rates = {}
    try:
        cluster.start()
        for count in range(1, nodes + 1):
            if count > 1:
                cluster.add_node(f"node{count}", num_cpus=1)
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                seconds = pool.apply(_timed_job, (str(root), str(work / f"shards-{count}-nodes"), cluster.gcs_address))
            rates[count] = items / seconds
    finally:
        cluster.stop()
        os.environ.clear()
        os.environ.update(saved)
    return [(f"shard samples/s: 1 node vs {nodes} nodes, 1 CPU each", rates[1], rates[nodes], "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--workdir", default="/tmp/lma3d-bench-data")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the running Ray the job is submitted to")
    parser.add_argument("--nodes", type=int, default=1, help="2 or more: also the job on a local multi-node cluster")
    parser.add_argument("--shard-only", action="store_true", help="only the dataset and the shard rows")
    parser.add_argument("--s3", action="store_true", help="also: from a local S3 endpoint vs local disk")
    parser.add_argument("--s3-only", action="store_true", help="only the dataset and the S3 rows")
    parser.add_argument("--scale", action="store_true", help="only: cost vs dataset size (bench_data_scale.py)")
    parser.add_argument("--scale-sizes", default="2000,20000,100000", help="train images per --scale step")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    if args.scale:
        from bench_data_scale import scale_rows

        print_rows(scale_rows(work, [int(n) for n in args.scale_sizes.split(",")]))
        return

    if not args.shard_only:
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
    if args.s3_only:
        from bench_data_s3 import s3_rows

        print_rows(s3_rows(root, work, items))
        return
    floor_s, raw_bytes = raw_read_floor(root)
    ray_s, manifest, job_rows = shard_rows(root, work, items, args.cpus)
    mb = raw_bytes / 2**20
    rows.append(("shard MB/s: raw-read floor vs job incl. Ray start", mb / floor_s, mb / ray_s,
                 f"{ray_s / floor_s:.1f}x floor"))  # fmt: skip
    rows += job_rows
    if args.nodes > 1:
        rows += node_scaling_rows(root, work, items, args.nodes)

    if not args.shard_only:
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
    if args.s3:
        from bench_data_s3 import s3_rows

        rows += s3_rows(root, work, items)

    print(f"dataset: {args.images} train images, {manifest['splits']['test']['samples']} test triplets, "
          f"{manifest['point_bank']['clouds']} train clouds, {items} raw items, {mb:.0f} MiB raw\n")  # fmt: skip
    print_rows(rows)


def print_rows(rows: list[Row]) -> None:
    print(f"{'measurement':<60}{'reference':>11}{'ours':>10}  ratio")
    for name, ref, ours, note in rows:
        print(f"{name:<60}{ref:>11.1f}{ours:>10.1f}  {note or f'{ours / ref:.2f}x'}")


if __name__ == "__main__":
    main()
