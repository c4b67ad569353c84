"""The one rule every Ray job of this project uses to get a Ray session."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

# Ray's switch for "this node is a single machine" (its default on macOS and Windows): with it off, the node's IP
# is 127.0.0.1 and every Ray process binds loopback. On Linux Ray otherwise takes the routable IP, and then the
# GCS, raylet, object manager, core workers and dashboard agent listen on all interfaces.
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(address: str | None = None, runtime_env: dict[str, Any] | None = None, dashboard: bool = True) -> bool:
    """Join `address` (with `runtime_env`), else $RAY_ADDRESS (inside `ray job submit`), else start a local
    cluster bound to loopback, with its dashboard unless `dashboard` is False. An already initialised session is
    reused. True when this call started the session (so the caller shuts it down), False when it was already
    there."""
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
        # A job without placement groups can go without it: it starts a second faster (README, Data).
        options = {"dashboard_host": "127.0.0.1"} if dashboard else {"include_dashboard": False}
        with _loopback_node():
            ray.init(_node_ip_address="127.0.0.1", **options)
    return True


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Make the local Ray started inside this block a loopback-only node (docs/cluster.md, "Ports of a local Ray").

    `_node_ip_address="127.0.0.1"` alone is not enough: ray.init replaces a loopback address by the routable one
    unless Ray's single-machine switch is on. The environment variable reaches the processes ray.init spawns (GCS,
    raylet, dashboard, agents; the raylet passes it to workers); the module constant is what this process already
    read at import. Both are restored afterwards, so a later ray.init(address=...) in this process is unaffected."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(_SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = saved_env
