"""The registered model's pyfunc: predict takes image / points / instruction rows, returns a heat map per row.

It holds no weights of its own: its one artifact is the exported folder (model.safetensors + config.json), loaded
in load_context by jobs.loading.load (safetensors only, checked against its config), as every verb loads. MLflow
never pickles it: jobs/serving/pyfunc_code.py is the file logged as the model's code (models-from-code), and
loading a registered version executes that file, which builds this class from the package code logged beside it.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np

ARTIFACT = "lma3d_model"


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
