"""The demo's training precision, chosen by measurement: `train.precision` bf16 (the whole module cast) vs
bf16-autocast (fp32 weights and BatchNorm, bf16 matmuls) and optionally fp32, each training the demo recipe
(configs/demo.yaml: Ray Train, 2 CPU workers, DeepSpeed ZeRO-2) on the same synthetic shards, then evaluated on the
same test split under the precision its checkpoint records.

    python benchmarks/bench_precision.py [--workdir work/bench-precision] [--precisions bf16 bf16-autocast fp32]
        [--train-images 480] [--test-samples 120] [KEY=VALUE ...]

Step time is the steady state: seconds between the first and last logged `train/loss` (MLflow timestamps) per
step in between, so worker start-up and DeepSpeed's op build are left out; validation and checkpoints inside that
span count for every precision alike. The precisions run one after the other (not alternating: each is a whole
training run), so run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_shards(work: Path, train_images: int, test_samples: int) -> Path:
    """The demo's synthetic dataset and shards (the same arguments `lma3d demo` passes), built once."""
    from jobs.verbs import shard, synth

    raw, shards = work / "raw" / "Full_view" / "Seen", work / "shards"
    if not (shards / "manifest.json").exists():
        synth.main(["--out", str(raw), "--view", "full", "--setting", "seen", "--seed", "0", "--overwrite",
                    "--train-images", str(train_images), "--test-samples", str(test_samples)])  # fmt: skip
        shard.main(["--source", str(raw), "--format", "agpil", "--out", str(shards), "--overwrite",
                    "--samples-per-shard", str(max(1, train_images // 8))])  # fmt: skip
    return shards


def steady_step_seconds(tracking_uri: str, run_id: str) -> float:
    from mlflow.tracking import MlflowClient

    history = sorted(MlflowClient(tracking_uri).get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    if len(history) < 2:
        raise SystemExit(f"run {run_id}: fewer than 2 logged train/loss values; train longer (train.log_every)")
    first, last = history[0], history[-1]
    return (last.timestamp - first.timestamp) / 1000 / (last.step - first.step)


def train_and_evaluate(precision: str, work: Path, shards: Path, overrides: list[str]) -> dict[str, float]:
    from jobs.experiment_config import ExperimentConfig
    from jobs.training.launcher import launch
    from jobs.typed_yaml import load
    from jobs.verbs import eval as eval_verb

    config = str(ROOT / "configs" / "demo.yaml")
    common = [f"workdir={work}", f"data.shards={shards}", *overrides]
    cfg = load(ExperimentConfig, config, [*common, f"train.precision={precision}"])
    start = time.perf_counter()
    summary = launch(cfg, run_name=f"precision-{precision}", overwrite=True)
    train_s = time.perf_counter() - start
    out = work / f"eval-{precision}"
    checkpoint = summary.best_checkpoint or summary.latest_checkpoint
    code = eval_verb.main(["--checkpoint", checkpoint, "--shards", str(shards), "--out", str(out),
                           "--config", config, *common])  # fmt: skip
    if code:
        raise SystemExit(f"eval of {checkpoint} failed with exit code {code}")
    metrics = json.loads((out / "metrics.json").read_text())
    step_s = steady_step_seconds(cfg.tracking_uri, summary.run_id)
    return {"step_s": step_s, "train_s": train_s, "steps": summary.last_step, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="work/bench-precision")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "bf16-autocast"])
    parser.add_argument("--train-images", type=int, default=480)
    parser.add_argument("--test-samples", type=int, default=120)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="demo config overrides")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    from pipeline.ray_session import ensure_ray

    ensure_ray()
    shards = make_shards(work, args.train_images, args.test_samples)
    results = {p: train_and_evaluate(p, work, shards, args.overrides) for p in args.precisions}
    base = results[args.precisions[0]]["step_s"]
    print(f"\ndemo recipe, {args.train_images} train images, {args.test_samples} test samples; step ratio vs "
          f"{args.precisions[0]}")  # fmt: skip
    print(f"{'train.precision':<16}{'s/step':>8}{'ratio':>8}{'steps':>7}{'train s':>9}"
          f"{'AUC':>8}{'aIOU':>8}{'SIM':>8}{'MAE':>8}")  # fmt: skip
    for precision, r in results.items():
        print(f"{precision:<16}{r['step_s']:>8.3f}{base / r['step_s']:>7.2f}x{r['steps']:>7}{r['train_s']:>9.0f}"
              f"{r['auc']:>8.4f}{r['aiou']:>8.4f}{r['sim']:>8.4f}{r['mae']:>8.4f}")  # fmt: skip
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
