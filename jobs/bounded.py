"""Bounded reads of the small files a verb is handed: config files and their `base:` chain, search spaces,
checkpoint metas. Every bound is decided before the read it bounds:

- a file is opened without blocking and checked with fstat: a FIFO, a device (`/dev/zero`) or a folder is
  refused unread, a file over its limit is refused from its size, and at most size + 1 bytes are ever read;
- YAML is composed (parsed into nodes, nothing constructed) under a nesting bound, then measured with its aliases
  expanded, each node once, before a single value is built: an alias bomb (billion laughs) is refused for the
  few hundred bytes it is, with the dotted key that holds it;
- values quoted in error lines are cut to a few dozen characters (`short`), so a line stays a line.
"""

from __future__ import annotations

import functools
import os
import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml

CONFIG_MAX_BYTES = 1 << 20
"""Config files, each `base:` file, search spaces: the shipped ones are a few KB."""
META_MAX_BYTES = 1 << 20
"""A checkpoint's lma3d_meta.json holds its resolved config: a few KB."""
YAML_MAX_DEPTH = 32
"""Nesting of a YAML document (aliases expanded): configs are four levels deep, search spaces five."""
YAML_MAX_NODES = 100_000
"""Scalars, lists and mappings of a YAML document with its aliases expanded (a config has a few hundred)."""


class ReadRefused(ValueError):
    """A file or document over a bound, or not a regular file: one line naming the file (and key)."""


def read_bytes(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of regular file `path`, refused (ReadRefused, naming `what` it is) from its size when over
    `limit`, and unread when it is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting for a writer
    except OSError as e:
        raise ReadRefused(f"{path}: cannot read {what} ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ReadRefused(f"{path}: cannot read {what} (Is a directory)")
        if not stat.S_ISREG(info.st_mode):
            raise ReadRefused(f"{path}: cannot read {what} (not a regular file)")
        if info.st_size > limit:
            raise ReadRefused(f"{path}: {what} is {info.st_size} bytes, over the {limit}-byte limit")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(info.st_size + 1)
    except OSError as e:
        raise ReadRefused(f"{path}: cannot read {what} ({e.strerror})") from None
    finally:
        os.close(fd)
    if len(data) != info.st_size:
        raise ReadRefused(f"{path}: {what} changed size while being read")
    return data


def read_text(path: str | Path, limit: int, what: str) -> str:
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReadRefused(f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start})") from None


_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 160, 60, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6


def short(value: Any, limit: int = 200) -> str:
    """repr(value) for an error line: containers and strings elided, at most `limit` characters. Never expands
    more of a value than it prints (a shared-reference structure costs what is shown)."""
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an int too long for str() (Python's 4300-digit limit)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = 400) -> str:
    """`text` (an error message that may quote a value) cut to `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_yaml(text: str, where: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """The data of YAML `text` (read by `loader`, a SafeLoader subclass), refused with one ReadRefused line
    naming `where` and the key when nested deeper than YAML_MAX_DEPTH or larger than YAML_MAX_NODES with its
    aliases expanded. yaml.YAMLError for text that is not YAML."""
    composer = _bounded(loader)(text)
    try:
        try:
            node = composer.get_single_node()
        except _TooDeep as deep:
            raise ReadRefused(f"{where}: {_at(deep.path)}nested deeper than {YAML_MAX_DEPTH} levels") from None
        except _TooMany as many:
            raise ReadRefused(f"{where}: {_at(many.path)}more than {YAML_MAX_NODES} YAML nodes") from None
        if node is None:
            return None
        _check_expanded(node, where)
        try:
            return composer.construct_document(node)
        except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
            raise ReadRefused(f"{where}: not valid YAML ({short(str(e))})") from None
    finally:
        composer.dispose()


class _TooDeep(Exception):
    def __init__(self, path: list[str]) -> None:
        self.path = path


class _TooMany(Exception):
    def __init__(self, path: list[str]) -> None:
        self.path = path


@functools.cache
def _bounded(loader: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    class Bounded(loader):  # type: ignore[misc, valid-type]
        """Composes under YAML_MAX_DEPTH and YAML_MAX_NODES (aliases not expanded yet), keeping the dotted key
        being composed for the error line: PyYAML's composer recurses once per level (100,000 `[` would be a
        RecursionError), and a 1 MiB flat list would cost seconds and hundreds of MB in nodes."""

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.keys: list[str | None] = []
            self.nodes = 0

        def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
            self.keys.append(index.value if isinstance(index, yaml.ScalarNode) else None)
            try:
                if len(self.keys) > YAML_MAX_DEPTH:
                    raise _TooDeep([k for k in self.keys if k is not None])
                if not self.check_event(yaml.AliasEvent):
                    self.nodes += 1
                    if self.nodes > YAML_MAX_NODES:
                        raise _TooMany([k for k in self.keys if k is not None])
                return super().compose_node(parent, index)
            finally:
                self.keys.pop()

    return Bounded


def _at(path: list[str]) -> str:
    dotted = ".".join(str(k) for k in path)
    return (dotted if len(dotted) <= 100 else dotted[:97] + "...") + ": " if path else ""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _check_expanded(root: yaml.Node, where: str) -> None:
    """Refuse a document whose aliases expand past YAML_MAX_NODES or YAML_MAX_DEPTH (or into themselves).

    Each distinct node is measured once (an alias is the same node object as its anchor), without recursion, so
    a billion laughs costs its few hundred nodes here."""
    measured: dict[int, tuple[int, int]] = {}  # id -> (nodes, depth) with aliases expanded
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            parts = [measured[id(c)] for c in _children(node)]
            measured[id(node)] = (1 + sum(n for n, _ in parts), 1 + max((d for _, d in parts), default=0))
            open_nodes.discard(id(node))
        elif id(node) in open_nodes:
            raise ReadRefused(f"{where}: an alias refers to a node that contains it")
        elif id(node) not in measured:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))

    def over(node: yaml.Node, level: int) -> bool:
        nodes, depth = measured[id(node)]
        return nodes > YAML_MAX_NODES or level + depth - 1 > YAML_MAX_DEPTH

    if not over(root, 1):
        return
    path, node, level = [], root, 1
    while isinstance(node, yaml.MappingNode):  # down to the innermost key whose value is over a bound
        inner = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and over(v, level + 1)]
        if not inner:
            break
        (key, node), level = inner[0], level + 1
        path.append(key.value)
    nodes, depth = measured[id(node)]
    if nodes > YAML_MAX_NODES:
        raise ReadRefused(
            f"{where}: {_at(path)}more than {YAML_MAX_NODES} YAML nodes once its aliases are expanded "
            f"({f'{nodes:.3g}' if nodes < 10**18 else 'over 1e18'}: an alias bomb?)"
        )
    raise ReadRefused(f"{where}: {_at(path)}nested deeper than {YAML_MAX_DEPTH} levels once its aliases are expanded")
