"""A pickle that runs code when it is loaded: what an untrusted checkpoint, data file or request body could hold."""

from __future__ import annotations

from pathlib import Path


class TouchOnUnpickle:
    """Unpickling this runs Path(marker).touch(): the marker file existing proves that a loader ran foreign code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
