"""LMAffordance3D as pure torch.nn modules (no Ray, DeepSpeed or MLflow here)."""
