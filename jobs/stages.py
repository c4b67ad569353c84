"""Resumable stages for `lma3d demo`: a stage is recorded done in the work dir only after it succeeds,
so an interrupted demo (Ctrl-C) re-runs from the first stage that did not finish."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from jobs.entry import stage

log = logging.getLogger("lma3d.demo")


class StageLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, fn: Callable[[], dict | None]) -> dict:
        if name in self.done:
            log.info("stage %s: done in an earlier run (%.1f s), skipped", name, self.done[name]["seconds"])
            return self.done[name]
        log.info("stage %s: starting", name)
        start = time.perf_counter()
        with stage(f"demo stage {name}"):
            result = dict(fn() or {})
        result["seconds"] = round(time.perf_counter() - start, 1)
        self.done[name] = result
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=2))
        tmp.replace(self.path)  # atomic: a crash mid-write never marks a stage done
        log.info("stage %s: done in %.1f s", name, result["seconds"])
        return result
