"""requirements.lock / requirements-dev.lock: every package pyproject.toml names, and everything those need, at one
exact version that the images and `make install LOCK=1` install; the commit of a run without a .git beside it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from jobs.training.tracking import GIT_COMMIT_ENV, git_commit

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?:\s+#.*)?$")


def pins(name: str) -> dict[str, str]:
    """{canonical name: version} of a lock file; any line that is not `name==version` fails the test."""
    found = {}
    for n, line in enumerate((ROOT / name).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{name}:{n}: not an exact pin: {line!r}"
        found[canonicalize_name(m["name"])] = m["version"]
    return found


def project_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    return [Requirement(r) for r in listed]


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", ()), ("requirements-dev.lock", ("dev",))])
def test_lock_pins_every_package_pyproject_names_within_its_range(lock, extras):
    pinned = pins(lock)
    for req in project_requirements(*extras):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock} does not pin {req.name} (pyproject.toml: {req})"
        assert Version(pinned[name]) in req.specifier, f"{lock}: {name}=={pinned[name]} is outside {req}"


def requirements_of(name: str, extras: set[str]) -> list[Requirement]:
    """What the installed distribution `name` requires on this platform (Linux, CPython 3.11) with `extras`."""
    out = []
    for text in importlib.metadata.distribution(name).requires or []:
        req = Requirement(text)
        envs = [{**default_environment(), "extra": e} for e in (extras or {""})]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            out.append(req)
    return out


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", ()), ("requirements-dev.lock", ("dev",))])
def test_lock_is_closed_under_the_requirements_of_what_it_pins(lock, extras):
    """Walk the dependency graph from pyproject.toml through the metadata of the installed packages: every package
    reached is pinned, and its version satisfies whoever requires it. Packages installed here at another version
    than the pin cannot be walked (their metadata may differ); the test needs most to match, as in this venv."""
    pinned, walked, skipped = pins(lock), set(), set()
    todo = [(req, "pyproject.toml") for req in project_requirements(*extras)]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock}: {parent} needs {req} but it is not pinned"
        ok = req.specifier.contains(pinned[name], prereleases=True)
        assert ok, f"{lock}: {parent} needs {req}, pin {pinned[name]}"
        key = (name, frozenset(req.extras))
        if key in walked:
            continue
        walked.add(key)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            skipped.add(name)
            continue
        if Version(installed) != Version(pinned[name]):
            skipped.add(name)
            continue
        todo += [(r, f"{name}=={installed}") for r in requirements_of(name, set(req.extras))]
    walked_names = {n for n, _ in walked}
    assert len(skipped) <= 0.1 * len(walked_names), f"too few pins installed here to check the closure: {skipped}"
    assert walked_names - skipped, "nothing walked"


def test_dev_lock_agrees_with_the_runtime_lock():
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert set(runtime) <= set(dev), set(runtime) - set(dev)
    assert {n: v for n, v in dev.items() if n in runtime} == runtime


def test_images_and_lock_pin_the_same_torch_deepspeed_and_ray():
    runtime = pins("requirements.lock")
    assert runtime["torch"] == "2.13.0+cpu", "the CPU lock: PyPI's torch would pull the CUDA libraries"
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = (ROOT / "infra" / "docker" / name).read_text()
        args = dict(re.findall(r"^ARG (\w+)=(\S*)", text, re.M))
        assert args["RAY_VERSION"] == runtime["ray"], name
        assert args["DEEPSPEED_VERSION"] == runtime["deepspeed"], name
        assert args["TORCH_VERSION"] == runtime["torch"].split("+")[0], name
        assert re.search(r"^COPY [^\n]*requirements\.lock ", text, re.M), f"{name} must install the lock"
        assert re.search(r"pip install --no-deps /home/ray/lma3d", text), f"{name}: the project must not re-resolve"
        assert re.search(r"^ENV LMA3D_GIT_COMMIT=\$\{GIT_COMMIT\}$", text, re.M), f"{name}: pass the commit in"
    assert "grep -v '^torch=='" in (ROOT / "infra" / "docker" / "Dockerfile").read_text(), "GPU image keeps CUDA torch"


def test_make_install_lock_1_installs_from_the_lock(tmp_path):
    out = subprocess.run(["make", "-n", "install", "LOCK=1", f"VENV={tmp_path}/venv"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert re.search(r"pip install -q -r requirements-dev\.lock", out), out
    assert re.search(r"pip install -q --no-deps -e \.", out), out
    plain = subprocess.run(["make", "-n", "install", f"VENV={tmp_path}/venv"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert "requirements-dev.lock" not in plain


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
