"""The runtime_env a job gets on a Ray cluster: infra/runtime_env.yaml, the .rayignore excludes, the submitter's
MLflow settings and git commit. Used by `lma3d submit` and by `lma3d train --address` (the training launcher)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jobs.bounded import CONFIG_MAX_BYTES, load_yaml, read_text

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RAYIGNORE = PROJECT_ROOT / ".rayignore"
"""The one list of what a working_dir never ships (Ray refuses packages over 100 MiB; data and checkpoints live on
shared storage). Ray applies it itself; infra/runtime_env.yaml's `excludes` repeat it for `ray job submit
--runtime-env` (tests/test_runtime_env.py holds them equal)."""


def runtime_env(path: str | None = None, working_dir: str | None = None) -> dict[str, Any]:
    """infra/runtime_env.yaml (or `path`) with the submitter's MLflow settings passed through."""
    env_file = Path(path) if path else PROJECT_ROOT / "infra" / "runtime_env.yaml"
    env: dict[str, Any] = {}
    if env_file.exists():
        env = load_yaml(read_text(env_file, CONFIG_MAX_BYTES, "runtime env file"), str(env_file)) or {}
        if not isinstance(env, dict):
            raise ValueError(f"{env_file}: a runtime_env must be a mapping")
    elif path:
        raise FileNotFoundError(f"runtime env file {path} not found")
    env["working_dir"] = working_dir or env.get("working_dir") or str(PROJECT_ROOT)
    if env["working_dir"] in (".", "./"):
        env["working_dir"] = str(PROJECT_ROOT)
    env["excludes"] = sorted(set(env.get("excludes", [])) | set(working_dir_excludes()))
    env_vars = {k: str(v) for k, v in (env.get("env_vars") or {}).items() if v not in (None, "")}
    for key in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_EXPERIMENT_NAME",
    ):
        if os.environ.get(key):
            env_vars[key] = os.environ[key]
    # The shipped working_dir has no .git: tell the job which commit it is, over the one baked into the image.
    from jobs.tracking import GIT_COMMIT_ENV, git_commit

    commit = git_commit(env["working_dir"]) if Path(env["working_dir"]).is_dir() else None
    if commit:
        env_vars[GIT_COMMIT_ENV] = commit
    env["env_vars"] = env_vars
    return env


def working_dir_excludes(rayignore: Path = RAYIGNORE) -> list[str]:
    """The patterns of .rayignore (gitignore syntax), comments and blank lines left out; [] when there is none."""
    if not rayignore.is_file():
        return []
    return [line.strip() for line in rayignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
