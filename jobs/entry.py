"""The wrapper every verb's main() runs under: logging set up, user errors as one clear line."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from jobs.log import setup_logging
from jobs.typed_yaml import ConfigError


class UserError(Exception):
    """Bad input from the user (a path, a flag, a file): reported as one line, exit code 2."""


class JobFailed(Exception):
    """The job ran and failed for a reason it can name (e.g. faults beyond train.max_failures): one line, exit 1."""


def entry(verb: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            setup_logging()
            try:
                return main(sys.argv[1:] if argv is None else argv)
            except (ConfigError, UserError, FileNotFoundError) as e:
                logging.getLogger(f"lma3d.{verb}").debug("user error", exc_info=True)
                print(f"lma3d {verb}: error: {e}", file=sys.stderr)
                return 2
            except JobFailed as e:
                logging.getLogger(f"lma3d.{verb}").debug("job failed", exc_info=True)
                print(f"lma3d {verb}: {e}", file=sys.stderr)
                return 1

        return run

    return wrap
