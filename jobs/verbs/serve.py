"""lma3d serve: the model behind an HTTP endpoint (Ray Serve) and a page that shows its heat map in 3D.

    lma3d serve --model models:/lma3d-demo@champion          (then open http://127.0.0.1:8000/)
    lma3d serve --model work/models/demo --port 8080 --replicas 2 --max-batch-size 16
    lma3d serve --model models:/lma3d@champion --address auto serve.max_replicas=4      (an existing Ray cluster)

--model takes what lma3d predict and lma3d eval take (exported folder, checkpoint, run id, models:/name@alias);
with models:/name@alias every replica follows the alias (serve.alias_poll_s) and reloads when it moves, without
dropping requests. Requests of concurrent clients are batched into one forward. API: GET /healthz,
POST /predict (JSON or multipart), GET / (the page); see docs/serving.md. Binds 127.0.0.1 unless --host.
Runs until Ctrl-C (or SIGTERM), which stops the application (and the local Ray it started).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path

from jobs.entry import UserError, entry
from jobs.experiment_config import add_config_args, model_overrides, resolve_config

FLAGS = {"host": str, "port": int, "replicas": int, "max_batch_size": int, "batch_wait_ms": float}
APP_NAME = "lma3d"


@entry("serve")
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lma3d serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument("--model", required=True, help="exported folder | models:/name@alias | checkpoint | run id")
    parser.add_argument("--host", help="address to bind (default serve.host: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default serve.port: 8000)")
    parser.add_argument("--replicas", type=int, help="model replicas (default serve.replicas: 1)")
    parser.add_argument("--max-batch-size", type=int, help="requests per forward (default serve.max_batch_size: 8)")
    parser.add_argument("--batch-wait-ms", type=float, help="wait for a fuller batch (default serve.batch_wait_ms)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    args = parser.parse_args(argv)
    for name in FLAGS:
        if getattr(args, name) is not None:
            args.overrides.append(f"serve.{name}={getattr(args, name)}")
    cfg = resolve_config(args, model_from_source=True)
    _check_spec(args.model)
    return serve_until_stopped(args.model, cfg, model_overrides(args), args.address)


def _check_spec(spec: str) -> None:
    """A local folder that is not there fails here, before Ray starts; the rest is checked by the replicas."""
    from jobs.loading import MLFLOW_URI, RUN_ID

    if MLFLOW_URI.match(spec) or RUN_ID.match(spec) or ("://" in spec and not spec.startswith("file://")):
        return
    if not Path(spec.removeprefix("file://")).is_dir():
        raise UserError(f"{spec}: no such folder (expected an exported model, a checkpoint, a run id or models:/…)")


def serve_until_stopped(spec: str, cfg, model_overrides: list[str], address: str | None) -> int:
    from ray import serve

    from jobs.cluster_storage import on_cluster
    from jobs.serving.app import application
    from pipeline.ray_session import ensure_ray

    # Only a Ray this command started itself is ours to shut down (Serve with it); on a cluster (--address, or
    # $RAY_ADDRESS inside `lma3d submit serve`) only our application is deleted at the end.
    own_ray = ensure_ray(address) and not on_cluster(address)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())  # `lma3d submit --stop`, kill, KubeRay
    try:
        serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        try:
            serve.run(application(spec, cfg.tracking_uri, cfg.serve, model_overrides), name=APP_NAME,
                      route_prefix="/")  # fmt: skip
        except RuntimeError as e:  # a replica that cannot load the model fails the deployment
            raise UserError(f"the application did not start: {_reason(str(e), _deployment_messages())}") from None
        url = f"http://{cfg.serve.host}:{cfg.serve.port}/"
        print(f"serving {spec} at {url}  (POST {url}predict, GET {url}healthz; Ctrl-C stops)", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:  # Ctrl-C while serving, or while the application was still starting
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        print("stopping…", file=sys.stderr, flush=True)
        _stop_serving(own_ray)
    return 0


def _deployment_messages() -> str:
    """What Serve recorded about our deployment (a failed replica's traceback), '' if it cannot say."""
    from ray import serve

    try:
        app = serve.status().applications[APP_NAME]
        return "\n".join(d.message for d in app.deployments.values())
    except Exception:  # noqa: BLE001 - only used to word an error that is already being raised
        return ""


def _reason(message: str, details: str = "") -> str:
    """The replica's own one-line error (a UserError naming the model) out of Serve's failure texts."""
    found = re.findall(r"UserError: (.+)", f"{message}\n{details}")
    return found[-1].strip() if found else message.strip().splitlines()[-1]


def _stop_serving(own_ray: bool) -> None:
    """Delete our application (its replicas finish the requests they hold), then shut down the Ray we started.
    serve.shutdown() is not used: its controller is killed while Ray still retries the controller's
    graceful_shutdown task, which printed a `Task ServeController.graceful_shutdown failed` line at every
    clean stop; ray.shutdown() ends the controller and proxies with the rest of our Ray."""
    import ray
    from ray import serve

    try:
        serve.delete(APP_NAME)
    finally:
        if own_ray:
            ray.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
