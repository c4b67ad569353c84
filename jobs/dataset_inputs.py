"""A shard folder's splits as MLflow dataset inputs of a run (the UI's Datasets column, `run.inputs`).

Each split is its own dataset, `<folder>/<split>`, so one run can hold the train split (context `training`) and the
test split (context `validation`) side by side; an eval run holds the test split as `evaluation`. The digest is
the sha256 of the split's shard hashes in the manifest (the bytes the run read, whatever folder they sit in); the
profile carries the sample, shard and quarantine counts. MLflow keeps one copy per (name, digest) and experiment.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("lma3d.mlflow")

CONTEXT_SPLIT = {"training": "train", "validation": "test", "evaluation": "test"}
DIGEST_CHARS = 32  # MLflow's dataset digest column holds 36


def split_dataset(shards: str | Path, manifest: dict[str, Any], split: str) -> Any:
    """The mlflow Dataset entity of one split of a shard folder (manifest already validated)."""
    from mlflow.entities import Dataset

    hashes = [s["sha256"] for s in manifest["shards"] if s["split"] == split]
    digest = hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:DIGEST_CHARS]
    uri = str(shards)
    counts = manifest["splits"].get(split, {})
    profile = {
        "split": split,
        "samples": counts.get("samples", 0),
        "shards": counts.get("shards", 0),
        "read": manifest["read"],
        "written": manifest["written"],
        "quarantined": manifest["quarantined"],
        "quarantine_reasons": manifest["quarantine_reasons"],
        "format": manifest["source_format"],
    }
    if split == "train" and manifest.get("point_bank"):
        profile["point_clouds"] = manifest["point_bank"]["clouds"]
    return Dataset(
        name=f"{Path(uri.rstrip('/')).name}/{split}",
        digest=digest,
        source_type=uri.split("://", 1)[0] if "://" in uri else "local",
        source=json.dumps({"uri": uri}),
        profile=json.dumps(profile),
    )


def log_shard_inputs(
    client: Any, run_id: str, shards: str | Path, manifest: dict[str, Any], contexts: list[str]
) -> None:
    """Log the splits `contexts` name (training / validation / evaluation) as inputs of `run_id`."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for context in contexts:
        split = CONTEXT_SPLIT[context]
        if split in manifest["splits"]:
            tags = [InputTag("mlflow.data.context", context)]
            inputs.append(DatasetInput(split_dataset(shards, manifest, split), tags=tags))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
