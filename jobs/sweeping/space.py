"""The search space of `lma3d sweep`: a YAML mapping dotted config keys to one distribution each.

    train.lr: {loguniform: [1.0e-5, 1.0e-3]}
    train.weight_decay: {uniform: [0.0, 0.1]}
    data.batch_size: {choice: [4, 6, 8]}
    train.warmup_steps: {randint: [100, 2000]}      # upper bound exclusive, as numpy and Ray Tune

Every key and every value a distribution can produce is checked against the experiment config (unknown keys,
wrong types, out-of-range values, the rules across keys and those of the model's modules) before Ray starts, by
building the config with that value. Numbers are read as in config files: `1e-5` is a float.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from jobs.bounded import CONFIG_MAX_BYTES, ReadRefused, read_text, short
from jobs.typed_yaml import ConfigError, build, parse_yaml, set_dotted

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
MAX_CHOICES = 1000
"""`choice` values in a whole search space: each is built into a config to check it before Ray starts."""


def read_space(path: str | Path) -> dict[str, tuple[str, list[Any]]]:
    """{dotted key: (distribution, arguments)} from SPACE.yaml; one-line ConfigError naming the key otherwise."""
    try:  # bounded (jobs/bounded.py): the file's size, then the YAML's nesting and expanded aliases
        text = read_text(path, CONFIG_MAX_BYTES, "search space")
    except ReadRefused as e:
        raise ConfigError(str(e)) from None
    try:
        data = parse_yaml(text, str(path))  # one number grammar: `1e-5` is a float, as in configs
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: a search space is a non-empty mapping of config keys to distributions")
    space = {str(key): _distribution(path, str(key), spec) for key, spec in data.items()}
    choices = sum(len(args) for kind, args in space.values() if kind == "choice")
    if choices > MAX_CHOICES:
        raise ConfigError(f"{path}: {choices} choice values in all, at most {MAX_CHOICES}")
    return space


def _distribution(path: str | Path, key: str, spec: Any) -> tuple[str, list[Any]]:
    where = f"{path}: {key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: expected one of {{{', '.join(f'{d}: [...]' for d in DISTRIBUTIONS)}}}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} takes a non-empty list, got {short(args)}")
    if kind == "choice":
        if len(args) > MAX_CHOICES:
            raise ConfigError(f"{where}: choice has {len(args)} values, at most {MAX_CHOICES}")
        return kind, args
    if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}: {kind} takes [low, high] numbers, got {short(args)}")
    low, high = args
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ConfigError(f"{where}: {kind} range [{low}, {high}] is empty (low must be below high)")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint takes integer bounds, got {short(args)}")
    return kind, [low, high]


def candidate_values(kind: str, args: list[Any]) -> list[Any]:
    """Values the distribution can produce that bound its range: each is built into a config to check it."""
    if kind == "choice":
        return list(args)
    if kind == "randint":
        return [args[0], args[1] - 1]
    return [float(args[0]), float(args[1])]


def check_space(space: dict[str, tuple[str, list[Any]]], base: dict[str, Any], config_cls: type) -> None:
    """Build `config_cls` from `base` with each candidate value of each key: the config's own checks run."""
    for key, (kind, args) in space.items():
        for value in candidate_values(kind, args):
            data = copy.deepcopy(base)
            set_dotted(data, key, value, f"search space key {key}")
            try:
                build(config_cls, data, "<search space>")
            except ConfigError as e:
                raise ConfigError(f"search space key {key} = {short(value)}: {_reason(e)}") from None


def _reason(error: ConfigError) -> str:
    return str(error).removeprefix("<search space>: ")


def to_tune(space: dict[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    from ray import tune

    make = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}
    return {key: tune.choice(args) if kind == "choice" else make[kind](*args) for key, (kind, args) in space.items()}


def apply_trial(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The base config dict with a trial's sampled values set (numpy scalars made plain Python)."""
    data = copy.deepcopy(base)
    for key, value in values.items():
        set_dotted(data, key, value.item() if hasattr(value, "item") else value, f"trial value {key}")
    return data
