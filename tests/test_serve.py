"""lma3d serve, for real: Ray Serve on 127.0.0.1 serving a registered tiny model by alias. Answers equal
`lma3d predict`; bad requests are 400 with one line; concurrent clients share one forward; the alias is followed;
Ctrl-C stops it."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pickle_payload import TouchOnUnpickle
from registered import IMAGE, INSTRUCTION, POINTS, export_tiny, register_tiny
from serve_process import Served, get_json, start_serving

from jobs.verbs.predict import main as predict_main

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve")]
NAME = "lma3d-serve-test"
BATCH = 4
XYZ = np.loadtxt(POINTS, usecols=(2, 3, 4)).astype(np.float32)


class Registry:
    def __init__(self, uri: str, first: Path, second: Path) -> None:
        self.uri, self.first, self.second = uri, first, second


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    first, second = export_tiny(tmp / "first", seed=3), export_tiny(tmp / "second", seed=4)
    assert register_tiny(first, NAME, "champion", uri, tmp / "work")["version"] == "1"
    assert register_tiny(second, NAME, None, uri, tmp / "work")["version"] == "2"
    return Registry(uri, first, second)


@pytest.fixture(scope="module")
def served(registry: Registry, tmp_path_factory: pytest.TempPathFactory):
    # A long batch wait makes the concurrency test deterministic (a full batch of BATCH runs at once anyway).
    args = ["--model", f"models:/{NAME}@champion", "--max-batch-size", str(BATCH), "--batch-wait-ms", "1000",
            "serve.alias_poll_s=1", "serve.replica_cpus=0", "serve.max_body_mb=1"]  # fmt: skip
    server = start_serving(args, tmp_path_factory.mktemp("serve"), {"MLFLOW_TRACKING_URI": registry.uri})
    yield server
    server.stop()


def expected(model: Path, tmp: Path) -> np.ndarray:
    """What `lma3d predict` writes for the fixture."""
    out = tmp / f"predicted-{model.name}"
    args = ["--model", str(model), "--image", str(IMAGE), "--points", str(POINTS), "--instruction", INSTRUCTION]
    assert predict_main([*args, "--out", str(out), "--name", "p"]) == 0
    return np.load(out / "p.npy")


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_json(served: Served, payload: dict | bytes) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return post(served.url + "/predict", body, "application/json")


def multipart(parts: dict[str, tuple[str, bytes] | str]) -> tuple[bytes, str]:
    """An independent multipart/form-data encoder (RFC 7578)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, value in parts.items():
        if isinstance(value, tuple):
            filename, data = value
            head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            head += "Content-Type: application/octet-stream\r\n\r\n"
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"\r\n\r\n', value.encode()
        chunks.append(f"--{boundary}\r\n{head}".encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_form(served: Served, parts: dict) -> tuple[int, dict]:
    body, content_type = multipart(parts)
    return post(served.url + "/predict", body, content_type)


def json_payload(points=None, **changes) -> dict:
    points = XYZ.tolist() if points is None else points
    payload = {"image": base64.b64encode(IMAGE.read_bytes()).decode(), "points": points, "instruction": INSTRUCTION}
    return payload | changes


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def binary_ply(xyz: np.ndarray) -> bytes:
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\n"
    header += "property float x\nproperty float y\nproperty float z\nend_header\n"
    return header.encode() + b"".join(struct.pack("<3f", *row) for row in xyz.astype(np.float32))


def test_healthz_reports_the_loaded_model(served: Served) -> None:
    status, body = get_json(served.url + "/healthz")
    assert status == 200 and body["status"] == "ok"
    assert body["model"]["name"] == NAME and body["model"]["version"] == "1"
    assert body["model"]["min_points"] == 64 and body["model"]["num_points"] == 256


@pytest.mark.parametrize("points", ["list", "npy"])
def test_predict_json_equals_lma3d_predict(served: Served, registry: Registry, tmp_path: Path, points: str) -> None:
    value = XYZ.tolist() if points == "list" else base64.b64encode(npy_bytes(XYZ)).decode()
    status, body = post_json(served, json_payload(value))
    assert status == 200, body
    heatmap = np.asarray(body["heatmap"])
    assert heatmap.shape == (2048,) and ((heatmap >= 0) & (heatmap <= 1)).all()
    np.testing.assert_allclose(heatmap, expected(registry.first, tmp_path), atol=1e-5)
    assert body["model"]["name"] == NAME and body["model"]["version"] == "1" and body["took_ms"] > 0


@pytest.mark.parametrize("suffix", [".txt", ".npy", ".ply"])
def test_predict_multipart_equals_lma3d_predict(
    served: Served, registry: Registry, tmp_path: Path, suffix: str
) -> None:
    data = {".txt": POINTS.read_bytes(), ".npy": npy_bytes(XYZ), ".ply": binary_ply(XYZ)}[suffix]
    parts = {"image": (IMAGE.name, IMAGE.read_bytes()), "points": (f"cloud{suffix}", data), "instruction": INSTRUCTION}
    status, body = post_form(served, parts)
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(body["heatmap"]), expected(registry.first, tmp_path), atol=1e-5)


def bad_requests(tmp_path: Path) -> dict[str, tuple[str, bytes, str]]:
    """case -> (content type, body, what the one-line error says)."""
    marker = tmp_path / "unpickled"
    pickled = np.array([TouchOnUnpickle(marker)], dtype=object)
    few = XYZ[:10].tolist()
    nan = XYZ.tolist()
    nan[5][1] = float("nan")
    inf = XYZ.copy()
    inf[7, 2] = np.inf
    form = {"image": (IMAGE.name, IMAGE.read_bytes()), "points": ("p.txt", b"1 2 3 4\n5 6 7 8\n"), "instruction": "x"}
    cases = {
        "empty instruction": (json_payload(instruction="   "), "instruction: empty"),
        "fewer points than the first sampling level": (json_payload(few), "10 given, the model needs at least 64"),
        "NaN point": (json_payload(nan), "row 5 has a NaN or infinite value"),
        "infinite point in npy": (json_payload(base64.b64encode(npy_bytes(inf)).decode()), "row 7 has a NaN"),
        "undecodable image": (json_payload(image=base64.b64encode(b"hello").decode()), "not an image PIL can decode"),
        "image not base64": (json_payload(image="%%%"), "image: not valid base64"),
        "pickled npy": (json_payload(base64.b64encode(npy_bytes(pickled, True)).decode()), "not a readable .npy"),
        "points of two columns": (json_payload([[1.0, 2.0]] * 100), "expected an array [N,3]"),
        "missing instruction": ({"image": "", "points": []}, "missing key(s) instruction"),
    }
    out = {case: ("application/json", json.dumps(body).encode(), message) for case, (body, message) in cases.items()}
    out["bad JSON"] = ("application/json", b'{"image": "abc", ', "body is not valid JSON")
    out["body over the size limit"] = ("application/json", b" " * (2**20 + 1), "over the limit of 1048576 bytes")
    out["plain text"] = ("text/plain", b"hello", "use application/json or multipart/form-data")
    out["point file of four columns"] = (*multipart(form)[::-1], "points file 'p.txt' line 1: 4 columns")
    pickled_form = form | {"points": ("p.npy", npy_bytes(pickled, True))}
    out["pickled npy file"] = (*multipart(pickled_form)[::-1], "not a readable .npy array")
    return out


CASES = list(bad_requests(Path("/nonexistent")))


@pytest.mark.parametrize("case", CASES)
def test_a_bad_request_is_400_with_one_line(served: Served, tmp_path: Path, case: str) -> None:
    content_type, body, message = bad_requests(tmp_path)[case]
    status, answer = post(served.url + "/predict", body, content_type)
    assert status == 400, answer
    assert list(answer) == ["error"] and "\n" not in answer["error"]
    assert message in answer["error"]
    assert not (tmp_path / "unpickled").exists(), "the server unpickled client data"


def test_concurrent_clients_share_one_forward(served: Served) -> None:
    before = get_json(served.url + "/healthz")[1]["stats"]
    with ThreadPoolExecutor(BATCH) as pool:
        answers = list(pool.map(lambda _: post_json(served, json_payload()), range(BATCH)))
    after = get_json(served.url + "/healthz")[1]["stats"]
    assert [status for status, _ in answers] == [200] * BATCH
    assert after["predictions"] - before["predictions"] == BATCH
    assert after["forwards"] - before["forwards"] == 1, after
    assert after["last_batch_sizes"][-1] == BATCH
    first = np.asarray(answers[0][1]["heatmap"])
    for _, body in answers[1:]:
        np.testing.assert_allclose(np.asarray(body["heatmap"]), first, atol=1e-5)


def test_replicas_follow_the_alias_without_dropping_requests(
    served: Served, registry: Registry, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    answers: list[tuple[int, dict]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            answers.append(post_json(served, json_payload()))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        while not answers:
            time.sleep(0.1)
        MlflowClient(registry.uri).set_registered_model_alias(NAME, "champion", "2")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (answers and answers[-1][1].get("model", {}).get("version") == "2"):
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert all(status == 200 for status, _ in answers), [b for s, b in answers if s != 200][:1]
    versions = [body["model"]["version"] for _, body in answers]
    assert versions[0] == "1" and versions[-1] == "2", versions
    assert versions == sorted(versions), "after the swap no request goes back to the old model"
    new = np.asarray(answers[-1][1]["heatmap"])
    np.testing.assert_allclose(new, expected(registry.second, tmp_path), atol=1e-5)
    assert get_json(served.url + "/healthz")[1]["model"]["version"] == "2"


def test_ctrl_c_stops_the_server_cleanly(served: Served) -> None:
    assert served.stop() == 0, served.log.read_text()[-2000:]
    with pytest.raises(OSError):
        urllib.request.urlopen(served.url + "/healthz", timeout=5)
    log = served.log.read_text()
    stopping = log[log.index("stopping…"):]
    assert not re.search(r"Traceback|Error|failed|\bERROR\b", stopping), stopping[-2000:]  # a clean stop says so


def test_the_served_log_has_no_download_bar(served: Served) -> None:
    """The replicas download models:/… off a terminal: MLflow's tqdm bar was one log line per redraw."""
    log = served.log.read_text()
    assert "Downloading artifacts" not in log, log[-1000:]
