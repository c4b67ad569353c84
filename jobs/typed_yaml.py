"""YAML → typed dataclasses, with `key.sub=value` overrides.

Every error names the key and the file it came from: unknown keys, wrong types and bad
literals fail loudly instead of being ignored (the LAVIS/omegaconf pitfall).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from jobs.bounded import CONFIG_MAX_BYTES, ReadRefused, clip, load_yaml, read_text, short

T = TypeVar("T")
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass schema."""


class _NumberLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) reading floats as YAML 1.2 and JSON do: in 1.1 `1e-5` and `1.0e5` (an
    exponent without a dot, or without a sign) are strings, while `--set train.lr=3e-4` is a number to the user."""


_NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def parse_yaml(text: str, where: str = "YAML") -> Any:
    """YAML text -> plain data, with one number grammar for config files, overrides and search spaces. Bounded
    (jobs/bounded.py): nested at most 32 deep, at most 100,000 nodes with its aliases expanded, else a one-line
    ConfigError naming `where` and the key."""
    try:
        return load_yaml(text, where, _NumberLoader)  # a SafeLoader subclass: no object construction
    except ReadRefused as e:
        raise ConfigError(str(e)) from None


BASE_KEY = "base"
"""A config file may name another (`base: recipe.yaml`, relative to itself) whose values it extends."""
MAX_BASE_DEPTH = 16
"""Files in a `base:` chain (the shipped configs use two)."""


def load(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Read `path` (or start from defaults), apply `overrides`, and build `cls`."""
    return build(cls, load_mapping(path, overrides), str(path) if path is not None else "<defaults>")


def load_mapping(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """What `path` (with its `base:` chain) and `overrides` set, as a mapping: the keys they leave out are absent,
    so values derived from others (model.fp1_mlp from model.emb_dim) are derived again when it is built."""
    data: dict[str, Any] = read_layers(Path(path)) if path is not None else {}
    for item in overrides:
        apply_override(data, item)
    return data


def read_layers(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of `path`, on top of its `base:` file's (and so on, at most MAX_BASE_DEPTH files): sections
    merge key by key."""
    layers, current, seen = [], path, {*seen}
    while True:
        data = _read_mapping(current)
        base = data.pop(BASE_KEY, None)
        layers.append(data)
        if base is None:
            break
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{current}: {BASE_KEY} must be a file name, got {short(base)}")
        seen.add(current.resolve())
        base_path = (current.parent / base).resolve()
        if base_path in seen:
            raise ConfigError(f"{current}: {BASE_KEY} {short(base)} leads back to itself")
        if len(layers) == MAX_BASE_DEPTH:
            raise ConfigError(f"{path}: {BASE_KEY}: chain more than {MAX_BASE_DEPTH} files deep (at {current})")
        current = base_path
    merged: dict[str, Any] = {}
    for data in reversed(layers):
        merged = _merge(merged, data)
    return merged


def _read_mapping(path: Path) -> dict[str, Any]:
    try:  # the size bound decided before reading; a FIFO or /dev/zero is refused unread
        text = read_text(path, CONFIG_MAX_BYTES, "config file")
    except ReadRefused as e:
        raise ConfigError(str(e)) from None
    try:
        data = parse_yaml(text, str(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(under)
    for key, value in over.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both_sections else value
    return merged


def apply_override(data: dict[str, Any], item: str) -> None:
    """`a.b.c=value` sets data['a']['b']['c'] to the YAML-parsed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {short(item)}: expected key.sub=value")
    try:
        value = parse_yaml(raw, f"override {clip(key, 100)}") if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    set_dotted(data, key, value, f"override {short(item)}")


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """data['a']['b']['c'] = value for key `a.b.c` (sections created on the way); `where` names the source."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {part!r} is not a section")
    node[parts[-1]] = value


def build(cls: type[T], data: dict[str, Any], where: str, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"{prefix}{k}" for k in unknown)
        raise ConfigError(f"{where}: unknown key(s) {names}; valid keys: {', '.join(sorted(fields))}")
    kwargs = {name: _coerce(hints[name], value, where, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {clip(str(e))}") from None


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key} must be one of {list(args)}, got {short(value)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list, got {short(value)}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: {key} must have {len(args)} items, got {len(value)}")
            items = [_coerce(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            items = [_coerce(args[0], v, where, f"{key}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {short(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            value = float(value)  # YAML 1.1 reads `3e-4` (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {short(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {key} must be a finite number, got {short(value)}") from None
        if not math.isfinite(number):  # no setting of this project means anything with .nan or .inf
            raise ConfigError(f"{where}: {key} must be a finite number, got {short(value)}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {short(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {short(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {short(value)}")
        return value
    raise ConfigError(f"{where}: {key} has unsupported type {tp!r}")


def to_dict(obj: Any) -> Any:
    """Dataclass → plain dict/list tree (tuples become lists), for YAML dumps and MLflow params."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}: the dotted keys MLflow params and overrides use."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


__all__ = ["ConfigError", "apply_override", "build", "dump", "flatten", "load", "load_mapping", "parse_yaml", "to_dict"]
