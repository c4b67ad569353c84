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
from jobs.serving.model_card import ModelCard
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
        from jobs.serving.model_card import image_value

        out = []
        for i, row in enumerate(rows_from(model_input)):
            points = row["points"] if isinstance(row["points"], str) else np.asarray(row["points"])
            item = Item(f"row{i}", image_value(row["image"]), points, str(row["instruction"]))
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


def register(
    export_dir: str | Path, name: str, alias: str | None, tracking_uri: str, run_id: str, card: ModelCard | None = None
) -> dict[str, Any]:
    """Log the exported folder as a pyfunc model in run `run_id` (into the training checkpoint's LoggedModel when
    `card` names one, so the version links to the training run and its metrics), register a version of `name` with
    the card's signature, input example, description and tags, set `alias`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    import jobs
    import model
    import pipeline

    code = [str(Path(package.__file__).parent) for package in (model, pipeline, jobs)]
    described = {}
    if card is not None:
        described = {"signature": card.signature, "input_example": card.input_example, "model_id": card.model_id,
                     "step": card.step}  # fmt: skip
    try:
        # Registered here, not through log_model's registered_model_name: the version takes the description and
        # tags, and the registry resolves `models:/<model_id>` through the process's tracking URI.
        with tracking_uri_for_now(tracking_uri):
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=AffordanceModel(),
                    artifacts={ARTIFACT: str(export_dir)},
                    code_paths=code,
                    pip_requirements=_requirements(),
                    **described,
                )
            client = MlflowClient(tracking_uri)
            _ensure_registered_model(client, name)
            version = client.create_model_version(
                name, f"models:/{info.model_id}", run_id=card.training_run_id if card else None,
                tags=card.tags if card else None, description=card.description if card else None,
                model_id=info.model_id,
            )  # fmt: skip
            _note_version(client, info.model_id, name, version.version)
        version_number = version.version
        if alias:
            client.set_registered_model_alias(name, alias, str(version_number))
    except Exception as e:  # noqa: BLE001 - MLflow raises MlflowException, RestException, OSError...
        raise UserError(f"registering {export_dir} as {name!r} at {tracking_uri} failed: {e}") from None
    uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version_number}"
    log.info("registered %s version %s%s", name, version_number, f" as @{alias}" if alias else "")
    return {"name": name, "version": str(version_number), "alias": alias, "uri": uri, "model_uri": info.model_uri,
            "model_id": info.model_id, "run_id": version.run_id}  # fmt: skip


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _note_version(client: Any, model_id: str, name: str, version: str) -> None:
    """The LoggedModel lists its registered versions (MLflow's own tag, as log_model's registration writes it): the
    UI links them, and jobs.training.checkpoint_models keeps a registered checkpoint's LoggedModel."""
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    existing = client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    versions = (json.loads(existing) if existing else []) + [{"name": name, "version": str(version)}]
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
