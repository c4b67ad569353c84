"""The one rule every Ray job of this project uses to get a Ray session."""

from __future__ import annotations

import os
from typing import Any


def ensure_ray(address: str | None = None, runtime_env: dict[str, Any] | None = None) -> bool:
    """Join `address` (with `runtime_env`), else $RAY_ADDRESS (inside `ray job submit`), else start a local
    cluster. An already initialised session is reused. True when this call started the session (so the caller
    shuts it down), False when it was already there."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        # The dashboard (on loopback, next free port from 8265) serves the state API that Ray Train's
        # placement-group cleaner polls: without it the cleaner logs a warning every few seconds and cannot work.
        ray.init(dashboard_host="127.0.0.1")
    return True
