"""The wrapper every verb's main() runs under: logging set up, user errors as one clear line, and any other
failure (a Ray stage, DeepSpeed, a bug) as one summary line naming the stage, with the traceback in a log file.

A failed Ray job's exception carries every worker's remote traceback (hundreds of lines); the terminal gets the
stage, the root cause's type and first line, and where the whole story is: $LMA3D_LOG_DIR (default
<tmp>/lma3d-logs)/<verb>-<time>-<pid>.log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from jobs.log import setup_logging
from jobs.typed_yaml import ConfigError

_STAGE_ATTR = "_lma3d_stage"


class UserError(Exception):
    """Bad input from the user (a path, a flag, a file): reported as one line, exit code 2."""


class JobFailed(Exception):
    """The job ran and failed for a reason it can name (e.g. faults beyond train.max_failures): one line, exit 1."""


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the part of a job that runs inside: a failure escaping it is reported as `<name> failed`."""
    try:
        yield
    except Exception as e:
        if not hasattr(e, _STAGE_ATTR):  # the innermost stage names the failure
            with contextlib.suppress(AttributeError, TypeError):
                setattr(e, _STAGE_ATTR, name)
        raise


def causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and everything it wraps: chained exceptions, Ray's task causes, Ray Train's worker, controller and
    health-check failures."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        wrapped = [
            getattr(e, name, None) for name in ("_base_exc", "cause", "controller_failure", "health_check_failure")
        ]
        todo += [w for w in wrapped if isinstance(w, BaseException)]
        todo += list((getattr(e, "worker_failures", None) or {}).values())
        todo += [e.__cause__, e.__context__]


def log_dir() -> Path:
    return Path(os.environ.get("LMA3D_LOG_DIR") or Path(tempfile.gettempdir(), "lma3d-logs"))


def _write_traceback(verb: str, error: BaseException) -> Path:
    folder = log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{verb}-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    parts = [f"lma3d {verb} {' '.join(sys.argv[1:])}\n\n", *traceback.format_exception(error)]
    for inner in list(causes(error))[1:]:  # remote tracebacks Ray keeps as text, not as __cause__
        text = getattr(inner, "_traceback_str", None) or getattr(inner, "traceback_str", None)
        if text:
            parts.append(f"\n--- wrapped {type(inner).__name__} ---\n{text}\n")
    path.write_text("".join(parts))
    return path


def root_cause(error: BaseException) -> str:
    """The innermost cause's type and first line (Ray's wrappers only say that something failed)."""
    chain = list(causes(error))
    root = chain[-1]
    for e in chain:  # the first non-wrapper in breadth order: the user-level exception a worker raised
        if not type(e).__module__.startswith("ray."):
            root = e
            break
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    return f"{type(root).__name__}: {lines[0] if lines else ''}".strip()


def failure_line(verb: str, error: BaseException) -> str:
    where = getattr(error, _STAGE_ATTR, None) or f"lma3d {verb}"
    try:
        log_file = f"traceback in {_write_traceback(verb, error)}"
    except OSError as e:
        log_file = f"traceback could not be written to {log_dir()} ({e.strerror})"
    return f"lma3d {verb}: error: {where} failed: {root_cause(error)} ({log_file})"


def entry(verb: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            setup_logging()
            try:
                return main(sys.argv[1:] if argv is None else argv)
            except (ConfigError, UserError, FileNotFoundError) as e:
                logging.getLogger(f"lma3d.{verb}").debug("user error", exc_info=True)
                for line in str(e).splitlines() or [""]:  # several problems of one input: one line each
                    print(f"lma3d {verb}: error: {line}", file=sys.stderr)
                return 2
            except BrokenPipeError:  # `lma3d <verb> --help-config | head`: jobs.cli exits quietly
                raise
            except JobFailed as e:
                logging.getLogger(f"lma3d.{verb}").debug("job failed", exc_info=True)
                print(f"lma3d {verb}: {e}", file=sys.stderr)
                return 1
            except Exception as e:  # noqa: BLE001 - infrastructure failure: one line here, the story in a file
                print(failure_line(verb, e), file=sys.stderr)
                return 1

        return run

    return wrap
