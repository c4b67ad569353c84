"""The exported model in the MLflow registry: a pyfunc whose predict takes image / points / instruction.

The pyfunc holds no weights of its own: its artifact is the exported folder (model.safetensors + config.json),
loaded in load_context by jobs.loading.load (safetensors only, checked against its config), as every verb loads.
The package code travels with it (code_paths), so a serving environment with the listed requirements can load
it; `lma3d predict --model models:/name@alias` reads the same artifact without going through pyfunc at all.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from jobs.entry import UserError
from jobs.training.tracking import tracking_uri_for_now

log = logging.getLogger("lma3d.export.registry")
ARTIFACT = "lma3d_model"
REQUIREMENTS = ("torch", "safetensors", "transformers", "peft", "numpy", "pillow", "matplotlib")


class AffordanceModel(mlflow.pyfunc.PythonModel):
    """predict(rows) with rows a DataFrame / dict / list of dicts holding `image` (path or bytes), `points`
    (path of a .txt/.npy/.ply file or an [N,3] array) and `instruction`; returns one float32 array per row,
    the affordance of every input point."""

    def load_context(self, context: Any) -> None:
        from jobs.loading import load

        self.model = load(context.artifacts[ARTIFACT]).model

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a schema from them
        from jobs.serving.batch_predict import Item, predict_item, rows_from

        out = []
        for i, row in enumerate(rows_from(model_input)):
            points = row["points"] if isinstance(row["points"], str) else np.asarray(row["points"])
            item = Item(f"row{i}", row["image"], points, str(row["instruction"]))
            out.append(predict_item(self.model, item).values)
        return out


def _requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def register(export_dir: str | Path, name: str, alias: str | None, tracking_uri: str, run_id: str) -> dict[str, Any]:
    """Log the exported folder as a pyfunc model in run `run_id`, register a version of `name`, set `alias`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    import jobs
    import model
    import pipeline

    code = [str(Path(package.__file__).parent) for package in (model, pipeline, jobs)]
    try:
        with tracking_uri_for_now(tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=AffordanceModel(),
                artifacts={ARTIFACT: str(export_dir)},
                code_paths=code,
                pip_requirements=_requirements(),
                registered_model_name=name,
            )
        version_number = info.registered_model_version
        client = MlflowClient(tracking_uri)
        if alias:
            client.set_registered_model_alias(name, alias, str(version_number))
    except Exception as e:  # noqa: BLE001 - MLflow raises MlflowException, RestException, OSError...
        raise UserError(f"registering {export_dir} as {name!r} at {tracking_uri} failed: {e}") from None
    uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version_number}"
    log.info("registered %s version %s%s", name, version_number, f" as @{alias}" if alias else "")
    return {"name": name, "version": str(version_number), "alias": alias, "uri": uri, "model_uri": info.model_uri}
