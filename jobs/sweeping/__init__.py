"""lma3d sweep: Ray Tune over the training job (search space, trial runner, results)."""
