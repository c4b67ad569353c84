"""Per-rank random state as JSON: Python's, NumPy's and torch's generators, never pickled.

A checkpoint lives on shared storage that other people and jobs write to, so nothing in it may run code when
it is read back. The generators' states are plain integers and bytes, so JSON holds them exactly:
Python's Mersenne Twister as its 625 words, NumPy's legacy MT19937 as key/pos/gauss, torch's (and CUDA's) as
the base64 of their byte tensors. Reading validates every field's type and length before any state is set.

Checkpoints written before this format have `rng_rank{r}.pt` (a torch pickle): it is read with
`torch.load(weights_only=True)` allowing only NumPy's array reconstruction on top of the DeepSpeed allow-list,
and its content must have exactly the old layout; anything else is refused (UnsafeCheckpoint).
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs.bounded import META_MAX_BYTES, read_text
from jobs.consolidate import UnsafeCheckpoint, safe_load

FORMAT = "lma3d-rng-v1"


def file_for(folder: str | Path, rank: int) -> Path:
    return Path(folder, f"rng_rank{rank}.json")


def legacy_file_for(folder: str | Path, rank: int) -> Path:
    return Path(folder, f"rng_rank{rank}.pt")


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")


def capture() -> dict[str, Any]:
    """This process's generator states as a JSON-ready dict."""
    version, words, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "format": FORMAT,
        "python": {"version": version, "state": list(words), "gauss_next": gauss},
        "numpy": {
            "kind": kind,
            "key": key.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },  # fmt: skip
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def save(folder: str | Path, rank: int) -> Path:
    path = file_for(folder, rank)
    path.write_text(json.dumps(capture()))
    return path


class BadRngState(UnsafeCheckpoint):
    """An RNG file whose content is not the layout this module writes: refused like an unsafe pickle."""


def _ints(value: Any, count: int, bound: int, where: str) -> list[int]:
    if not (isinstance(value, list) and len(value) == count):
        raise BadRngState(f"{where}: expected {count} integers")
    if not all(type(v) is int and 0 <= v < bound for v in value):
        raise BadRngState(f"{where}: expected integers in [0, {bound})")
    return value


def _bytes(value: Any, where: str) -> torch.Tensor:
    if not isinstance(value, str):
        raise BadRngState(f"{where}: expected a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise BadRngState(f"{where}: not valid base64") from None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def parse(data: Any, where: str) -> dict[str, Any]:
    """Validated generator states (ready for apply) from the decoded JSON of an RNG file."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadRngState(f"{where}: not an lma3d RNG state (format {FORMAT!r} expected)")
    py, nps = data.get("python"), data.get("numpy")
    if not isinstance(py, dict) or not isinstance(nps, dict):
        raise BadRngState(f"{where}: python and numpy states must be mappings")
    gauss = py.get("gauss_next")
    if py.get("version") != 3 or not (gauss is None or type(gauss) is float):
        raise BadRngState(f"{where}: python state must be version 3 with a float or null gauss_next")
    words = _ints(py.get("state"), 625, 2**32 + 1, f"{where}: python.state")
    if nps.get("kind") != "MT19937" or type(nps.get("cached_gaussian")) is not float:
        raise BadRngState(f"{where}: numpy state must be MT19937 with a float cached_gaussian")
    key = _ints(nps.get("key"), 624, 2**32, f"{where}: numpy.key")
    pos, has_gauss = nps.get("pos"), nps.get("has_gauss")
    if type(pos) is not int or not 0 <= pos <= 624 or has_gauss not in (0, 1):
        raise BadRngState(f"{where}: numpy.pos must be in [0, 624] and numpy.has_gauss 0 or 1")
    cuda = data.get("cuda", [])
    if not isinstance(cuda, list):
        raise BadRngState(f"{where}: cuda must be a list")
    return {
        "python": (3, tuple(words), gauss),
        "numpy": ("MT19937", np.array(key, dtype=np.uint32), pos, has_gauss, nps["cached_gaussian"]),
        "torch": _bytes(data.get("torch"), f"{where}: torch"),
        "cuda": [_bytes(s, f"{where}: cuda[{i}]") for i, s in enumerate(cuda)],
    }


def apply(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read(path: Path) -> dict[str, Any]:
    try:  # a few KB: a bound read, and a FIFO or device in its place refused unread
        data = json.loads(read_text(path, META_MAX_BYTES, "an RNG state"))
    except (OSError, ValueError, RecursionError) as e:
        raise BadRngState(f"{path}: not readable as JSON ({e})") from None
    return parse(data, str(path))


def read_legacy(path: Path) -> dict[str, Any]:
    """An old pickled `rng_rank{r}.pt`, read with weights_only=True (NumPy arrays the only addition)."""
    numpy_arrays = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    state = safe_load(path, mmap=False, extra_globals=numpy_arrays)
    try:
        version, words, gauss = state["python"]
        kind, key, pos, has_gauss, cached = state["numpy"]
        data = {
            "format": FORMAT,
            "python": {"version": version, "state": list(words), "gauss_next": gauss},
            "numpy": {
                "kind": kind,
                "key": key.tolist() if isinstance(key, np.ndarray) and key.dtype == np.uint32 else None,
                "pos": pos,
                "has_gauss": has_gauss,
                "cached_gaussian": cached,
            },  # fmt: skip
            "torch": _b64(state["torch"]) if isinstance(state["torch"], torch.Tensor) else None,
            "cuda": [_b64(s) for s in state.get("cuda", [])],
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BadRngState(f"{path}: not the layout of an lma3d RNG state") from None
    return parse(data, str(path))
