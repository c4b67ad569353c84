"""What a sweep starts from, resolved on the driver before Ray starts (DESIGN.md, "Resolve once").

Each trial is built in Ray Tune's own folder for that trial from `base` (the mapping the user's config files
and overrides give) with the trial's values set: relative paths are made absolute here, against the folder the
command was run from, as `lma3d train` does; and every value the search space can produce is built into the full
experiment config here (each section's rules, the rules across sections, the ones the model's modules enforce),
so a value a trial would die of is one line naming key and value, before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.config_paths import PATH_KEYS, absolute_mapping, absolute_value
from jobs.experiment_config import ExperimentConfig
from jobs.sweeping.space import check_space, read_space
from jobs.typed_yaml import build

Space = dict[str, tuple[str, list[Any]]]


@dataclass(frozen=True)
class SweepInputs:
    cfg: ExperimentConfig
    """The base config with its paths absolute: where the sweep's folder and MLflow runs go."""
    base: dict[str, Any]
    """The mapping every trial sets its values on and builds: what the user set, paths absolute; keys left out stay
    out, so that a value derived from another (model.fp1_mlp from model.emb_dim) follows the trial's value."""
    space: Space
    """The search space, its path values (a choice of data.shards) absolute."""


def resolve_sweep(cfg: ExperimentConfig, data: dict[str, Any], search: str | Path) -> SweepInputs:
    """The inputs of a sweep over config `cfg` (built from `data`, experiment_config.resolve_config_mapping) and
    the search space file `search`; a ConfigError naming the key and the value otherwise."""
    base = absolute_mapping(data, cfg)
    space = {key: _absolute_values(key, kind, args) for key, (kind, args) in read_space(search).items()}
    check_space(space, base, ExperimentConfig)
    return SweepInputs(build(ExperimentConfig, base, "<sweep base>"), base, space)


def _absolute_values(key: str, kind: str, args: list[Any]) -> tuple[str, list[Any]]:
    if key in PATH_KEYS and kind == "choice":
        return kind, [absolute_value(key, value) for value in args]
    return kind, args


def check_trial_inputs(inputs: SweepInputs) -> None:
    """Every file a trial reads and where it writes (what `lma3d train` checks before it starts), checked on the
    driver: for the base config, or for each path a path key of the space chooses (a choice of data.shards)."""
    from jobs.sweeping.space import apply_trial
    from jobs.training.launcher import check_inputs

    chosen = [(key, value) for key, (kind, args) in inputs.space.items() if key in PATH_KEYS and kind == "choice"
              for value in args]  # fmt: skip
    configs = [build(ExperimentConfig, apply_trial(inputs.base, {key: value}), f"<search space key {key}>")
               for key, value in chosen] or [inputs.cfg]  # fmt: skip
    for cfg in configs:
        check_inputs(cfg)
