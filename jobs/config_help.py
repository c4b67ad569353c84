"""`lma3d <verb> --help-config`: every config key the verb reads, with its type, its default and the first
sentence of its docstring (the string under the field in the dataclass that owns it)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import re
import textwrap
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

_TRACKING = ("workdir", "mlflow.tracking_uri")
_EXPERIMENT = ("dataset", "data.view", "data.setting", "mlflow.experiment")  # the MLflow experiment's name
USED: dict[str, tuple[str, ...]] = {
    "train": ("workdir", "dataset", "data", "model", "train", "mlflow"),
    "sweep": ("workdir", "dataset", "data", "model", "train", "mlflow"),
    # eval, export, predict, serve take the model's config from the model they load (model.* overrides apply)
    "eval": (*_TRACKING, *_EXPERIMENT, "data.shards", "data.on_corrupt_shard", "eval"),
    "export": (*_TRACKING, *_EXPERIMENT),
    "predict": _TRACKING,
    "serve": (*_TRACKING, "serve"),
}
"""Per verb, the config keys it reads: a section stands for all its keys."""

_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)\.(?:\s|$)")


@functools.cache
def _docstrings(cls: type) -> dict[str, str]:
    """{field: docstring} of dataclass `cls`, read from its source: the string literal right under each field."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        value = after.value if isinstance(after, ast.Expr) else None
        is_doc = isinstance(value, ast.Constant) and isinstance(value.value, str)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and is_doc:
            docs[node.target.id] = inspect.cleandoc(value.value)
    return docs


def _field(key: str) -> tuple[type, dataclasses.Field, Any]:
    """(owning dataclass, field, type hint) of dotted `key` in ExperimentConfig."""
    from jobs.experiment_config import ExperimentConfig

    cls: type = ExperimentConfig
    *sections, name = key.split(".")
    for section in sections:
        cls = get_type_hints(cls)[section]
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return cls, field, get_type_hints(cls)[name]


def field_doc(key: str) -> str:
    """The docstring of dotted config key `key` ("" if it has none)."""
    cls, field, _ = _field(key)
    return _docstrings(cls).get(field.name, "")


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args if a is not type(None))
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return "[" + ", ".join(_type_name(a) for a in args) + "]"
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    return getattr(tp, "__name__", str(tp))


def _default_text(value: Any) -> str:
    from jobs.typed_yaml import to_dict

    if value is None:
        return "unset"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(to_dict(value)) if isinstance(value, (list, tuple, dict)) else str(value)


def first_sentence(text: str) -> str:
    one_line = " ".join(text.split())
    parts = _SENTENCE_END.split(one_line, maxsplit=1)
    return parts[0] + "." if len(parts) > 1 else one_line


def keys_of(verb: str) -> list[str]:
    """The dotted config keys `verb` reads, in the config's order."""
    from jobs.experiment_config import ExperimentConfig
    from jobs.typed_yaml import flatten, to_dict

    used = USED[verb]
    return [k for k in flatten(to_dict(ExperimentConfig())) if any(k == u or k.startswith(u + ".") for u in used)]


def config_help(verb: str) -> str:
    """Two lines per key: `key  type T  default D`, then the first sentence of its docstring, indented."""
    lines = [f"Config keys of lma3d {verb} (set them in --config YAML or as key=value overrides):", ""]
    for key in keys_of(verb):
        cls, field, hint = _field(key)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        lines.append(f"{key}  type {_type_name(hint)}  default {_default_text(default)}")
        lines.append(f"    {first_sentence(field_doc(key)) or '(no docstring)'}")
    return "\n".join(lines)


class HelpConfig(argparse.Action):
    """`--help-config`: print config_help for the parser's verb (its prog `lma3d <verb>`) and exit, like --help."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        print(config_help(parser.prog.split()[-1]))
        parser.exit()
