"""Shard loaders for training and evaluation (see train.py and eval.py for the worker/rank/epoch rules)."""

from pipeline.loaders.eval import decode_test_sample, eval_loader
from pipeline.loaders.train import train_loader
from pipeline.loaders.transforms import decode_image, normalize_points

__all__ = ["decode_image", "decode_test_sample", "eval_loader", "normalize_points", "train_loader"]
