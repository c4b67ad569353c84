"""One writer at a time per output: a lock file beside the output, held with flock and naming its holder.

`lma3d shard --out X`, `lma3d export --out X` and `lma3d train` on a run folder hold `.X.lock` (in X's parent
folder) while they write. A second writer does not wait: it fails at once with one line naming the holder (pid,
host, start time), so that two commands never interleave their output. The kernel drops an flock when its process
dies, however it dies, so a lock file left by a crashed writer is free for the next one, which overwrites the stale
holder record. A writer that ends removes its lock file while it still holds the lock; a writer that locked a file
which is no longer the one at the path (removed or replaced meanwhile) lets it go and tries again, so two writers
never hold two different files. Local paths only (flock is per host, and works on NFSv4 mounts); outputs on object
storage are published atomically by their writers instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOLDER_BYTES = 4096  # the holder record is a few dozen bytes; never read more than this of a lock file


class OutputBusy(ValueError):
    """Another process is writing the same output."""


def lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, HOLDER_BYTES, 0) or b"{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record["started"])))
        return f"pid {int(record['pid'])} on {str(record['host'])[:64]} since {started}"
    except (ValueError, KeyError, TypeError, OverflowError, OSError):
        return "another process (its holder record is unreadable)"


@contextmanager
def exclusive(target: str | Path, what: str) -> Iterator[None]:
    """Hold the lock of `target` (an output folder or file) for the block; OutputBusy if another process holds it."""
    target = Path(target)
    lock = lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, target, what)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        try:
            os.unlink(lock)  # still held: whoever opened this file meanwhile finds it gone and starts over
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the flock


def _acquire(lock: Path, target: Path, what: str) -> int:
    """An open, flocked descriptor of the file that is at `lock` now."""
    for _ in range(100):  # each round means another writer ended right then; 100 in a row is not a race
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputBusy(
                f"{target}: another {what} writer holds {lock.name}: {holder}; wait for it to end "
                f"or choose another {what}"
            ) from None
        try:
            if os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous writer removed it after we opened it
    raise OutputBusy(f"{target}: {lock.name} keeps being replaced; is another {what} writer starting and ending?")
