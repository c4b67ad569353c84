"""The exported model in the MLflow registry: `register` logs the pyfunc (jobs/serving/pyfunc_model.py) as
models-from-code and registers a version of it.

The model's code is jobs/serving/pyfunc_code.py, logged as a file, with the package code beside it (code_paths), so
loading executes source and unpickles nothing; its artifact is the exported folder. The requirements are derived
from the imports that code performs (jobs/serving/requirements.py), so an environment built from the model's
requirements.txt can load it. `lma3d predict --model models:/name@alias` reads the same artifact without going
through pyfunc at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jobs.entry import UserError
from jobs.serving.model_card import ModelCard
from jobs.serving.pyfunc_model import ARTIFACT
from jobs.tracking import tracking_uri_for_now

log = logging.getLogger("lma3d.export.registry")
MODEL_CODE = Path(__file__).with_name("pyfunc_code.py")


def register(
    export_dir: str | Path,
    name: str,
    alias: str | None,
    tracking_uri: str,
    run_id: str,
    card: ModelCard | None = None,
    backbone_folder: str | None = None,
) -> dict[str, Any]:
    """Log the exported folder as a pyfunc model in run `run_id` (into the training checkpoint's LoggedModel when
    `card` names one, so the version links to the training run and its metrics), register a version of `name` with
    the card's signature, input example, description and tags, set `alias`. Its requirements are the code's and
    what the backbone's files need (`backbone_folder`: a SentencePiece tokenizer)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    import jobs
    import model
    import pipeline
    from jobs.serving.requirements import backbone_distributions, pinned_requirements

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
                    python_model=str(MODEL_CODE),  # models-from-code: a file MLflow executes at load, no pickle
                    artifacts={ARTIFACT: str(export_dir)},
                    code_paths=code,
                    pip_requirements=pinned_requirements(backbone_distributions(backbone_folder)),
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
            "model_id": info.model_id, "run_id": version.run_id, "tracking_uri": tracking_uri}  # fmt: skip


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _note_version(client: Any, model_id: str, name: str, version: str) -> None:
    """The LoggedModel lists its registered versions (MLflow's own tag, as log_model's registration writes it): the
    UI links them, and jobs.checkpoint_models keeps a registered checkpoint's LoggedModel."""
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    existing = client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    versions = (json.loads(existing) if existing else []) + [{"name": name, "version": str(version)}]
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
