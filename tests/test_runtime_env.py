"""What a submitted Ray job ships: `infra/runtime_env.yaml` and `.rayignore` agree, the excludes keep data,
checkpoints and git out (checked with Ray's own packaging traversal), the package stays far under Ray's upload
limit, and the tracking URI passes from the submitter unless the cluster has its own."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from ray._private.ray_constants import DASHBOARD_CLIENT_MAX_SIZE
from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, _dir_travel, _get_excludes
from ray.runtime_env import RuntimeEnv

from jobs.runtime_env import runtime_env

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"


def shipped(root: Path, excludes: list[str]) -> dict[str, int]:
    """Files Ray would put in the working_dir package, found with Ray's own traversal and matching."""
    files: dict[str, int] = {}

    def handler(path: Path) -> None:
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path.stat().st_size

    _dir_travel(root, [_get_excludes(root, excludes)], handler, include_gitignore=False)
    return files


def test_runtime_env_ships_the_checkout_with_ray_train_v2_and_the_excludes():
    env = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "." and env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    for pattern in (".git", ".venv", "/work/", "/data/", "/checkpoints/", "mlruns/", "*.tar", "*.arrow"):
        assert pattern in env["excludes"]
    rayignore = [line for line in (ROOT / ".rayignore").read_text().splitlines() if line and line[0] != "#"]
    assert rayignore == env["excludes"], ".rayignore and runtime_env excludes must list the same patterns"
    RuntimeEnv(**{k: v for k, v in env.items() if k != "working_dir"})


def test_submit_excludes_what_rayignore_lists_even_with_a_runtime_env_file_without_excludes(tmp_path):
    from jobs.runtime_env import working_dir_excludes

    rayignore = [line for line in (ROOT / ".rayignore").read_text().splitlines() if line and line[0] != "#"]
    assert working_dir_excludes() == rayignore
    assert runtime_env(str(INFRA / "runtime_env.yaml"))["excludes"] == sorted(rayignore)
    (tmp_path / "env.yaml").write_text("env_vars: {}\n")
    assert runtime_env(str(tmp_path / "env.yaml"))["excludes"] == sorted(rayignore)


def test_excludes_drop_data_checkpoints_and_git_but_keep_the_code(tmp_path):
    heavy = ".git/objects/p.pack .venv/lib/torch.so work/shards/train/shard-000000.tar data/AGPIL/x.txt mlruns/0/m.yaml"
    heavy += " checkpoints/global_step1/model_states.pt runs/r/points.arrow a/b/c.safetensors"
    kept = {"jobs/work.py", "pipeline/data.py", "configs/agpil/full_seen.yaml", "tests/test_x.py"}
    for rel in [*heavy.split(), *kept]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert set(shipped(tmp_path, yaml.safe_load((INFRA / "runtime_env.yaml").read_text())["excludes"])) == kept
    (tmp_path / ".rayignore").write_text((ROOT / ".rayignore").read_text())
    assert set(shipped(tmp_path, [])) == kept | {".rayignore"}, ".rayignore alone (e.g. without .gitignore) suffices"


def test_repo_package_stays_well_under_rays_100_mib_limit():
    files = shipped(ROOT, yaml.safe_load((INFRA / "runtime_env.yaml").read_text())["excludes"])
    total, biggest = sum(files.values()), sorted(files.items(), key=lambda kv: -kv[1])[:5]
    # Jobs API uploads are capped by the dashboard's request size (100 MiB), GCS packages by the gRPC message size.
    limit = min(DASHBOARD_CLIENT_MAX_SIZE, GCS_STORAGE_MAX_SIZE)
    assert total < limit // 4, f"{total / 2**20:.1f} MiB of {limit / 2**20:.0f} would ship; biggest: {biggest}"


def test_submit_passes_the_submitters_tracking_uri_else_keeps_the_clusters(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    env_file = str(INFRA / "runtime_env.yaml")
    assert runtime_env(env_file)["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    env_vars = runtime_env(env_file)["env_vars"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")  # what the node has (KubeRay Secret)
    from ray._private.utils import update_envs  # how Ray applies env_vars on the node

    update_envs({"MLFLOW_TRACKING_URI": env_vars["MLFLOW_TRACKING_URI"]})
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_submit_tells_the_job_the_commit_of_the_shipped_checkout(tmp_path, monkeypatch):
    import subprocess

    from jobs.tracking import GIT_COMMIT_ENV

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "log", "-1", "--format=%H"], capture_output=True, text=True, check=True).stdout
    monkeypatch.setenv(GIT_COMMIT_ENV, "the-images-commit")
    assert runtime_env(working_dir=str(tmp_path))["env_vars"][GIT_COMMIT_ENV] == head.strip()
