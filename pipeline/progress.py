"""Progress on long work: a tqdm bar on a terminal, a log line every `every` items otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(
    items: Iterable[T], total: int | None, desc: str, every: int = 0, logger: logging.Logger | None = None
) -> Iterator[T]:
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, dynamic_ncols=True)
        return
    log = logger or logging.getLogger("lma3d.progress")
    every = every or max(1, (total or 1000) // 10)
    start = time.perf_counter()
    n = 0
    for n, item in enumerate(items, 1):
        yield item
        if n % every == 0:
            rate = n / max(time.perf_counter() - start, 1e-9)
            log.info("%s: %d/%s (%.1f/s)", desc, n, total if total is not None else "?", rate)
