"""The registered pyfunc loads and predicts with only its declared requirements: no webdataset, no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from registered import IMAGE, INSTRUCTION, POINTS, export_tiny, register_tiny

from jobs.serving.model_registry import REQUIREMENTS

HERE = Path(__file__).parent
# Runs in a fresh interpreter where importing webdataset or ray (or anything under them) raises ImportError,
# as it would in an environment built from the pyfunc's requirements alone.
CHILD = """
import importlib.abc, json, sys
BLOCKED = ("webdataset", "ray")

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed here (blocked by the test)")
        return None

sys.meta_path.insert(0, Blocker())
import mlflow.pyfunc
uri, image, points, instruction, out = sys.argv[1:]
model = mlflow.pyfunc.load_model(uri)
values = model.predict({"image": image, "points": points, "instruction": instruction})[0]
import numpy
numpy.save(out, values)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)))
"""


@pytest.mark.slow
def test_registered_pyfunc_predicts_without_webdataset_or_ray(tmp_path: Path) -> None:
    assert "webdataset" not in REQUIREMENTS and "ray" not in REQUIREMENTS
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exported = export_tiny(tmp_path / "model", seed=5)
    register_tiny(exported, "lma3d-isolated", "champion", uri, tmp_path / "work")

    out = tmp_path / "values.npy"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(HERE.parent)}
    args = ["models:/lma3d-isolated@champion", str(IMAGE), str(POINTS), INSTRUCTION, str(out)]
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], "webdataset or ray was imported"

    from jobs.serving.batch_predict import Item, predict_item
    from model.pretrained import from_pretrained

    direct = predict_item(from_pretrained(exported, fps_start="first"), Item("x", IMAGE, POINTS, INSTRUCTION))
    served = np.load(out)
    assert served.shape == (2048,)
    np.testing.assert_allclose(served, direct.values, atol=1e-6)
