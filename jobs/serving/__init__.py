"""Serving a trained model: `lma3d export` (export_folder.py) and the MLflow registry's pyfunc (model_registry.py),
`lma3d predict`'s file-to-heat-map path (batch_predict.py), and `lma3d serve`'s Ray Serve application (config,
HTTP API, model holder, deployment, page)."""
