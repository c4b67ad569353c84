"""Glue for `lma3d submit`: split our flags from the verb's, build the runtime_env, talk to the Ray Jobs API."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RAYIGNORE = PROJECT_ROOT / ".rayignore"
"""The one list of what a working_dir never ships (Ray refuses packages over 100 MiB; data and checkpoints live on
shared storage). Ray applies it itself; infra/runtime_env.yaml's `excludes` repeat it for `ray job submit
--runtime-env` (tests/test_runtime_env.py holds them equal)."""
# Flags that belong to `submit` wherever they stand on the command line; value-taking ones first.
SUBMIT_VALUE_FLAGS = ("--address", "--runtime-env", "--submission-id", "--working-dir", "--entrypoint-num-cpus")
SUBMIT_BOOL_FLAGS = ("--no-wait",)


def split_argv(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Pull submit's own flags (`--address URL`, `--address=URL`, `--no-wait` …) out of argv; the rest is the verb's."""
    own: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in SUBMIT_VALUE_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{name} needs a value")
                value, i = argv[i + 1], i + 1
            own[name.lstrip("-").replace("-", "_")] = value
        elif arg in SUBMIT_BOOL_FLAGS:
            own[arg.lstrip("-").replace("-", "_")] = True
        else:
            rest.append(arg)
        i += 1
    return own, rest


def entrypoint(verb: str, verb_args: list[str]) -> str:
    """The command the job runs on the cluster: the verb's module, so it works with or without the console script."""
    return " ".join(shlex.quote(part) for part in ["python", "-m", f"jobs.verbs.{verb}", *verb_args])


def runtime_env(path: str | None = None, working_dir: str | None = None) -> dict[str, Any]:
    """infra/runtime_env.yaml (or `path`) with the submitter's MLflow settings passed through."""
    env_file = Path(path) if path else PROJECT_ROOT / "infra" / "runtime_env.yaml"
    env: dict[str, Any] = {}
    if env_file.exists():
        env = yaml.safe_load(env_file.read_text()) or {}
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
    from jobs.training.tracking import GIT_COMMIT_ENV, git_commit

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


def job_client(address: str | None):  # -> ray.job_submission.JobSubmissionClient
    """A Jobs API client; a local token (from `ray start --head`) switches on token auth, which we keep on."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address or not address.startswith("http"):
        raise ValueError(f"--address must be the cluster's dashboard URL, e.g. http://HEAD:8265 (got {address!r})")
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or Path.home().joinpath(".ray", "auth_token").exists()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)
