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
