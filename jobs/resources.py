"""Files the verbs use beside the code: the shipped configs and the real PIAD sample.

A source checkout (or an editable install) has them in the repository; `pip install .` copies them to
`<prefix>/share/lmaffordance3d/` (pyproject's data-files), so `lma3d demo` and the serving page's sample work in
any folder either way.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]
INSTALLED_ROOT = Path(sysconfig.get_path("data")) / "share" / "lmaffordance3d"
PIAD_SAMPLE = "tests/fixtures/piad"


def project_file(relative: str, roots: tuple[Path, ...] = (SOURCE_ROOT, INSTALLED_ROOT)) -> Path:
    """`relative` (e.g. configs/demo.yaml) under the source tree, else under the installed share folder."""
    for root in roots:
        if (root / relative).exists():
            return root / relative
    raise FileNotFoundError(f"{relative}: neither in {roots[0]} nor in {roots[-1]} (reinstall lmaffordance3d)")


CONFIGS = "configs"
SPACES = "configs/sweeps"
_SUFFIXES = (".yaml", ".yml")


def shipped_names(folder: str = CONFIGS, roots: tuple[Path, ...] = (SOURCE_ROOT, INSTALLED_ROOT)) -> list[str]:
    """The names `--config NAME` (folder `configs`) or `--search NAME` (`configs/sweeps`) accept: the shipped
    YAML files under `folder`, relative and without `.yaml`. Search spaces and `base.yaml` (a recipe other
    configs extend) are not experiments and not listed."""
    for root in roots:
        top = root / folder
        if top.is_dir():
            spaces = root / SPACES
            paths = [p for p in top.rglob("*.yaml") if p.stem != "base" and (top == spaces or spaces not in p.parents)]
            return sorted(str(p.relative_to(top).with_suffix("")) for p in paths)
    return []


def find_config(given: str, folder: str = CONFIGS, roots: tuple[Path, ...] = (SOURCE_ROOT, INSTALLED_ROOT)) -> Path:
    """`given` as a path if that file exists, else the shipped file a name without `.yaml` names (`demo`,
    `agpil/full_seen`), from any folder; otherwise a FileNotFoundError listing the shipped names, in one line."""
    path = Path(given).expanduser()
    if path.exists() and not path.is_dir():  # a FIFO or a device too: its reader refuses it by name, unread
        return path
    is_name = not given.endswith(_SUFFIXES) and not path.is_absolute() and ".." not in path.parts
    if is_name and given in shipped_names(folder, roots) + (["agpil/base"] if folder == CONFIGS else []):
        return project_file(f"{folder}/{given}.yaml", roots)
    what = "search space" if folder == SPACES else "config"
    names = ", ".join(shipped_names(folder, roots)) or "none found (reinstall lmaffordance3d)"
    raise FileNotFoundError(f"{given}: no such {what} file, nor a shipped {what} name; shipped: {names}")
