"""bench_data.py --scale: how the data path's cost grows with the dataset, at 2,000, 20,000 and 100,000 train
images (`--scale-sizes`), test samples a tenth of that, synthetic AGPIL at the default 224 px and 2048 points.

Per size, each step runs in a process of its own so that its peak RSS is its own:
- shard: `lma3d shard --no-ray` (the job's parse-and-write with its point bank and manifest in one process, so
  driver = worker); samples/s, peak RSS, manifest.json + sizes.json bytes;
- train loader: 1 loader process, the time to the first batch (the point bank's verification and the shard
  listing included), images/s over the first 600 images, peak RSS of the main and the loader process;
- `lma3d eval` of a tiny exported model (1 Ray Data actor, no MLflow): ms per test sample while the actor pool
  is busy (Ray's start and the model load excluded; the whole job's seconds beside), peak RSS (VmHWM) of the
  driver and of the model actor.
Goal: time per sample within 20 % from the smallest to the largest size; peak RSS flat but for an index of the
items (keys and counts: the manifest in memory).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
Row = tuple[str, float, float, str]

SHARD = """
import json, sys, time
from pipeline.shards.config import ShardConfig
from pipeline.shards.job import run
start = time.perf_counter()
manifest = run(sys.argv[1], "agpil", sys.argv[2], ShardConfig(), use_ray=False)
print(json.dumps({"seconds": time.perf_counter() - start, "samples": manifest["written"],
                  "rss_mib": hwm()}))
"""
LOADER = """
import json, sys, time
import psutil
from pipeline.loaders import train_loader
from pipeline.loaders.config import DataConfig
passes = []
for _ in range(2):  # the second pass reads what the first left in the page cache: same seed, same shards
    start = time.perf_counter()
    loader = iter(train_loader(DataConfig(shards=sys.argv[1], batch_size=6, num_workers=1), 224, 0, 1, 0))
    first = next(loader)
    first_s, images, worker = time.perf_counter() - start, len(first["key"]), 0.0
    begun = time.perf_counter()
    for batch in loader:
        images += len(batch["key"])
        worker = max([worker] + [c.memory_info().rss / 2**20 for c in psutil.Process().children(recursive=True)])
        if images >= 600:
            break
    rate = (images - len(first["key"])) / (time.perf_counter() - begun)
    passes.append({"first_batch_s": first_s, "images_per_s": rate, "worker_rss_mib": worker})
    del loader
print(json.dumps({**passes[0], "warm": passes[1], "rss_mib": hwm()}))
"""
EVAL = """
import json, sys, threading, time
import psutil
from jobs.evaluation.job import evaluate
from jobs.experiment_config import ExperimentConfig
from jobs.typed_yaml import load
peak = {"actor": 0.0, "actor_uss": 0.0, "uss": 0.0}
def sample():  # RSS counts the object store's shared pages a process has touched; USS is its private memory
    while True:
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any("Predictor" in part for part in p.info["cmdline"] or []):
                    peak["actor"] = max(peak["actor"], p.memory_info().rss / 2**20)
                    peak["actor_uss"] = max(peak["actor_uss"], p.memory_full_info().uss / 2**20)
            except psutil.Error:
                pass
        peak["uss"] = max(peak["uss"], psutil.Process().memory_full_info().uss / 2**20)
        time.sleep(0.5)
threading.Thread(target=sample, daemon=True).start()
cfg = load(ExperimentConfig, None, ["eval.num_actors=1", "eval.batch_size=8", "eval.viz_samples=0",
                                    "workdir=" + sys.argv[4]])
start = time.perf_counter()
report = evaluate(cfg, sys.argv[1], shards=sys.argv[2], out=sys.argv[3], track=False)
print(json.dumps({"seconds": time.perf_counter() - start, "timings": report.result.timings,
                  "actor_rss_mib": peak["actor"], "actor_uss_mib": peak["actor_uss"], "rss_mib": hwm(),
                  "uss_mib": peak["uss"]}))
"""
HWM = """
def hwm():  # this process's peak RSS (ru_maxrss would include the forking parent's: Linux keeps it over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""


def _child(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", HWM + code, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tiny_model(out: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_model_config

    from model.lmaffordance3d import build_model
    from model.pretrained import save_pretrained

    save_pretrained(build_model(tiny_model_config(num_points=2048)), out, precision="fp32")
    return out


def scale_rows(work: Path, sizes: list[int]) -> list[Row]:
    from pipeline.synth.config import SynthConfig
    from pipeline.synth.generate import generate

    model = _tiny_model(work / "scale-model")
    measured = {}
    for n in sizes:
        raw, shards = work / f"scale-raw-{n}", work / f"scale-shards-{n}"
        generate(SynthConfig(out=str(raw), train_images=n, test_samples=max(1, n // 10)), workers=2)
        shard = _child(SHARD, str(raw), str(shards))
        manifest_kib = sum((shards / f).stat().st_size for f in ("manifest.json", "sizes.json")) / 1024
        loader = _child(LOADER, str(shards))
        evaluated = _child(EVAL, str(model), str(shards), str(work / f"scale-eval-{n}"), str(work))
        measured[n] = {"shard": shard, "manifest_kib": manifest_kib, "loader": loader, "eval": evaluated,
                       "test": max(1, n // 10)}  # fmt: skip
        print(f"scale {n}: {json.dumps(measured[n])}", flush=True)
    rows: list[Row] = []
    small, large = measured[sizes[0]], measured[sizes[-1]]
    sl = f"{sizes[0]} vs {sizes[-1]} images"

    def per_sample(m: dict) -> float:
        return 1000 * m["shard"]["seconds"] / m["shard"]["samples"]

    rows.append((f"shard ms/sample ({sl})", per_sample(small), per_sample(large), ""))
    rows.append((f"shard peak RSS MiB ({sl})", small["shard"]["rss_mib"], large["shard"]["rss_mib"], ""))
    rows.append((f"manifest + sizes KiB ({sl})", small["manifest_kib"], large["manifest_kib"], ""))
    rows.append((f"loader img/s, 1 proc ({sl})", small["loader"]["images_per_s"], large["loader"]["images_per_s"],
                 ""))  # fmt: skip
    rows.append((f"loader img/s, 1 proc, second pass ({sl})", small["loader"]["warm"]["images_per_s"],
                 large["loader"]["warm"]["images_per_s"], "page cache warm"))  # fmt: skip
    rows.append((f"loader time to first batch s ({sl})", small["loader"]["first_batch_s"],
                 large["loader"]["first_batch_s"], ""))  # fmt: skip
    workers = f"worker {small['loader']['worker_rss_mib']:.0f} -> {large['loader']['worker_rss_mib']:.0f}"
    rows.append((f"loader main / worker peak RSS MiB ({sl})", small["loader"]["rss_mib"], large["loader"]["rss_mib"],
                 workers))  # fmt: skip
    busy = [1000 * m["eval"]["timings"]["pool_busy_s"] / m["test"] for m in (small, large)]
    rows.append((f"lma3d eval ms/test sample, steady state ({sl})", busy[0], busy[1],
                 f"whole job {small['eval']['seconds']:.0f} s -> {large['eval']['seconds']:.0f} s"))  # fmt: skip
    rows.append((f"lma3d eval driver peak RSS MiB ({sl})", small["eval"]["rss_mib"], large["eval"]["rss_mib"],
                 f"actor {small['eval']['actor_rss_mib']:.0f} -> {large['eval']['actor_rss_mib']:.0f}"))  # fmt: skip
    rows.append((f"lma3d eval driver peak USS MiB ({sl})", small["eval"]["uss_mib"], large["eval"]["uss_mib"],
                 f"actor {small['eval']['actor_uss_mib']:.0f} -> {large['eval']['actor_uss_mib']:.0f}"))  # fmt: skip
    return rows
