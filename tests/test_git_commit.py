"""The commit a run records: the checkout's HEAD, or LMA3D_GIT_COMMIT where no .git is beside the code (images)."""

from __future__ import annotations

import subprocess

from jobs.tracking import GIT_COMMIT_ENV, git_commit


def test_git_commit_falls_back_to_the_env_var_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    assert git_commit(tmp_path) is None
    monkeypatch.setenv(GIT_COMMIT_ENV, "0123456789abcdef0123456789abcdef01234567")
    assert git_commit(tmp_path) == "0123456789abcdef0123456789abcdef01234567"


def test_git_commit_prefers_the_checkout_over_the_env_var(tmp_path, monkeypatch):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "-C", str(tmp_path), "log", "-1", "--format=%H"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    monkeypatch.setenv(GIT_COMMIT_ENV, "0123456789abcdef0123456789abcdef01234567")
    assert git_commit(tmp_path) == head
