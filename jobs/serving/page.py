"""What GET serves besides the API: the page, its scripts (plotly.js from the `plotly` package, so the page
needs no network) and the PIAD sample the page can send in one click."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

STATIC = Path(__file__).parent / "static"
SAMPLE_INSTRUCTION = "Lift the bag by its handles."
SAMPLE_FILES = {"image.jpg": "Img_Test_Bag_lift_1.jpg", "points.txt": "Point_Test_Bag_1.txt"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    cache_control: str = "no-cache"


def sample_dir() -> Path | None:
    """$LMA3D_SAMPLE_DIR, else the PIAD sample this package ships (jobs.resources: the repository or the installed
    share folder), else tests/fixtures/piad of the current folder; None when none holds the sample."""
    from jobs.resources import INSTALLED_ROOT, PIAD_SAMPLE, SOURCE_ROOT

    candidates = [Path(os.environ["LMA3D_SAMPLE_DIR"])] if os.environ.get("LMA3D_SAMPLE_DIR") else []
    candidates += [root / PIAD_SAMPLE for root in (SOURCE_ROOT, INSTALLED_ROOT, Path.cwd())]
    for folder in candidates:
        if all((folder / name).is_file() for name in SAMPLE_FILES.values()):
            return folder
    return None


@functools.cache
def plotly_js() -> bytes:
    import plotly

    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()


def asset(path: str) -> Asset | None:
    """The GET route `path`, or None when there is none."""
    if path in ("/", "/index.html"):
        return Asset((STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
    if path == "/static/plotly.min.js":
        return Asset(plotly_js(), "text/javascript; charset=utf-8", "public, max-age=86400")
    if path == "/sample/instruction.txt":
        return Asset(SAMPLE_INSTRUCTION.encode(), "text/plain; charset=utf-8")
    name = path.removeprefix("/sample/")
    folder = sample_dir()
    if name in SAMPLE_FILES and folder is not None:
        media = "image/jpeg" if name.endswith(".jpg") else "text/plain; charset=utf-8"
        return Asset((folder / SAMPLE_FILES[name]).read_bytes(), media)
    return None
