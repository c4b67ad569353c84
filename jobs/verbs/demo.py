"""lma3d demo: the whole pipeline on a synthetic AGPIL-format dataset, on this machine.

    lma3d demo                      (everything under ./work; ~8 min on a 2-core CPU)
    lma3d demo --workdir /tmp/w     (another work dir)
    lma3d demo --fresh              (forget completed stages and start over)

synth -> shard (Ray Data) -> train (Ray Train + DeepSpeed ZeRO-2, 2 CPU workers, MiniLM backbone)
-> eval (Ray Data actor pool; once as is, once with the instructions shuffled across samples)
-> export + register in MLflow -> predict on one synthetic and one real PIAD sample.
Each completed stage is recorded in <workdir>/demo_stages.json: an interrupted demo resumes at the first
stage that did not finish. Local Ray is started once and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from jobs.entry import UserError, entry
from jobs.stages import StageLog
from model.metrics import KEYS

log = logging.getLogger("lma3d.demo")
MODEL_NAME = "lma3d-demo"


def _verb(main: Callable[[list[str]], int], argv: list[str]) -> None:
    code = main(argv)
    if code:
        raise UserError(f"stage command failed (exit {code}): lma3d {main.__module__.split('.')[-1]} {' '.join(argv)}")


def _synthetic_sample(raw: Path) -> dict[str, str]:
    """Image, point file and instruction of the first synthetic test triplet (the predict stage's input)."""
    from pipeline.formats import iter_records

    for record in iter_records(raw, "agpil"):
        if getattr(record, "kind", None) == "triplet":
            image = next(s for s in record.sources if s.lower().endswith((".jpg", ".jpeg", ".png")))
            points = next(s for s in record.sources if s.endswith(".txt"))
            return {"image": image, "points": points, "instruction": record.instruction, "key": record.key}
    raise UserError(f"{raw}: no test triplet to predict on")


def _piad_sample() -> dict[str, str]:
    """The real PIAD sample shipped in tests/fixtures: PIAD has no text, so its reader's template instruction."""
    from jobs.resources import PIAD_SAMPLE, project_file
    from pipeline.formats.piad import instruction

    sample = project_file(PIAD_SAMPLE)
    return {
        "image": str(sample / "Img_Test_Bag_lift_1.jpg"),
        "points": str(sample / "Point_Test_Bag_1.txt"),
        "instruction": instruction("Bag", "lift"),
    }


@entry("demo")
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lma3d demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="work", help="where everything is written (default ./work)")
    parser.add_argument("--config", help="experiment YAML, a file or a shipped config's name (default: demo)")
    parser.add_argument("--train-images", type=int, default=480, help="synthetic train images (default 480)")
    parser.add_argument("--test-samples", type=int, default=120, help="synthetic test triplets (default 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="delete the work dir's previous demo and start over")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=4")
    args = parser.parse_args(argv)
    from jobs.resources import find_config

    args.config = str(find_config(args.config or "demo").resolve())
    work = Path(args.workdir).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    raw, shards, model_dir = work / "raw" / "Full_view" / "Seen", work / "shards" / "demo", work / "model"
    overrides = [f"workdir={work}", f"data.shards={shards}", *args.overrides]
    stages = StageLog(work / "demo_stages.json")

    import ray

    from jobs.verbs import eval as eval_verb
    from jobs.verbs import export, predict, shard, synth
    from pipeline.ray_session import ensure_ray

    started = time.perf_counter()
    started_ray = ensure_ray()  # one local Ray for every stage; worker logs stream to this terminal
    try:
        stages.run("synth", lambda: _verb(synth.main, [
            "--out", str(raw), "--view", "full", "--setting", "seen", "--seed", str(args.seed),
            "--train-images", str(args.train_images), "--test-samples", str(args.test_samples), "--overwrite",
        ]))  # fmt: skip
        stages.run("shard", lambda: _verb(shard.main, [
            "--source", str(raw), "--format", "agpil", "--out", str(shards), "--overwrite",
            "--samples-per-shard", str(max(1, args.train_images // 8)),
        ]))  # fmt: skip
        trained = stages.run("train", lambda: _train(args.config, overrides))
        checkpoint = trained["best_checkpoint"] or trained["latest_checkpoint"]
        for stage, out, shuffle in (("eval", "eval", False), ("eval_shuffled", "eval-shuffled", True)):
            argv = ["--checkpoint", checkpoint, "--shards", str(shards), "--out", str(work / out)]
            argv += ["--config", args.config, *overrides] + (["--shuffle-instructions"] if shuffle else [])
            stages.run(stage, lambda argv=argv: _eval(eval_verb, argv))
        stages.run("export", lambda: _verb(export.main, [
            "--checkpoint", checkpoint, "--out", str(model_dir), "--register", MODEL_NAME, "--alias", "champion",
            "--config", args.config, *overrides,
        ]))  # fmt: skip
        stages.run("predict", lambda: _predict(predict, work, raw))
    finally:
        if started_ray:
            ray.shutdown()
    _report(work, stages, time.perf_counter() - started)
    return 0


def _train(config: str, overrides: list[str]) -> dict:
    from jobs.experiment_config import ExperimentConfig
    from jobs.run_folder import RunFolder
    from jobs.training.launcher import launch
    from jobs.typed_yaml import load

    cfg = load(ExperimentConfig, config, overrides)
    exists, checkpoints = RunFolder(cfg.storage_path, "demo").registered()
    # An interrupted train stage resumes from its last checkpoint; one killed before any is started over.
    summary = launch(cfg, run_name="demo", overwrite=exists and not checkpoints)
    print(summary.report())
    return {
        "run_id": summary.run_id,
        "best_checkpoint": summary.best_checkpoint,
        "latest_checkpoint": summary.latest_checkpoint,
        "steps": summary.last_step,
        "best": {k: v for k, v in summary.best_metrics.items() if k.startswith("val/")},
    }


def _eval(eval_verb, argv: list[str]) -> dict:
    _verb(eval_verb.main, argv)
    metrics = json.loads((Path(argv[argv.index("--out") + 1]) / "metrics.json").read_text())
    return {k: metrics[k] for k in (*KEYS, "n")}


def _predict(predict, work: Path, raw: Path) -> dict:
    outputs = {}
    for name, sample in (("synthetic", _synthetic_sample(raw)), ("piad", _piad_sample())):
        out = work / "predict" / name
        _verb(predict.main, [
            "--model", str(work / "model"), "--image", sample["image"], "--points", sample["points"],
            "--instruction", sample["instruction"], "--out", str(out),
        ])  # fmt: skip
        outputs[name] = str(out)
    return outputs


def _report(work: Path, stages: StageLog, seconds: float) -> None:
    done = stages.done
    test, shuffled = done["eval"], done["eval_shuffled"]
    lines = [
        "",
        "LMAffordance3D demo: synthetic AGPIL Full_view / Seen",
        f"{'':<28}{'AUC %':>8}{'aIOU %':>8}{'SIM':>8}{'MAE':>8}{'n':>6}",
    ]
    for label, m in (("test", test), ("test, instructions shuffled", shuffled)):
        lines.append(
            f"{label:<28}{100 * m['auc']:>8.2f}{100 * m['aiou']:>8.2f}{m['sim']:>8.3f}{m['mae']:>8.3f}{m['n']:>6}"
        )
    change = 100 * (shuffled["auc"] - test["auc"])
    lines.append(f"instructions shuffled across samples: AUC {change:+.2f} points")
    lines.append("")
    lines.append("stage          seconds")
    lines += [f"{name:<15}{info['seconds']:>7.1f}" for name, info in done.items()]
    lines.append(f"{'total (this run)':<15}{seconds:>7.1f}")
    lines += [
        "",
        f"raw data:     {work / 'raw'}",
        f"shards:       {work / 'shards' / 'demo'}",
        f"checkpoints:  {work / 'runs' / 'demo'}",
        f"evaluation:   {work / 'eval'} (metrics.json, per_class.csv, viz/)",
        f"model:        {work / 'model'} (registered as models:/{MODEL_NAME}@champion)",
        f"predictions:  {work / 'predict'}",
        f"browse:       mlflow ui --backend-store-uri sqlite:///{work / 'mlflow.db'}",
    ]
    from jobs.tracking import run_page

    page = run_page(f"sqlite:///{work / 'mlflow.db'}", done.get("train", {}).get("run_id"))
    if page:
        lines.append(f"then open:    {page}")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
