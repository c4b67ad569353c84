"""How a replica schedules its work, in a real Serve deployment of the server class whose first forward is held
until five more requests wait behind it: requests that arrive while a forward runs leave together as one batch when
it ends, instead of one small batch per batch-wait window queued behind it (Serve 2.60 forms batches while the last
one still runs); requests are prepared on `serve.prepare_threads` threads beside the forward. Nothing depends on
how fast the machine is: the test waits for events (a forward started, requests waiting), not for time to pass."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

import pytest
from registered import IMAGE, INSTRUCTION, POINTS, export_tiny

from jobs.serving.api import PredictRequest
from jobs.serving.app import AffordanceServer
from jobs.serving.serve_config import ServeConfig
from jobs.verbs.serve import main as serve_main
from pipeline.pointfiles import read_point_file

BEHIND = 5  # requests sent while the first forward runs
ARRIVAL_GAP_S = 0.05  # five times the batch wait: without the gate each of these would leave as its own batch
HOLD_LIMIT_S = 120  # the first forward gives up waiting for the others after this (the assertion then fails)


class SlowForwardServer(AffordanceServer):
    """The real replica class; its first forward is held (on the thread the real forward runs on) until BEHIND
    more prepared requests wait at the forward's gate, and it records batch sizes."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.sizes: list[int] = []
        self.waiting = 0  # prepared requests that reached the gate
        real_run = self.predictor.run

        def run(items: list) -> list:
            self.sizes.append(len(items))
            if len(self.sizes) == 1:
                deadline = time.monotonic() + HOLD_LIMIT_S
                while self.waiting < 1 + BEHIND and time.monotonic() < deadline:
                    time.sleep(0.01)
            return real_run(items)

        self.predictor.run = run

    async def predict_fixture(self) -> str:
        request = PredictRequest(IMAGE.read_bytes(), read_point_file(POINTS), INSTRUCTION)
        prepared = await self.beside_forward(self.predictor.prepare, request)
        # No await between the count and the gate: once the held forward sees the count, this request waits there.
        self.waiting += 1
        await self.forward(prepared)
        return await self.beside_forward(lambda: threading.current_thread().name)

    def batch_sizes(self) -> list[int]:
        return self.sizes


@pytest.mark.slow
def test_requests_arriving_during_a_forward_leave_as_one_batch(ray_local, tmp_path: Path) -> None:
    from ray import cloudpickle, serve

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the replica cannot import this test module
    cfg = ServeConfig(max_batch_size=8, batch_wait_ms=10, replica_cpus=0, alias_poll_s=0)
    deployment = serve.deployment(SlowForwardServer).options(
        name="slow", max_ongoing_requests=16, ray_actor_options={"num_cpus": 0}
    )
    model = export_tiny(tmp_path / "model", seed=0)
    serve.start(proxy_location="Disabled")  # called through its handle only: no HTTP proxy to start and wait for
    handle = serve.run(deployment.bind(str(model), "", [], dataclasses.asdict(cfg)), name="batching", route_prefix=None)
    try:
        responses = [handle.predict_fixture.remote()]  # a forward alone, after the batch wait
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not handle.batch_sizes.remote().result(timeout_s=60) and time.monotonic() < deadline:
            time.sleep(0.05)  # until that forward runs
        for _ in range(BEHIND):  # all within that forward, each further from the last than the batch wait
            responses.append(handle.predict_fixture.remote())
            time.sleep(ARRIVAL_GAP_S)
        preparers = {response.result(timeout_s=300) for response in responses}
        assert handle.batch_sizes.remote().result(timeout_s=60) == [1, BEHIND]
        assert preparers == {"lma3d-prepare_0"}  # serve.prepare_threads: 1
    finally:
        serve.delete("batching")
        serve.shutdown()


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("serve.prepare_threads=0", "serve.prepare_threads must be >= 1"),
        ("serve.max_ongoing_requests=4", "serve.max_ongoing_requests must be >= serve.max_batch_size"),
    ],
)
def test_a_replica_that_could_not_schedule_is_refused_in_one_line(tmp_path: Path, capsys, override, needle) -> None:
    assert serve_main(["--model", str(tmp_path / "none"), override]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
