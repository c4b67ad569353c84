"""The processes of a `lma3d serve` started by tests/serve_process.py (its own session: `start_new_session`), found
through /proc: the replica and the HTTP proxy, capped and measured.

Ray maps its object store into every worker, so a worker's address space is gigabytes before it allocates anything:
a fixed cap like `prlimit --as=6G` on the whole command stops Ray from starting. Each process is instead capped at
its own address space when the cap is put on plus HEADROOM, so a memory bomb that gets through fails there (a
MemoryError, a 500) instead of taking the machine.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

HEADROOM = 3 << 30


def _status(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def session_processes(session: int, title: str) -> list[int]:
    """PIDs in session `session` whose command line starts with `title` (Ray sets `ray::ServeReplica:…`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session:
                continue
            command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        if command.startswith(title):
            found.append(int(entry.name))
    return sorted(found)


def cap(pid: int, headroom: int = HEADROOM) -> int:
    """Limit `pid`'s address space to what it holds now plus `headroom`; the cap in bytes."""
    limit = _status(pid, "VmSize") + headroom
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
    return limit


def reset_peak(pid: int) -> None:
    """Start measuring `pid`'s peak resident memory from now (VmHWM := VmRSS)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mb(pid: int) -> float:
    return _status(pid, "VmHWM") / 2**20


def resident_mb(pid: int) -> float:
    return _status(pid, "VmRSS") / 2**20
