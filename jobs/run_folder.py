"""A run's folder `<train.storage_path>/<run name>`: which of its checkpoint folders are registered (complete).

Two registries, one per way of training, and a checkpoint counts once either lists it:

- Ray Train's run snapshot `checkpoint_manager_snapshot.json`, written by its controller once every rank has
  reported a checkpoint (a folder an attempt wrote before dying is never in it);
- `lma3d_checkpoints.json`, written by `lma3d train --no-ray` (jobs/training/local.py) after it has moved a
  complete checkpoint folder into place. A separate file, not a hand-made Ray snapshot: Ray's controller reloads
  its snapshot on resume and would refuse (or misread) one it did not write. With both, a run started without
  Ray continues under Ray and the other way round (the launcher hands Ray the latest checkpoint as resume_from
  when its own snapshot does not know it).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.bounded import META_MAX_BYTES, read_text
from jobs.checkpoint_meta import META_FILE, SCORE_KEY, dir_name_for, parse_meta, validated_score
from jobs.cluster_storage import filesystem
from jobs.consolidate import BadCheckpoint

RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
LOCAL_REGISTRY_FILE = "lma3d_checkpoints.json"
LOCAL_REGISTRY_FORMAT = "lma3d-checkpoints-v1"
REGISTRY_MAX_BYTES = 16 << 20
"""Either registry lists a run's checkpoints with their metrics: a few KB for hundreds of them."""


@dataclass(frozen=True)
class RunFolder:
    """The run `name` under `storage_path` (a local path or a URI): its layout, in one place. The driver, every
    rank, --no-ray, sweeps and loading name a run's folder, its checkpoints and its attempt records through this."""

    storage_path: str
    name: str

    @property
    def path(self) -> str:
        """The run folder as users and the loaders name it (with its scheme on object storage)."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def checkpoint_path(self, step: int) -> str:
        return f"{self.path}/{dir_name_for(step)}"

    def in_filesystem(self, *parts: str) -> tuple[Any, str]:
        """(pyarrow filesystem, path in it) of the run folder or of `parts` below it."""
        fs, root = filesystem(self.storage_path)
        return fs, "/".join([root.rstrip("/"), self.name, *parts])

    def location(self, fs_path: str) -> str:
        """A path pyarrow gave (`bucket/key` on object storage) as the user names it."""
        return location(self.storage_path, fs_path)

    def registered(self) -> tuple[bool, list[dict[str, Any]]]:
        """(the folder exists, the metadata of its registered checkpoints by step, each with its `path`)."""
        import pyarrow.fs

        fs, run_path = self.in_filesystem()
        if fs.get_file_info(run_path).type == pyarrow.fs.FileType.NotFound:
            return False, []
        registered: set[str] | None = set()
        found = False
        for file, parse in ((RAY_SNAPSHOT_FILE, _registered_dirs), (LOCAL_REGISTRY_FILE, _local_dirs)):
            path = f"{run_path}/{file}"
            info = fs.get_file_info(path)
            if info.type == pyarrow.fs.FileType.NotFound:
                continue
            if info.size is not None and info.size > REGISTRY_MAX_BYTES:
                raise BadCheckpoint(f"{path}: {info.size} bytes, over the {REGISTRY_MAX_BYTES}-byte limit of a "
                                    "checkpoint registry")  # fmt: skip
            found = True
            with fs.open_input_stream(path) as f:
                names = parse(f.read(REGISTRY_MAX_BYTES).decode(errors="replace"))
            registered = None if names is None or registered is None else registered | names
        if not found:
            return True, []
        metas = []
        for info in fs.get_file_info(pyarrow.fs.FileSelector(run_path)):
            if registered is not None and info.base_name not in registered:
                continue  # written by an attempt that died before it was registered
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                meta_path = f"{info.path}/{META_FILE}"
                meta_info = fs.get_file_info(meta_path)
                if meta_info.type == pyarrow.fs.FileType.File:
                    metas.append({**_read_meta(fs, meta_info), "path": self.location(info.path)})
        return True, sorted(metas, key=lambda m: m["step"])

    def delete(self) -> None:
        fs, path = self.in_filesystem()
        fs.delete_dir(path)


def location(storage_path: str, path: str) -> str:
    """A path inside the run's filesystem as the user and the loaders name it: with the scheme on object storage
    (pyarrow's paths there are `bucket/key`)."""
    scheme, sep, _ = storage_path.partition("://")
    return f"{scheme}://{path}" if sep and scheme != "file" else path


def _read_meta(fs: Any, info: Any) -> dict[str, Any]:
    """A registered checkpoint's meta (local or remote) through the validated parser, its size bounded first."""
    if info.size > META_MAX_BYTES:
        raise BadCheckpoint(f"{info.path}: a checkpoint meta is {info.size} bytes, over the {META_MAX_BYTES}-byte "
                            "limit")  # fmt: skip
    with fs.open_input_stream(info.path) as f:
        data = f.read(META_MAX_BYTES + 1)
    try:
        return parse_meta(data.decode(), info.path)
    except UnicodeDecodeError as e:
        raise BadCheckpoint(f"{info.path}: not valid JSON ({e})") from None


def _registered_dirs(snapshot: str) -> set[str] | None:
    """Checkpoint folder names in Ray's run snapshot (None if its format is not the one we know)."""
    try:
        state = json.loads(snapshot)
        names = {r["checkpoint_dir_name"] for r in state.get("checkpoint_results", [])}
        latest = state.get("latest_checkpoint_result") or {}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if latest.get("checkpoint_dir_name"):
        names.add(latest["checkpoint_dir_name"])
    return names


def _local_dirs(text: str) -> set[str] | None:
    try:
        return {r["checkpoint_dir_name"] for r in json.loads(text)["checkpoints"]}
    except (ValueError, TypeError, KeyError):
        return None


def read_local_registry(run_dir: Path) -> list[dict[str, Any]]:
    """The checkpoints a --no-ray job registered, oldest first: {"checkpoint_dir_name", "metrics"}."""
    path = run_dir / LOCAL_REGISTRY_FILE
    if not path.is_file():
        return []
    data = json.loads(read_text(path, REGISTRY_MAX_BYTES, "a checkpoint registry"))
    if not isinstance(data, dict) or data.get("format") != LOCAL_REGISTRY_FORMAT:
        raise ValueError(f"{path}: format {data.get('format') if isinstance(data, dict) else data!r}, "
                         f"expected {LOCAL_REGISTRY_FORMAT!r}")  # fmt: skip
    return list(data["checkpoints"])


def register_local(run_dir: Path, name: str, metrics: dict[str, Any], keep: int) -> list[dict[str, Any]]:
    """Add `<run_dir>/<name>` (complete, in place) to the --no-ray registry, then apply Ray's retention rule:
    the `keep` best by val/auc and always the latest; the folders of the others are deleted. Returns the kept."""
    entries = [e for e in read_local_registry(run_dir) if e["checkpoint_dir_name"] != name]
    entries.append({"checkpoint_dir_name": name, "metrics": metrics})
    # As Ray's checkpoint manager ranks them: by score, and among equal scores the newer first.
    by_score = sorted(range(len(entries)), key=lambda i: (_score(entries[i]["metrics"]), i), reverse=True)
    kept_names = {entries[i]["checkpoint_dir_name"] for i in by_score[:keep]} | {name}
    kept = [e for e in entries if e["checkpoint_dir_name"] in kept_names]
    tmp = run_dir / (LOCAL_REGISTRY_FILE + ".tmp")
    tmp.write_text(json.dumps({"format": LOCAL_REGISTRY_FORMAT, "checkpoints": kept}, indent=1, default=float))
    tmp.replace(run_dir / LOCAL_REGISTRY_FILE)  # the registry changes in one step: it never lists a missing folder
    for entry in entries:
        if entry["checkpoint_dir_name"] not in kept_names:
            shutil.rmtree(run_dir / entry["checkpoint_dir_name"], ignore_errors=True)
    return kept


def _score(metrics: dict[str, Any]) -> float:
    score = validated_score(metrics.get(SCORE_KEY))
    return -math.inf if score is None else score
