"""Where a job's outputs go when it runs on a cluster: never into node-local storage by accident.

Without an address a job runs on this machine and `<workdir>/runs`, `sqlite:///<workdir>/mlflow.db` and
`<workdir>/eval/...` are fine defaults. On a cluster (`--address`, `RAY_ADDRESS`, or inside a submitted Ray
job, where Ray sets `RAY_JOB_SUBMISSION_ID` / `RAY_ADDRESS`) a relative workdir resolves inside whatever folder
the process happens to run in (a submitted job's temporary working_dir, a different one on every node): each
node would keep its own part of a ZeRO checkpoint and its own SQLite store. So there an output location must
be given explicitly: a URI (`s3://`, `gs://`, `file:///`), or an absolute path (a shared mount, e.g.
`/mnt/cluster_storage`) as `train.storage_path`, `mlflow.tracking_uri` / `MLFLOW_TRACKING_URI`, `--out`, or an
absolute `workdir` under which all of them default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jobs.entry import UserError


def on_cluster(address: str | None) -> bool:
    """True when the job's Ray is not one this process starts for itself: the one answer to "are we on a cluster"
    (outputs must be shared, GPUs may still come from the autoscaler, a Ray we did not start is not ours to stop)."""
    return bool(address or os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_SUBMISSION_ID"))


def _shared(path: str, uri: bool = True) -> bool:
    """An absolute path (or a URI where one is supported): somewhere the user chose, not wherever the process runs."""
    return (uri and "://" in path) or Path(path).expanduser().is_absolute()


def _defaulted(key: str, default: str, workdir: str, fix: str) -> UserError:
    return UserError(
        f"{key} is not set and defaults to {default} under the relative workdir {workdir!r}, which on a cluster is "
        f"node-local (the job's temporary folder on each node): {fix}"
    )


def check_train_outputs(cfg: Any, address: str | None) -> None:
    """Refuse, before anything starts, a cluster run whose checkpoints or MLflow store would be node-local: every
    such key at once, one line each. `cfg` is the ExperimentConfig as the user gave it (paths not yet absolute)."""
    if on_cluster(address):
        problems = train_output_problems(cfg)
        if problems:
            raise UserError("\n".join(problems))


def train_output_problems(cfg: Any) -> list[str]:
    """What would be node-local if `cfg` trained on a cluster (`lma3d submit` asks before it submits)."""
    problems = []
    storage = cfg.train.storage_path
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if storage and not _shared(storage):
        problems.append(f"train.storage_path {storage!r} is relative: on a cluster give a shared absolute path or URI")
    if uri.startswith("sqlite:///") and not _shared(uri.removeprefix("sqlite:///"), uri=False):
        problems.append(f"mlflow.tracking_uri {uri!r} is a relative SQLite file: on a cluster give a tracking server "
                        "or an absolute path on shared storage (sqlite:////mnt/...)")  # fmt: skip
    if not _shared(cfg.workdir, uri=False):
        if not storage:
            fix = "set train.storage_path to shared storage (s3://..., gs://..., or a path mounted on every node)"
            problems.append(str(_defaulted("train.storage_path", "<workdir>/runs", cfg.workdir, fix)))
        if not uri:
            fix = "set mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to a tracking server or a shared store"
            problems.append(str(_defaulted("mlflow.tracking_uri", "SQLite", cfg.workdir, fix)))
    return problems


def check_eval_outputs(cfg: Any, out: str | None, default_tracking: bool, address: str | None) -> None:
    """The same rule for `lma3d eval`'s result folder and, when it would log to the default SQLite store
    (`default_tracking`: no URI configured and none recorded by the checkpoint), its MLflow store."""
    if not on_cluster(address):
        return
    if out and not _shared(out, uri=False):
        raise UserError(f"--out {out!r} is relative: on a cluster give an absolute path on shared storage")
    if _shared(cfg.workdir, uri=False):
        return
    if not out:
        raise _defaulted("--out", "<workdir>/eval/<name>", cfg.workdir, "pass --out on shared storage")
    if default_tracking:
        fix = "set mlflow.tracking_uri (or MLFLOW_TRACKING_URI), or pass --no-mlflow"
        raise _defaulted("mlflow.tracking_uri", "SQLite", cfg.workdir, fix)


def filesystem(storage_path: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path in it) for a local path or any URI pyarrow knows (s3://, gs://, file://)."""
    import pyarrow.fs

    if "://" in storage_path:
        return pyarrow.fs.FileSystem.from_uri(storage_path)
    return pyarrow.fs.LocalFileSystem(), str(Path(storage_path).resolve())
