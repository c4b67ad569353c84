"""What names a checkpoint and what its lma3d_meta.json must hold: the facts every stage reads (training writes
and resumes checkpoints, eval / export / serving load them, sweeps rank them), with the one reader of the meta
file. Writing checkpoints is jobs/training/checkpoint.py."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from jobs.bounded import META_MAX_BYTES, ReadRefused, read_text, short
from jobs.consolidate import TAG, BadCheckpoint

META_FILE = "lma3d_meta.json"
META_FORMAT = "lma3d-deepspeed-v1"
CHECKPOINT_TAG_PREFIX = "checkpoint/"
SCORE_KEY = "val/auc"
"""The metric Ray keeps the best checkpoints by, reported with every checkpoint."""
UNVALIDATED_SCORE = -1.0
"""`val/auc` reported with a checkpoint that had no validation: below every AUC, so Ray's best-k drops it
first. Not NaN: Ray 2.60 writes NaN to its run snapshot as null and its controller then crashes on resume
(`float * None` in _get_checkpoint_score)."""


def validated_score(value: Any) -> float | None:
    """A checkpoint's reported SCORE_KEY as an AUC, or None when it had no validation (UNVALIDATED_SCORE, NaN or
    nothing reported): the one reading of it, for ranking, MLflow tags and linked metrics, sweeps and summaries."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value) if 0.0 <= value <= 1.0 else None


def tag_for(step: int) -> str:
    return f"global_step{step}"


def dir_name_for(step: int) -> str:
    """Ray checkpoint folder name: sortable and the same on every rank."""
    return f"checkpoint_step{step:09d}"


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The checked lma3d_meta.json of a local checkpoint folder: the one reader of it (export, eval, resume,
    the run folder's listing). Read with a size bound, unread when not a regular file; BadCheckpoint (a
    ValueError) naming the file and field, FileNotFoundError without one."""
    path = Path(folder, META_FILE)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{folder}: not an lma3d checkpoint (no {META_FILE})")
    try:
        text = read_text(path, META_MAX_BYTES, "a checkpoint meta")
    except ReadRefused as e:
        raise BadCheckpoint(str(e)) from None
    return parse_meta(text, path)


def parse_meta(text: str, path: str | Path) -> dict[str, Any]:
    """lma3d_meta.json's text (read from `path`, local or remote) checked: format, a tag `global_step<N>`
    (the folder the weights are read from: nothing else, so it cannot leave the checkpoint), a step."""
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise BadCheckpoint(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise BadCheckpoint(f"{path}: not valid JSON (nested too deep)") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise BadCheckpoint(f"{path}: format {short(meta.get('format') if isinstance(meta, dict) else meta)}, "
                            f"expected {META_FORMAT!r}")  # fmt: skip
    tag = meta.get("tag")
    if not isinstance(tag, str) or not TAG.fullmatch(tag):
        raise BadCheckpoint(f"{path}: tag {short(tag)} is not global_step<N>")
    if type(meta.get("step")) is not int or meta["step"] < 0:
        raise BadCheckpoint(f"{path}: step {short(meta.get('step'))} is not a non-negative integer")
    return meta
