"""The project's log: its own records at INFO, other libraries' only from WARNING (Ray Train's per-report INFO
lines, logged on loggers named after its files, stay out)."""

from __future__ import annotations

import logging

from jobs.log import setup_logging


def test_only_project_records_and_other_libraries_warnings_are_logged(capfd):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(rank=0, level="INFO")
        logging.getLogger("lma3d.train").info("step 1/6")
        logging.getLogger("/site-packages/ray/train/v2/_internal/execution/context.py").info("Reporting result 1")
        logging.getLogger("ray.train").info("Checkpoint successfully created")
        logging.getLogger("somelib.client").warning("a worker is gone")  # ray's own loggers do not propagate
        logging.info("DeepSpeed op built successfully")  # libraries logging on the root logger
        lines = capfd.readouterr().err.strip().splitlines()
    finally:
        root.handlers[:], root.level = saved
    assert [line.split(" | ", 3)[3] for line in lines] == [
        "lma3d.train: step 1/6", "somelib.client: a worker is gone", "root: DeepSpeed op built successfully",
    ]  # fmt: skip
    assert all(line.startswith("[lma3d] ") and " | rank0 | " in line for line in lines)
