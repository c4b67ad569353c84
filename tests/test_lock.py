"""requirements.lock / requirements-dev.lock: every package pyproject.toml names, and everything those need, at one
exact version, which `make install` (and so `make demo`, `make test`, CI) and the images install.

Everything checked here is read from files in the repository: the locks, pyproject.toml and the lock's resolution
record (infra/lock/resolution.json, each pinned package's requirements as its own metadata states them, written by
`make lock`). What is installed on the machine and what the registry serves today change no answer."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


def resolution() -> dict:
    return json.loads((ROOT / "infra" / "lock" / "resolution.json").read_text())


def requirements_of(record: dict, name: str, extras: frozenset[str]) -> list[Requirement]:
    """What `name` requires with `extras`, on the locks' platform (the record's target, not this machine's)."""
    out = []
    for text in record["packages"][name]["requires"]:
        req = Requirement(text)
        envs = [{**record["target"], "extra": e} for e in (extras or {""})]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            out.append(req)
    return out


def walk(lock: str, extras: tuple[str, ...], record: dict) -> set[str]:
    """Walk the dependency graph from pyproject.toml through the record: every package reached is pinned, and its
    pin satisfies whoever requires it. Returns the names reached."""
    pinned, walked = pins(lock), set()
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
        todo += [(r, f"{name}=={pinned[name]}") for r in requirements_of(record, name, key[1])]
    return {n for n, _ in walked}


def test_resolution_record_describes_exactly_the_dev_lock():
    """A lock recompiled without recording its resolution again (`make lock` does both) fails here."""
    record = resolution()
    assert record["lock"] == "requirements-dev.lock"
    recorded = {name: entry["version"] for name, entry in record["packages"].items()}
    assert recorded == pins("requirements-dev.lock")


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", ()), ("requirements-dev.lock", ("dev",))])
def test_lock_is_closed_under_the_requirements_of_what_it_pins(lock, extras):
    reached = walk(lock, extras, resolution())
    assert reached, "nothing walked"


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", ()), ("requirements-dev.lock", ("dev",))])
def test_lock_pins_nothing_that_pyproject_does_not_reach(lock, extras):
    unreached = set(pins(lock)) - walk(lock, extras, resolution())
    assert not unreached, f"{lock} pins packages nothing requires: {sorted(unreached)}"


def test_closure_check_reads_no_installed_metadata(monkeypatch):
    """The check gives the same answer wherever it runs: with every installed distribution's metadata hidden (as on
    a machine where all packages are at other versions, or absent), the walk still reaches every pin."""
    import importlib.metadata

    def hidden(*args, **kwargs):
        raise AssertionError("the lock check read installed metadata")

    for attr in ("distribution", "version", "requires", "metadata", "distributions"):
        monkeypatch.setattr(importlib.metadata, attr, hidden)
    assert walk("requirements-dev.lock", ("dev",), resolution()) == set(pins("requirements-dev.lock"))


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


def make_dry_run(*args: str, venv: Path) -> str:
    """The commands `make -n` would run for a fresh venv (nothing is executed)."""
    return subprocess.run(["make", "-n", *args, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


@pytest.mark.parametrize("target", ["install", "demo", "test"])
def test_readme_commands_install_the_locked_versions_by_default(tmp_path, target):
    out = make_dry_run(target, venv=tmp_path / "venv")
    assert re.search(r'pip install -q "torch==2\.13\.0\+cpu"', out), out
    assert re.search(r"pip install -q -r requirements-dev\.lock", out), out
    assert re.search(r"pip install -q --no-deps -e \.", out), out
    assert not re.search(r"pip install -q -e \.\[dev\]", out), out


def test_make_install_latest_1_resolves_the_newest_releases_instead(tmp_path):
    out = make_dry_run("install", "LATEST=1", venv=tmp_path / "venv")
    assert "requirements-dev.lock" not in out
    assert re.search(r'pip install -q -e "\.\[dev\]"|pip install -q -e \.\[dev\]', out), out


def test_lock_check_installs_unlocked_in_a_throwaway_venv_and_runs_the_fast_tests(tmp_path):
    out = make_dry_run("lock-check", venv=tmp_path / "venv")
    assert str(tmp_path / "venv") not in out, "lock-check must not touch the project venv"
    assert re.search(r"pip install -q -e \.\[dev\]", out), out
    assert re.search(r"-m pytest -m \"not slow\"", out), out
    assert "pip freeze" in out
