"""DeepSpeed's CPU ops (the shared-memory comm op, CPU Adam), built once per machine, never waited on forever.

DeepSpeed compiles these with torch's cpp_extension on first use, guarded by torch's FileBaton: a `lock` file in
the op's build folder, created with O_EXCL and deleted when the build ends. A process killed mid-build (Ray's
memory monitor, a lost node, Ctrl-C) leaves the file behind, and every later load on that machine sleeps until
it disappears, that is forever: the run hangs after "starting DeepSpeed" with no error (seen when a test killed a
worker during the build). So every lma3d worker loads the ops itself, before DeepSpeed would, while holding an
flock on `<extensions folder>/.lma3d-build.lock`: the kernel frees an flock when its holder dies, and while a
worker holds it no other lma3d build runs, so a baton file it finds is a dead build's and is removed (logged).

torch runs the `ninja` first on the PATH. Where the machine has its own (Debian's 1.11, build log v5) beside the
environment's (the `ninja` package DeepSpeed depends on, 1.13, log v7), each reads the other's log as unreadable and
rebuilds everything: a process with the venv's bin on its PATH (a `ray start` node) and one without (a script run as
.venv/bin/python) rebuilt the comm op, 50 CPU-seconds, each time they took turns: 8 times in one test run. The
loads here always run the environment's ninja.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("lma3d.train")
SHM_COMM = "ShareMemCommBuilder"
CPU_ADAM = "CPUAdamBuilder"


def build_folder(name: str) -> Path:
    """torch's build folder of extension `name` (TORCH_EXTENSIONS_DIR, else its per-Python default)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def load_cpu_ops(builders: tuple[str, ...]) -> None:
    """Load (building if needed) the named DeepSpeed op builders of the CPU accelerator, one builder at a time per
    machine, after removing a baton left by a killed build. Nothing for a builder DeepSpeed does not offer."""
    from deepspeed.accelerator import get_accelerator

    for name in builders:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not builder.is_compatible():
            continue
        folder = build_folder(builder.name)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / ".lma3d-build.lock", "a+") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            baton = folder / "lock"
            if baton.exists():
                age = time.time() - baton.stat().st_mtime
                log.warning("removing %s, left %.0f s ago by a build of %s that did not finish (its process died)",
                            baton, age, builder.name)  # fmt: skip
                baton.unlink(missing_ok=True)
            started = time.monotonic()
            with _environment_ninja():
                builder.load(verbose=False)
            if time.monotonic() - started > 5:
                log.info("built DeepSpeed's %s op in %.0f s (once per machine)", builder.name,
                         time.monotonic() - started)  # fmt: skip


@contextlib.contextmanager
def _environment_ninja() -> Iterator[None]:
    """PATH with the `ninja` package's binary first, for the duration (DeepSpeed keeps a loaded op: no later load)."""
    try:
        import ninja
    except ImportError:  # torch then needs a ninja on the PATH, as DeepSpeed says
        yield
        return
    saved = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join(p for p in (ninja.BIN_DIR, saved) if p)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = saved


def cpu_ops_for(use_gpu: bool, cpu_adam: bool) -> tuple[str, ...]:
    """The CPU ops a worker's DeepSpeed will load: the comm op on the CPU accelerator, CPU Adam with offload."""
    if use_gpu or os.environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        return (CPU_ADAM,) if cpu_adam else ()
    return (SHM_COMM, CPU_ADAM) if cpu_adam else (SHM_COMM,)
