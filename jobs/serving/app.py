"""The Ray Serve application of `lma3d serve`: one deployment, every route, requests batched across clients.

    GET  /healthz          200 {"status": "ok", "model": {...}, "stats": {...}} once the replica has loaded
    POST /predict          JSON or multipart (jobs/serving/api.py) -> {"heatmap": [...], "model": {...}, "took_ms"}
    GET  /                 the page (jobs/serving/page.py); /static/… its scripts, /sample/… the PIAD sample

Bad requests get 400 {"error": "one line"}. `build(args)` is the application builder a Serve config file or a
KubeRay RayService names (import_path: jobs.serving.app:build).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jobs.serving import page
from jobs.serving.api import BadRequest, PredictRequest, Upload, one_line, parse_form, parse_json
from jobs.serving.batch_predict import HeatMap, Prepared
from jobs.serving.predictor import Loaded, Predictor
from jobs.serving.serve_config import ServeConfig

log = logging.getLogger("lma3d.serve")
DEPLOYMENT = "lma3d"
DRAIN_FACTOR = 8
LARGE_BODY = 1 << 20
LARGE_POINTS_FACTOR = 16
"""A body over LARGE_BODY, or more points than LARGE_POINTS_FACTOR x the model's, is parsed, prepared and answered on
a thread of its own: farthest-point sampling 500,000 points takes seconds, and the requests behind it should not
wait for that (they share the forward only)."""
T = TypeVar("T")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error of one line with no Python object repr in it (`<_io.BytesIO object at 0x7f...>` says nothing
    to a client and tells it about the server's memory)."""
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the upload", one_line(message))
    return JSONResponse({"error": text}, status_code=status, headers=headers)


class AffordanceServer:
    """One replica: the model loaded once, a poller following a registry alias, the routes."""

    def __init__(self, spec: str, tracking_uri: str, overrides: list[str], serve_cfg: dict[str, Any]) -> None:
        import torch

        self.cfg = ServeConfig(**serve_cfg)
        self._stop = threading.Event()
        self._prepare_pool = ThreadPoolExecutor(self.cfg.prepare_threads, thread_name_prefix="lma3d-prepare")
        self._large_pool = ThreadPoolExecutor(1, thread_name_prefix="lma3d-large")
        self.large_lane = 0  # tasks queued or running on the large-request thread (event loop only)
        torch.set_num_threads(self.cfg.threads_per_replica or max(1, int(self.cfg.replica_cpus)))
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        self.predictor = Predictor(spec, tracking_uri, overrides, "cuda" if self.cfg.use_gpu else "cpu")
        self.max_body = int(self.cfg.max_body_mb * 2**20)
        self.max_buffered = int(self.cfg.max_buffered_mb * 2**20)
        self.buffered = 0  # bytes of request bodies held now; only the event loop touches it
        self.predict_batch.set_max_batch_size(self.cfg.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_ms / 1000)
        # Serve forms a batch from what arrives within batch_wait_ms even while the last batch is still running,
        # so requests arriving during a forward would queue behind it as many small batches (Ray 2.60: batch
        # sizes 1-2 at 8 clients). Holding them until the forward ends lets them leave as one batch.
        self._forward_idle = asyncio.Event()
        self._forward_idle.set()
        if self.predictor.alias and self.cfg.alias_poll_s > 0:
            threading.Thread(target=self._follow_alias, name="lma3d-alias", daemon=True).start()

    def _follow_alias(self) -> None:
        """Reloads happen here, off the request path: requests keep flowing to the old model until the swap."""
        while not self._stop.wait(self.cfg.alias_poll_s):
            try:
                self.predictor.follow()
            except Exception as e:  # noqa: BLE001 - a registry hiccup must not stop serving the current model
                log.warning("following %s failed (keeping the current model): %s", self.predictor.spec, e)

    def __del__(self) -> None:
        self._stop.set()
        self._prepare_pool.shutdown(wait=False)
        self._large_pool.shutdown(wait=False)

    async def beside_forward(self, fn: Callable[..., T], *args: Any, large: bool = False) -> T:
        """fn(*args) on the prepare threads (`large`: the large-request thread), so the event loop and the forward
        keep going."""
        if not large:
            return await asyncio.get_running_loop().run_in_executor(self._prepare_pool, fn, *args)
        self.large_lane += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._large_pool, fn, *args)
        finally:
            self.large_lane -= 1

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.removeprefix(request.scope.get("root_path", "").rstrip("/")) or "/"
        method = request.method
        if path == "/predict":
            return await self.predict(request) if method == "POST" else error(405, "use POST /predict")
        if method != "GET":
            return error(405, f"{method} {path}: only GET here (POST /predict)")
        if path == "/healthz":
            health = self.predictor.health()
            health["stats"].update(large_lane=self.large_lane, buffered_bytes=self.buffered)
            return JSONResponse(health)
        found = page.asset(path)
        if found is None:
            return error(404, f"no such path {path} (try /, /healthz, POST /predict)")
        return Response(found.body, media_type=found.media_type, headers={"cache-control": found.cache_control})

    async def predict(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            parsed, large = await self.read_request(request)
            large = large or len(parsed.points) > LARGE_POINTS_FACTOR * self.predictor.loaded.info["num_points"]
            loaded, prepared = await self.beside_forward(self.predictor.prepare, parsed, large=large)
            loaded, heat = await self.forward((loaded, prepared))
            # A 500,000-point answer takes a second to encode: not on the event loop, which serves every client.
            answer = await self.beside_forward(_answer, loaded, heat, parsed.return_points, started, large=large)
            return Response(answer, media_type="application/json")
        except BadRequest as e:
            return error(400, str(e))
        except (BodyTimeout, ClientGone) as e:
            # Closing tells the proxy not to wait for the rest of the body on this connection.
            return error(400, str(e), {"connection": "close"})
        except Busy as e:
            return error(503, str(e), {"retry-after": "1"})
        except Exception as e:  # noqa: BLE001 - a bug: one line to the client, the traceback to the replica's log
            log.exception("POST /predict failed")
            return error(500, f"internal error ({type(e).__name__}); the replica's log has the traceback")

    async def read_request(self, request: Request) -> tuple[PredictRequest, bool]:
        """(request, whether its body is large): the body read within serve.body_timeout_s and counted against
        serve.max_buffered_mb while held, then parsed off the event loop."""
        held = 0
        try:
            body, held = await self._read_body(request)
            large = len(body) > LARGE_BODY
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind == "application/json":
                return await self.beside_forward(parse_json, body, large=large), large
            if kind == "multipart/form-data":
                return await self.beside_forward(_parse_form_body, request.scope, body, large=large), large
            raise BadRequest(f"Content-Type {kind or '(none)'}: use application/json or multipart/form-data")
        finally:
            self.buffered -= held

    async def _read_body(self, request: Request) -> tuple[bytes, int]:
        """(body, bytes counted in self.buffered, which the caller gives back); BadRequest over max_body,
        BodyTimeout, Busy, ClientGone. Nothing stays counted when it raises."""
        from starlette.requests import ClientDisconnect

        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise BadRequest(f"Content-Length {declared!r} is not a number")
        chunks, size, held = [], 0, 0
        try:
            async with asyncio.timeout(self.cfg.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_body:
                        chunks = []  # keep reading (not keeping) a moderately large body so the client gets the 400
                        if size > DRAIN_FACTOR * self.max_body:
                            break  # rather than its connection reset; far larger ones are cut off
                        continue
                    if self.buffered + len(chunk) > self.max_buffered:
                        raise Busy(f"busy: {self.buffered} bytes of request bodies held, the limit is "
                                   f"{self.max_buffered} (serve.max_buffered_mb); retry")  # fmt: skip
                    self.buffered += len(chunk)
                    held += len(chunk)
                    chunks.append(chunk)
            if size > self.max_body:
                told = declared or f"at least {size}"
                raise BadRequest(f"body of {told} bytes is over the limit of {self.max_body} bytes")
        except BaseException as e:
            self.buffered -= held
            if isinstance(e, TimeoutError):
                raise BodyTimeout(f"body not received within {self.cfg.body_timeout_s:g} s (serve.body_timeout_s); "
                                  f"{size} bytes of {declared or 'an unknown length'} arrived") from None  # fmt: skip
            if isinstance(e, ClientDisconnect):
                raise ClientGone("the client went away before sending its whole body") from None
            raise
        return b"".join(chunks), held

    async def forward(self, item: tuple[Loaded, Prepared]) -> tuple[Loaded, HeatMap]:
        """One prepared request through the batched forward, admitted only while no forward runs."""
        await self._forward_idle.wait()
        return await self.predict_batch(item)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict_batch(self, items: list) -> list:
        # The forward runs in a thread so the event loop keeps reading and preparing the next requests.
        self._forward_idle.clear()
        try:
            return await asyncio.to_thread(self.predictor.run, items)
        finally:
            self._forward_idle.set()


class BodyTimeout(Exception):
    """The client did not send its whole body within serve.body_timeout_s."""


class ClientGone(Exception):
    """The client disconnected while sending its body (no one reads the answer)."""


class Busy(Exception):
    """The replica holds serve.max_buffered_mb of request bodies already."""


def _answer(loaded: Loaded, heat: HeatMap, return_points: bool, started: float) -> bytes:
    """The JSON of a prediction, as JSONResponse writes it."""
    body: dict[str, Any] = {
        "heatmap": heat.values.tolist(),
        "model": {k: loaded.info[k] for k in ("name", "version", "spec", "kind")},
        "took_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    if return_points:
        body["points"] = heat.xyz.tolist()
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _parse_form_body(scope: dict[str, Any], body: bytes) -> PredictRequest:
    """A multipart body parsed on a prepare thread (starlette's parser is a coroutine: it gets its own loop here,
    and spools large parts to disk, neither of which the serving loop should wait for)."""
    return parse_form(asyncio.run(_form_fields(scope, body)))


async def _form_fields(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The multipart parts of an already read body: files as Upload, plain fields as str."""
    from starlette.formparsers import MultiPartException

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form(max_files=8, max_fields=16)
    except (MultiPartException, AssertionError, ValueError) as e:
        raise BadRequest(f"multipart body cannot be parsed ({e})") from None
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        fields[name] = value if isinstance(value, str) else Upload(value.filename or "", await value.read())
    await form.close()
    return fields


def application(spec: str, tracking_uri: str, cfg: ServeConfig, overrides: list[str] = ()):
    """The bound Serve application; replicas, autoscaling and CPUs come from `cfg`."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.replica_cpus, "num_gpus": 1 if cfg.use_gpu else 0},
        "health_check_period_s": 5,
    }
    if cfg.autoscaling:
        options["autoscaling_config"] = {"min_replicas": cfg.replicas, "max_replicas": cfg.max_replicas,
                                         "target_ongoing_requests": cfg.target_ongoing_requests}  # fmt: skip
    else:
        options["num_replicas"] = cfg.replicas
    deployment = serve.deployment(AffordanceServer).options(**options)
    return deployment.bind(spec, tracking_uri, list(overrides), dataclasses.asdict(cfg))


def build(args: dict[str, Any]):
    """Application builder for Serve config files (`import_path: jobs.serving.app:build`): args are `model`
    (required), `tracking_uri` (default $MLFLOW_TRACKING_URI at the replica), `overrides` (model.* items) and
    any ServeConfig field."""
    args = dict(args)
    if not args.get("model"):
        raise ValueError("jobs.serving.app:build needs args.model (an exported folder, checkpoint, run or models:/…)")
    spec, tracking_uri, overrides = args.pop("model"), args.pop("tracking_uri", ""), args.pop("overrides", [])
    known = {f.name for f in dataclasses.fields(ServeConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"jobs.serving.app:build: unknown args {unknown}; known: model, tracking_uri, overrides, "
                         f"{', '.join(sorted(known))}")  # fmt: skip
    return application(spec, tracking_uri, ServeConfig(**args), overrides)
