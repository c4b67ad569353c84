"""Request bodies a hostile client sends to POST /predict (issue 32), built without allocating what they claim:
the tests of the parser (tests/test_hostile_endpoint_parsing.py) and of a real `lma3d serve`
(tests/test_hostile_endpoint.py) send the same bytes."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
from registered import IMAGE, INSTRUCTION, POINTS

XYZ = np.loadtxt(POINTS, usecols=(2, 3, 4)).astype(np.float32)
IMAGE_B64 = base64.b64encode(IMAGE.read_bytes()).decode()
OVER_CAP_TRIPLES = 1_990_000  # the 16 MB list: 8 bytes a triple, under the 16 MiB body limit
OVER_CAP_NPY_POINTS = 3_900_000  # the base64 int8 .npy: 11.7 MB, 15.6 MB as base64
NESTED = 200_000


def body(points: object = None, image: str = IMAGE_B64, **extra: object) -> bytes:
    """A JSON request body; `points` as given (default: the PIAD fixture's 2048 points as a list)."""
    value = XYZ.tolist() if points is None else points
    return json.dumps({"image": image, "points": value, "instruction": INSTRUCTION, **extra}).encode()


def raw_body(points_json: str) -> bytes:
    """A JSON body whose `points` value is the literal text `points_json` (too large or deep for json.dumps)."""
    head = json.dumps({"image": IMAGE_B64, "instruction": INSTRUCTION})[:-1]
    return f'{head}, "points": {points_json}}}'.encode()


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def npy_claiming(shape: tuple[int, ...], dtype: str = "<f4", data: bytes = b"\0" * 12) -> bytes:
    """An .npy file whose header claims `shape` but which holds only `data`."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": dtype, "fortran_order": False, "shape": shape})
    return out.getvalue() + data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


EOI = b"\xff\xd9"


def jpeg_claiming(width: int, height: int) -> bytes:
    """A baseline JPEG whose frame header says width x height, its scan cut a few bytes in and closed with an EOI
    marker (libjpeg then fills the missing picture with grey and PIL decodes it without a word)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    sos = data.index(b"\xff\xda")
    return bytes(data[: sos + 2 + struct.unpack_from(">H", data, sos + 2)[0] + 8]) + EOI


def truncated_jpeg() -> bytes:
    """The fixture's JPEG (408x612) cut in half and closed with an EOI marker: its lower part never arrived, and
    PIL decodes it as grey without a word (cut without the marker, PIL already says "truncated")."""
    data = IMAGE.read_bytes()
    return data[: len(data) // 2] + EOI


def png_1bit(side: int) -> bytes:
    """A side x side black-and-white PNG (1 bit a pixel): a few KB that PIL decodes to side^2 bytes or more."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def with_value(value: object, row: int = 3, column: int = 1) -> list:
    """The fixture's points with one coordinate replaced by `value`."""
    points = XYZ.tolist()
    points[row][column] = value
    return points


def literal(text: str, row: int = 3, column: int = 1) -> bytes:
    """A JSON body whose points hold the JSON literal `text` at one coordinate (json.dumps cannot write 10^400)."""
    return body(with_value("@LITERAL@", row, column)).replace(b'"@LITERAL@"', text.encode())


# case -> (body builder, text the one-line error holds); each is a JSON POST /predict the server must refuse
# with 400 (issue 32). Builders are functions: some bodies are 16 MB.
JSON_CASES = {
    "JSON list of 1,990,000 triples": (
        lambda: raw_body("[" + ",".join(["[0,1,2]"] * OVER_CAP_TRIPLES) + "]"),
        "1990000 points, more than the 500000",
    ),
    "base64 int8 .npy of 3,900,000 points": (
        lambda: body(b64(npy_bytes(np.zeros((OVER_CAP_NPY_POINTS, 3), np.int8)))),
        "3900000 points, more than the 500000",
    ),
    ".npy header claiming shape (10^12,)": (
        lambda: body(b64(npy_claiming((10**12,)))),
        "shape (1000000000000,)",
    ),
    ".npy header claiming shape (10^12, 3)": (
        lambda: body(b64(npy_claiming((10**12, 3)))),
        "1000000000000 points, more than the 500000",
    ),
    "JSON nested 200,000 deep": (lambda: raw_body("[" * NESTED + "]" * NESTED), "nested"),
    "truncated JPEG whose header says 12000x14000": (
        lambda: body(image=b64(jpeg_claiming(12000, 14000))),
        "12000x14000",
    ),
    "JPEG of 408x612 cut in half, EOI kept": (lambda: body(image=b64(truncated_jpeg())), "truncated"),
    "1-bit PNG of 13000x13000": (lambda: body(image=b64(png_1bit(13000))), "13000x13000"),
    "a string among the points": (lambda: body(with_value("0.5")), "row 3 holds '0.5' (str), not a number"),
    "a boolean among the points": (lambda: body(with_value(True)), "row 3 holds True (bool), not a number"),
    "an integer beyond float range": (
        lambda: literal("1" + "0" * 400),
        "row 3 has a NaN or infinite value or one beyond",
    ),
    "a 5000-digit integer": (lambda: literal("9" * 5000), "not valid JSON"),
}


def form(**changes: tuple[str, bytes] | str) -> dict[str, tuple[str, bytes] | str]:
    """multipart/form-data parts (name -> (filename, bytes) or a plain value): the fixture unless changed."""
    parts = {
        "image": (IMAGE.name, IMAGE.read_bytes()),
        "points": ("cloud.npy", npy_bytes(XYZ)),
        "instruction": INSTRUCTION,
    }
    return parts | changes


def multipart(parts: dict[str, tuple[str, bytes] | str], boundary: str = "hostile-boundary-7d1c") -> tuple[bytes, str]:
    """(body, content type) of `parts` as multipart/form-data (RFC 7578)."""
    chunks = []
    for name, value in parts.items():
        if isinstance(value, tuple):
            head = f'Content-Disposition: form-data; name="{name}"; filename="{value[0]}"\r\n'
            head += "Content-Type: application/octet-stream\r\n\r\n"
            data = value[1]
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"\r\n\r\n', value.encode()
        chunks.append(f"--{boundary}\r\n{head}".encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# The same bounds hold for files sent as multipart/form-data (read by pipeline.pointfiles like `lma3d predict`).
FORM_CASES = {
    ".npy file whose header claims shape (10^9, 3)": (
        lambda: form(points=("cloud.npy", npy_claiming((10**9, 3)))),
        "1000000000 points, more than the 500000",
    ),
    "1-bit PNG file of 13000x13000": (lambda: form(image=("big.png", png_1bit(13000))), "13000x13000"),
}


def run_cases(names: list[str]) -> None:
    """Each named case through the server's parsing and preparation (api.parse_json / parse_form, then
    batch_predict.prepare for the tiny model, as Predictor.prepare calls it), in this process: one JSON line per
    case with its outcome, message, seconds and peak resident memory (VmHWM, reset before each case)."""
    import time

    from tiny import tiny_model_config

    from jobs.serving.api import BadRequest, Upload, parse_form, parse_json
    from jobs.serving.batch_predict import BadInput, Item, prepare

    cfg = tiny_model_config()
    for name in names:
        if name in JSON_CASES:
            payload, parse = JSON_CASES[name][0](), parse_json
        else:
            parts = FORM_CASES[name][0]()
            payload = {k: Upload(*v) if isinstance(v, tuple) else v for k, v in parts.items()}
            parse = parse_form
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current resident size
        start = _status_kb("VmRSS")
        started = time.perf_counter()
        try:
            request = parse(payload)
            prepare(cfg, Item("request", request.image, request.points, request.instruction))
            outcome, message = "accepted", ""
        except (BadRequest, BadInput) as e:
            outcome, message = "refused", str(e)
        except BaseException as e:  # noqa: BLE001 - MemoryError, RecursionError, OverflowError: what the server did
            outcome, message = "crashed", f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - started
        print(json.dumps({"case": name, "outcome": outcome, "message": message[:400], "seconds": round(seconds, 3),
                          "start_mb": round(start / 1024, 1), "peak_mb": round(_status_kb("VmHWM") / 1024, 1)}),
              flush=True)  # fmt: skip


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))


if __name__ == "__main__":
    import sys

    run_cases(sys.argv[1:])
