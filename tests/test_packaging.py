"""`pip install .` (not editable) ships what the verbs read beside the code: the configs and the PIAD sample are
found from any folder, through the installed share folder."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from jobs.resources import project_file

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_project_file_prefers_the_source_tree_then_the_installed_copy(tmp_path):
    source, installed = tmp_path / "src", tmp_path / "share"
    (installed / "configs").mkdir(parents=True)
    (installed / "configs" / "demo.yaml").write_text("x: 1\n")
    assert project_file("configs/demo.yaml", (source, installed)) == installed / "configs" / "demo.yaml"
    (source / "configs").mkdir(parents=True)
    (source / "configs" / "demo.yaml").write_text("x: 2\n")
    assert project_file("configs/demo.yaml", (source, installed)) == source / "configs" / "demo.yaml"
    with pytest.raises(FileNotFoundError, match="configs/none.yaml"):
        project_file("configs/none.yaml", (source, installed))


def test_a_non_editable_install_finds_its_configs_and_sample_from_any_folder(tmp_path):
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    where = "import site; print(site.getsitepackages()[0])"
    site = Path(subprocess.check_output([venv / "bin" / "python", "-c", where], text=True).strip())
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(next(wheels.glob("*.whl")))],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    # --target puts the data files under site/share: move them where a normal install puts them (the prefix).
    (site / "share").rename(venv / "share")
    # The dependencies come from this environment, appended after the new install's own site-packages.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = (
        "import jobs.resources as r; from jobs.serving.page import sample_dir; "
        "print(r.project_file('configs/demo.yaml')); print(r.project_file('configs/agpil/base.yaml')); "
        "print(sample_dir())"
    )
    out = subprocess.run([venv / "bin" / "python", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    demo, base, sample = out.stdout.split()
    assert Path(demo) == venv / "share" / "lmaffordance3d" / "configs" / "demo.yaml"
    assert Path(base).read_text() == (REPO / "configs" / "agpil" / "base.yaml").read_text()
    assert Path(sample) == venv / "share" / "lmaffordance3d" / "tests" / "fixtures" / "piad"
