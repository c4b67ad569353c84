"""`lma3d <verb> [args]`: one CLI; each verb is also `python -m jobs.verbs.<verb>`."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys

VERBS: dict[str, str] = {
    "synth": "generate a synthetic AGPIL-format dataset",
    "inspect": "print a raw dataset's or a shard folder's statistics",
    "shard": "Ray Data job: raw dataset -> WebDataset shards + point bank",
    "metrics": "AUC / aIOU / SIM / MAE of prediction and GT arrays",
    "train": "Ray Train + DeepSpeed ZeRO training with MLflow tracking",
    "eval": "Ray Data distributed evaluation of a checkpoint or model",
    "export": "consolidate a checkpoint into model.safetensors (+ MLflow registry)",
    "predict": "heat map for an image + point cloud + instruction",
    "serve": "Ray Serve HTTP endpoint + 3D page over a model (batched)",
    "sweep": "Ray Tune over training: a child MLflow run per trial, best.json",
    "demo": "the whole pipeline on a synthetic dataset, on this machine",
    "submit": "submit any verb to a Ray cluster as a Ray job",
}


def version() -> str:
    try:
        return importlib.metadata.version("lmaffordance3d")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "--version":
            print(f"lma3d {version()}")
            return 0
        available = {v: h for v, h in VERBS.items() if importlib.util.find_spec(f"jobs.verbs.{v}") is not None}
        if not argv or argv[0] in ("-h", "--help"):
            lines = ["usage: lma3d [--version] <verb> [options]   (lma3d <verb> --help for a verb's options)", "",
                     "verbs:", *(f"  {v:<9} {h}" for v, h in available.items())]  # fmt: skip
            print("\n".join(lines))
            return 0 if argv else 2
        verb, rest = argv[0], argv[1:]
        if verb not in available:
            print(f"lma3d: unknown verb {verb!r}; choose from: {', '.join(available)}", file=sys.stderr)
            return 2
        return importlib.import_module(f"jobs.verbs.{verb}").main(rest)
    except BrokenPipeError:
        # `lma3d --help | head`: the reader left; point stdout at devnull so the interpreter's final flush
        # does not raise again, and exit quietly as coreutils do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
