"""bench_data.py --s3: the same work from a local S3 endpoint (moto's server on 127.0.0.1, tests/servers.py)
and from local disk, side by side in one run: the shard job writing (in this process, --no-ray, so Ray's start
does not blur the I/O), the train loader reading (0 loader processes; the first epoch includes fetching the
point bank into the node cache), and the eval loader reading + decoding every test sample."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
Row = tuple[str, float, float, str]


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def s3_rows(raw: Path, work: Path, images: int) -> list[Row]:
    sys.path.insert(0, str(ROOT / "tests"))
    from servers import s3_server

    from pipeline.loaders import eval_loader, train_loader
    from pipeline.loaders.config import DataConfig
    from pipeline.shards.config import ShardConfig
    from pipeline.shards.job import run as shard
    from pipeline.storage import Folder

    rows: list[Row] = []
    with s3_server(work / "s3", buckets=("bench",)) as env:
        os.environ.update(env)
        os.environ["LMA3D_CACHE_DIR"] = str(work / "cache")
        local, remote = work / "s3-local-shards", "s3://bench/shards"
        cfg = ShardConfig(samples_per_shard=256)
        disk_s = _timed(lambda: shard(raw, "agpil", local, cfg, use_ray=False))
        s3_s = _timed(lambda: shard(raw, "agpil", remote, cfg, use_ray=False))
        rows.append(("shard job (--no-ray) samples/s: local disk vs S3", images / disk_s, images / s3_s, ""))
        files = [p for p in sorted(local.rglob("*")) if p.is_file()]
        mb = sum(p.stat().st_size for p in files) / 2**20
        copy = Folder("s3://bench/floor")
        floor_s = _timed(lambda: [copy.write_bytes(str(p.relative_to(local)), p.read_bytes()) for p in files])
        rows.append((f"S3 write s: PUT the {mb:.0f} MiB output alone vs the job's time over disk", floor_s,
                     s3_s - disk_s, f"{(s3_s - disk_s) / floor_s:.1f}x the PUTs"))  # fmt: skip
        for name, make in (
            ("train loader img/s (0 procs, 3 pairs): disk vs S3", lambda c: train_loader(c, 224, 0, 1, 0)),
            ("eval loader samples/s (read + decode): disk vs S3", lambda c: eval_loader(c, 224, 0, 1)),
        ):
            rates = []
            for shards in (str(local), remote):
                data = DataConfig(shards=shards, batch_size=6, eval_batch_size=6, num_workers=0, shuffle_buffer=200)
                count = 0
                start = time.perf_counter()
                for batch in make(data):
                    count += len(batch["key"])
                rates.append(count / (time.perf_counter() - start))
            rows.append((name, rates[0], rates[1], f"{100 * rates[1] / rates[0]:.0f}% of disk"))
    return rows
