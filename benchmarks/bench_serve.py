"""Serving throughput: `lma3d serve` (Ray Serve, HTTP, JSON) against the in-process batched predict loop.

    python benchmarks/bench_serve.py                          (demo-size model, 96 requests per row)
    python benchmarks/bench_serve.py --model tiny --requests 8 --clients 1,2     (a quick check that it runs)

Every request is the PIAD fixture (image + 2048 points + instruction). The in-process loop prepares each input
exactly as the server does (jobs/serving/predictor.py) and runs batches of --max-batch-size through one forward;
the served rows send the same requests as JSON over HTTP from C concurrent clients (threads of this process) to
one replica, with batching on (--max-batch-size, each of --batch-wait-ms) and off (batches of 1). One table:
requests/s, p50 / p99 latency per request, the replica's mean batch size, and each row's throughput as a share of
the in-process loop's (the mean of its runs before and after the served rows).
Goal: batched serving at 8 clients >= 80 % of the in-process batched throughput. The clients share the machine's
cores with the replica: run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
PIAD = ROOT / "tests" / "fixtures" / "piad"
IMAGE, POINTS = PIAD / "Img_Test_Bag_lift_1.jpg", PIAD / "Point_Test_Bag_1.txt"
INSTRUCTION = "Lift the bag by its handles."


def export_model(name: str, out: Path) -> Path:
    from jobs.experiment_config import ExperimentConfig
    from jobs.typed_yaml import load
    from model.lmaffordance3d import build_model
    from model.pretrained import save_pretrained

    if name == "demo":
        cfg = load(ExperimentConfig, ROOT / "configs" / "demo.yaml").model
    else:
        from tiny import tiny_model_config

        cfg = tiny_model_config(num_points=2048)
    torch.manual_seed(0)
    save_pretrained(build_model(cfg, pretrained=False), out)
    return out


def request_body() -> bytes:
    xyz = np.loadtxt(POINTS, usecols=(2, 3, 4)).astype(np.float32)
    image = base64.b64encode(IMAGE.read_bytes()).decode()
    return json.dumps({"image": image, "points": xyz.tolist(), "instruction": INSTRUCTION}).encode()


def in_process(model_dir: Path, body: bytes, requests: int, batch: int) -> tuple[float, list[float]]:
    """(requests/s, per-request latencies): parse + prepare + one forward per batch, as a replica does."""
    from jobs.serving.api import parse_json
    from jobs.serving.predictor import Predictor

    predictor = Predictor(str(model_dir), "")
    predictor.run([predictor.prepare(parse_json(body))])  # warm-up
    latencies = []
    started = time.perf_counter()
    for first in range(0, requests, batch):
        t0 = time.perf_counter()
        items = [predictor.prepare(parse_json(body)) for _ in range(min(batch, requests - first))]
        predictor.run(items)
        latencies += [time.perf_counter() - t0] * len(items)
    return requests / (time.perf_counter() - started), latencies


def served(url: str, body: bytes, requests: int, clients: int) -> tuple[float, list[float]]:
    def one(_: int) -> float:
        t0 = time.perf_counter()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            assert response.status == 200
            response.read()
        return time.perf_counter() - t0

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(min(clients, requests))))  # warm-up: connections, first batches
        started = time.perf_counter()
        latencies = list(pool.map(one, range(requests)))
    return requests / (time.perf_counter() - started), latencies


def forwards(url: str) -> int:
    """The replica's forward count so far (GET /healthz)."""
    with urllib.request.urlopen(url + "/healthz", timeout=60) as response:
        return json.loads(response.read())["stats"]["forwards"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("demo", "tiny"), default="demo")
    parser.add_argument("--requests", type=int, default=96, help="requests per row")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", default="10,60", help="batching-on rows, comma-separated (ms)")
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    waits = [float(w) for w in args.batch_wait_ms.split(",")]

    import ray
    from ray import serve

    from jobs.serving.app import application
    from jobs.serving.serve_config import ServeConfig

    torch.set_num_threads(max(1, int(args.replica_cpus)))
    body = request_body()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model_dir = export_model(args.model, Path(tmp) / "model")
        rps, lat = in_process(model_dir, body, args.requests, args.max_batch_size)
        rows.append(("in-process batched loop", "before", rps, lat, args.max_batch_size))
        ray.init(num_cpus=max(2, int(args.replica_cpus) + 1), include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": args.port})
            for wait in [*waits, None]:
                cfg = ServeConfig(
                    port=args.port,
                    max_batch_size=1 if wait is None else args.max_batch_size,
                    batch_wait_ms=wait or 0,
                    max_ongoing_requests=max(64, max(clients)),
                    replica_cpus=args.replica_cpus,
                )
                serve.run(application(str(model_dir), "", cfg), name="bench", route_prefix="/")
                url = f"http://127.0.0.1:{args.port}"
                for c in clients:
                    before = forwards(url)
                    rps, lat = served(url + "/predict", body, args.requests, c)
                    name = "serve, batching off" if wait is None else f"serve, batch wait {wait:g} ms"
                    answered = args.requests + min(c, args.requests)  # with served()'s warm-up
                    rows.append((name, str(c), rps, lat, answered / (forwards(url) - before)))
                serve.delete("bench")
        finally:
            serve.shutdown()
            ray.shutdown()
        rps, lat = in_process(model_dir, body, args.requests, args.max_batch_size)  # the machine may have drifted
        rows.append(("in-process batched loop", "after", rps, lat, args.max_batch_size))
    baseline = (rows[0][2] + rows[-1][2]) / 2

    print(
        f"\nmodel {args.model}, {args.requests} requests per row (PIAD fixture, 2048 points), max batch "
        f"{args.max_batch_size}, {args.replica_cpus:g} CPU per replica"
    )
    print(f"{'path':<28}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}{'vs in-process':>15}")
    for name, c, rps, lat, batch in rows:
        p50, p99 = np.percentile(np.asarray(lat) * 1000, [50, 99])
        print(f"{name:<28}{c:>8}{rps:>9.2f}{p50:>9.1f}{p99:>9.1f}{batch:>7.1f}{rps / baseline:>15.0%}")
    print("goal: serve with batching on at 8 clients >= 80 % of the in-process batched loop")


if __name__ == "__main__":
    main()
