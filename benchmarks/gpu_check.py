"""The device check: is the model correct on this GPU, and how fast is the paper-size training step here?

    python benchmarks/gpu_check.py [--out gpu_check.json] [--budget 480] [--only SECTION ...]

One process, needing only torch, transformers (+ its tokenizers), numpy and the project's `model/` (no Ray,
DeepSpeed, MLflow or WebDataset, no network, no files beyond the repository: docs/training.md, "Checking a GPU").
Sections, in order, each guarded (an error is recorded and the next section runs) and all within `--budget`
seconds (sections not started by then are skipped, and say so):

  forward      the forward, eval and training mode, on the device vs the same weights on the CPU in fp64
  fps          `fps_impl: compiled` returns the loop's indices
  training     a few optimizer steps lower the loss on a fixed batch
  paper_step   the paper-size training step (224 px, paper PointNet++, 6 images x 3 clouds, per-cloud BatchNorm)
               with a LLaMA-7B-shaped frozen fp16 backbone (random weights, built on the meta device) under fp16
               and bf16 autocast: s/step, samples/s, peak memory, FLOPs and MFU
  reference    the same step with the `tiny` backbone geometry, ours vs the original's (reference_original.py)
  point_ops    FPS, ball query, 3-NN at the model's level sizes: ours vs the original's
  eval         eval forward throughput at batch 1, 8, 32

With CUDA every size is the paper's. Without it the same sections run on the CPU at the tests' tiny sizes, the
backbone a 1-layer LLaMA with the 7B widths divided by 16 (`--llama-layers`, `--llama-width-divisor`), in under
a minute: CI runs it (tests/test_gpu_check.py), so the GPU run does not rot. Exit code 1 if a check failed or a
section raised.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts from here: imports of torch and transformers take seconds

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # benchmark helpers, and the repository's `model` package

import torch  # noqa: E402
from gpu_check_common import BudgetSpent, Context, Device, Row, Sizes  # noqa: E402
from gpu_check_correctness import TOLERANCES, forward_section, fps_section, training_section  # noqa: E402
from gpu_check_speed import (  # noqa: E402
    FLOPS_NOTE,
    eval_section,
    paper_step_section,
    point_ops_section,
    reference_section,
)

SECTIONS = {
    "forward": forward_section,
    "fps": fps_section,
    "training": training_section,
    "paper_step": paper_step_section,
    "reference": reference_section,
    "point_ops": point_ops_section,
    "eval": eval_section,
}


def run_section(name: str, ctx: Context, report: dict) -> None:
    """Run one section into report["sections"][name]: its rows, status (ok, failed, error, skipped) and time."""
    rows: list[Row] = []
    entry: dict = {"status": "ok"}
    start = time.perf_counter()
    try:
        ctx.check_budget(f"section {name}")
        SECTIONS[name](ctx, rows)
    except BudgetSpent as spent:
        entry["status"] = "skipped" if not rows else "partly skipped"
        entry["note"] = str(spent)
    except Exception as error:  # one failing section must not stop the others: recorded, reported, exit code 1
        entry["status"] = "error"
        entry["error"] = f"{type(error).__name__}: {error}"
        entry["traceback"] = traceback.format_exc(limit=8)
    if entry["status"] == "error":  # out of the except block, so its traceback and the frames it holds are gone
        gc.collect()  # and with them what the failed section held on the device (an out-of-memory error's tensors)
        ctx.device.free()
    if entry["status"] == "ok" and any(row.passed is False for row in rows):
        entry["status"] = "failed"
    entry["seconds"] = round(time.perf_counter() - start, 2)
    entry["rows"] = [row.to_json() for row in rows]
    report["sections"][name] = entry
    _print_section(name, entry)


def _print_section(name: str, entry: dict) -> None:
    status = entry["status"]
    print(f"\n[{name}] {status} ({entry['seconds']:.1f} s)", flush=True)
    for row in entry["rows"]:
        mark = {True: "PASS", False: "FAIL", None: "    "}[row["passed"]]
        print(f"  {mark}  {row['name']:<66} {row['text']}", flush=True)
    for key in ("note", "error"):
        if key in entry:
            print(f"  {key}: {entry[key]}", flush=True)
    if "traceback" in entry:
        print("  " + entry["traceback"].strip().replace("\n", "\n  "), flush=True)


def _versions() -> dict:
    import numpy
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "numpy": numpy.__version__}  # fmt: skip
    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
    return versions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="JSON report path (default gpu_check.json)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds; later sections are skipped (480)")
    parser.add_argument("--only", action="append", choices=list(SECTIONS), help="run only these (repeatable)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--llama-layers", type=int, default=None,
                        help="layers of the 7B-shaped backbone (default: 32 with CUDA, 1 on the CPU)")  # fmt: skip
    parser.add_argument(
        "--llama-width-divisor",
        type=int,
        default=None,
        help="divide the 7B widths and heads by this (default: 1 with CUDA, 16 on the CPU)",
    )
    parser.add_argument("--sizes", choices=("paper", "tiny"), default=None,
                        help="force the sizes (default: paper with CUDA, tiny without)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 for the tiny CPU run)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.budget <= 0 or (args.llama_layers is not None and args.llama_layers < 1):
        parser.error("--budget and --llama-layers must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    started = STARTED if argv is None else time.monotonic()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = Device(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    if (args.sizes or ("paper" if device.cuda else "tiny")) == "paper":
        sizes = Sizes.paper(args.llama_layers, args.llama_width_divisor or 1)
    else:
        sizes = Sizes.tiny(args.llama_layers, args.llama_width_divisor or 16)
    if args.threads is None and sizes.label == "tiny" and not device.cuda:
        torch.set_num_threads(1)  # tiny tensors: more OpenMP threads only spin against each other and neighbours
    ctx = Context(device, sizes, deadline=started + args.budget)
    report = {"device": device.name, "cuda": device.cuda, "sizes": sizes.label, "llama": sizes.llama.describe(),
              "versions": _versions(), "budget_s": args.budget, "flops_note": FLOPS_NOTE,
              "tolerances": {"probabilities_max_abs_vs_cpu_fp64": TOLERANCES}, "sections": {}}  # fmt: skip
    print(f"gpu_check: {device.name}, {sizes.label} sizes, {sizes.llama.describe()}")
    print(f"versions: {report['versions']}; budget {args.budget:.0f} s")
    print(f"forward tolerances (max |p - p_ref| vs the CPU in fp64, per precision and mode): {TOLERANCES}")
    if not device.cuda:
        print("no CUDA: every section at tiny sizes on the CPU, a smoke run (its timings mean nothing); GPU-only "
              "figures say 'skipped: no CUDA'")  # fmt: skip
    for name in SECTIONS:
        if args.only is None or name in args.only:
            run_section(name, ctx, report)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    statuses = [entry["status"] for entry in report["sections"].values()]
    report["passed"] = not any(status in ("failed", "error") for status in statuses)
    print(f"\n{FLOPS_NOTE}")
    print(f"elapsed {report['elapsed_s']} s; sections: " +
          ", ".join(f"{n} {e['status']}" for n, e in report["sections"].items()))  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"{'all checks passed' if report['passed'] else 'SOME CHECKS FAILED OR RAISED'}; wrote {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
