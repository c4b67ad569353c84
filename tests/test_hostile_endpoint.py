"""`lma3d serve` against a hostile client (issue 32), for real: one server for the module, the tiny model, every
case of tests/hostile_payloads.py sent over HTTP. Each is a 400 with one line, never a 500 or a hang; the replica and
the proxy run under an address-space cap (tests/replica_memory.py) so a bomb that got through fails here instead of
taking the machine. Each case prints its status, time and the replica's peak resident memory (run with -s).

The slow-body check does not depend on how fast the machine is: a normal request sent while 100 clients hold
their bodies must be answered while every one of them still hangs on (they are dropped only after
serve.body_timeout_s), and each of them must then get its 400.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import hostile_payloads as hp
import numpy as np
import pytest
import replica_memory
from registered import export_tiny
from serve_process import Served, get_json, start_serving

from pipeline.pointfiles import MAX_POINTS

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hostile_endpoint")]
CASES = {**hp.JSON_CASES, **hp.FORM_CASES}
BODY_TIMEOUT_S = 30  # far above what a normal request takes on a loaded machine; the drop test waits this long
BUFFERED_MB = 32  # two bodies of 15 MiB held leave no room for a third of 4 MiB
HANGING = 100
CLIENT_TIMEOUT_S = 300  # a request the server does not answer by then fails its test instead of hanging it


class Hostile(Served):
    """The server and the PID of its one replica."""

    def __init__(self, served: Served, replica: int) -> None:
        super().__init__(served.proc, served.url, served.log)
        self.replica = replica


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    tmp = tmp_path_factory.mktemp("hostile-serve")
    model = export_tiny(tmp / "model", seed=3)
    args = ["--model", str(model), "serve.replica_cpus=0", f"serve.body_timeout_s={BODY_TIMEOUT_S}",
            f"serve.max_buffered_mb={BUFFERED_MB}"]  # fmt: skip
    server = start_serving(args, tmp)
    try:
        session = server.proc.pid  # start_new_session: the command leads its own session, Ray's processes in it
        replicas = replica_memory.session_processes(session, "ray::ServeReplica")
        proxies = replica_memory.session_processes(session, "ray::ProxyActor")
        assert len(replicas) == 1 and len(proxies) == 1, (replicas, proxies)
        for pid in replicas + proxies:
            replica_memory.cap(pid)
        yield Hostile(server, replicas[0])
    finally:
        server.stop()


def post(url: str, body: bytes, content_type: str, timeout: float = CLIENT_TIMEOUT_S) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"not JSON": text[:300].decode(errors="replace")}


def request_of(case: str) -> tuple[bytes, str]:
    if case in hp.JSON_CASES:
        return hp.JSON_CASES[case][0](), "application/json"
    return hp.multipart(hp.FORM_CASES[case][0]())


def normal(served: Served, timeout: float = CLIENT_TIMEOUT_S) -> tuple[int, dict, float]:
    started = time.monotonic()
    status, answer = post(served.url + "/predict", hp.body(), "application/json", timeout)
    return status, answer, time.monotonic() - started


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_request_is_400_with_one_line(served: Hostile, case: str) -> None:
    body, content_type = request_of(case)
    replica_memory.reset_peak(served.replica)
    before = replica_memory.resident_mb(served.replica)
    started = time.monotonic()
    status, answer = post(served.url + "/predict", body, content_type)
    seconds = time.monotonic() - started
    peak = replica_memory.peak_mb(served.replica)
    print(
        f"\n[hostile] {case}: {status} in {seconds:.2f} s, replica {before:.0f} -> peak {peak:.0f} MB: {answer}"[:400]
    )
    assert status == 400, answer
    assert list(answer) == ["error"] and "\n" not in answer["error"], answer
    assert CASES[case][1] in answer["error"], answer


def start_post(served: Served, length: int) -> tuple[socket.socket, bytes]:
    """A connection to the server and the head of a JSON POST /predict of `length` bytes, its blank line not yet."""
    host, port = served.url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT_S)
    head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    return client, head.encode()


def hold_body(served: Served) -> socket.socket:
    """A client that sends its headers, waits until the server has taken the request (100 Continue: the proxy
    started reading it), sends a few bytes of its body and then holds the rest."""
    client, head = start_post(served, 100_000)
    client.sendall(head + b"Expect: 100-continue\r\n\r\n")
    seen = b""
    while b"\r\n\r\n" not in seen:
        chunk = client.recv(1024)
        assert chunk, "the server closed a new connection"
        seen += chunk
    assert seen.startswith(b"HTTP/1.1 100"), seen
    client.sendall(b'{"image": "')
    return client


def still_hanging(client: socket.socket) -> bool:
    """Nothing more came back (no answer, no close) since the 100 Continue."""
    client.setblocking(False)
    try:
        client.recv(1, socket.MSG_PEEK)  # an answer or b"" (closed)
        return False
    except BlockingIOError:
        return True
    finally:
        client.setblocking(True)


def answer_of(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    client.settimeout(BODY_TIMEOUT_S + CLIENT_TIMEOUT_S)
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received


def test_a_normal_request_is_answered_while_100_clients_hold_their_bodies(served: Hostile) -> None:
    status, _, alone = normal(served)
    assert status == 200
    with ThreadPoolExecutor(16) as pool:
        hanging = list(pool.map(lambda _: hold_body(served), range(HANGING)))
    started = time.monotonic()
    try:
        status, answer, beside = normal(served, timeout=BODY_TIMEOUT_S + 60)
        assert status == 200, answer
        assert all(still_hanging(client) for client in hanging), "a slow client was dropped before the normal answer"
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(answer_of, hanging))
        dropped = time.monotonic() - started
    finally:
        for client in hanging:
            client.close()
    print(f"\n[hostile] normal request alone {alone:.2f} s, beside {HANGING} slow clients {beside:.2f} s; "
          f"the slow clients dropped within {dropped:.1f} s (serve.body_timeout_s={BODY_TIMEOUT_S})")  # fmt: skip
    statuses = {a.split(b"\r\n", 1)[0].decode(errors="replace") for a in answers}
    assert statuses == {"HTTP/1.1 400 Bad Request"}, statuses
    assert all(b"serve.body_timeout_s" in a for a in answers), answers[0][-300:]


def test_a_normal_request_is_answered_while_a_500000_point_request_is_prepared(served: Hostile) -> None:
    """The largest cloud a request may hold costs seconds of farthest-point sampling: on a thread of its own, it
    does not hold up the requests behind it (they share only the forward)."""
    cloud = np.random.default_rng(0).random((MAX_POINTS, 3)).round(4)
    big: dict[str, tuple[int, dict]] = {}
    thread = threading.Thread(target=lambda: big.update(answer=post(served.url + "/predict", hp.raw_body(
        json.dumps(cloud.tolist())), "application/json")))  # fmt: skip
    thread.start()
    try:
        while get_json(served.url + "/healthz")[1]["stats"]["large_lane"] == 0:
            assert thread.is_alive(), f"the large request ended before it was seen on its thread: {big}"
            time.sleep(0.02)
        status, _, seconds = normal(served)
        assert status == 200
        assert thread.is_alive(), "the normal request was answered only after the large one"
    finally:
        thread.join()
    print(f"\n[hostile] normal request beside a {MAX_POINTS}-point one: {seconds:.2f} s")
    assert big["answer"][0] == 200 and len(big["answer"][1]["heatmap"]) == MAX_POINTS


def stats(served: Served) -> dict:
    return get_json(served.url + "/healthz")[1]["stats"]


def send_all_but_one_byte(served: Served, size: int) -> socket.socket:
    """A client that sends `size` bytes of a body of `size` + 1 and holds the last one."""
    client, head = start_post(served, size + 1)
    client.sendall(head + b"\r\n" + b'{"image": "' + b"A" * (size - 11))
    return client


def test_bodies_past_the_replica_budget_get_503_and_the_budget_is_given_back(served: Hostile) -> None:
    """Two clients hold 15 MiB of body each (serve.max_buffered_mb=32): a third request gets 503 instead of a third
    body in memory; once they go away, nothing stays counted."""
    with ThreadPoolExecutor(2) as pool:
        holders = list(pool.map(lambda _: send_all_but_one_byte(served, 15 << 20), range(2)))
    try:
        while stats(served)["buffered_bytes"] < 30 << 20:
            time.sleep(0.05)
        status, answer = post(served.url + "/predict", hp.body(note="A" * (4 << 20)), "application/json")
        assert status == 503 and "serve.max_buffered_mb" in answer["error"], (status, answer)
    finally:
        for client in holders:
            client.close()
    while stats(served)["buffered_bytes"]:
        time.sleep(0.05)
    assert normal(served)[0] == 200


def test_the_replica_survived_every_case(served: Hostile) -> None:
    status, health = get_json(served.url + "/healthz")
    assert status == 200 and health["status"] == "ok"
    assert replica_memory.session_processes(served.proc.pid, "ray::ServeReplica") == [served.replica]
    status, answer, _ = normal(served)
    assert status == 200 and len(answer["heatmap"]) == len(hp.XYZ)
