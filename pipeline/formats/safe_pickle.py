"""Restricted unpickling of data files (LASO pickles, Ray row payloads): nothing foreign runs, memory stays bounded.

- find_class admits only builtin containers/scalars and what numpy needs to rebuild arrays, dtypes and scalars;
  any other global stops loading before it is called (UnsafePickleError).
- A file over `max_bytes` is refused from its size, unread.
- Loading runs on the pure-Python unpickler: its memo is a dict, while the C unpickler allocates and clears a memo
  array as long as the largest index a pickle names (measured: a 9-byte pickle took 790 MB).
- Every call a pickle makes (REDUCE, NEWOBJ, INST/OBJ) is checked before it runs and charged against an allocation
  budget of ALLOC_SLACK + 2 x the pickle's size: `bytearray(n)`, `bytes(n)`, containers built from an iterable,
  `str(x)`, numpy arrays by shape x itemsize. `_codecs.encode` may only turn a str into latin-1 bytes. Object
  dtypes and structured dtype states are refused (numpy crashes on some object-array states); an array's state
  must carry exactly its shape's bytes; BYTEARRAY8 may not claim more bytes than the pickle has.
What stays proportional to the pickle's size: each plain opcode creates at most one small object.
"""

from __future__ import annotations

import importlib
import io
import math
import operator
import os
import pickle
import stat
import struct
from pathlib import Path
from typing import Any

import numpy as np

PICKLE_MAX_BYTES = 1 << 30  # LASO's largest pickle is ~200 MB (8434 shapes x 2048 x 3 float32)
ALLOC_SLACK = 64 << 20
_ITEM_BYTES = 128  # what one element of a container built from an iterable may cost (a numpy scalar is ~32 B)

_SAFE_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bytearray", "bool"}
)
# What numpy needs to rebuild arrays, dtypes and scalars, in its 1.x (numpy.core) and 2.x (numpy._core)
# spellings, plus _frombuffer (protocol-5 arrays) and _codecs.encode (bytes in protocol <= 2 pickles).
_SAFE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)
_LATIN1 = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1"})


class UnsafePickleError(ValueError):
    """A pickle names a global outside the allowlist or asks for too much memory; nothing of it was executed."""


def _numpy_internal(submodule: str, name: str) -> Any:
    """numpy._core.X.name (numpy 2) or numpy.core.X.name (numpy 1), without numpy 2's deprecation shim."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{submodule}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{submodule}"), name)


_RECONSTRUCT = _numpy_internal("multiarray", "_reconstruct")
_SCALAR = _numpy_internal("multiarray", "scalar")
_FROMBUFFER = _numpy_internal("numeric", "_frombuffer")
_ENCODE = importlib.import_module("_codecs").encode


class _Dispatch(dict):
    def __missing__(self, opcode: int) -> Any:
        raise pickle.UnpicklingError(f"unknown opcode {bytes([opcode])!r}")


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: see the module docstring
    dispatch = _Dispatch(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, origin: str):
        super().__init__(io.BytesIO(data), encoding="latin1")  # latin1: numpy arrays pickled by Python 2
        self.origin = origin
        self.size = len(data)
        self.budget = ALLOC_SLACK + 2 * len(data)

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module
        if (module == "builtins" and name in _SAFE_BUILTINS) or (module, name) in _SAFE_GLOBALS:
            if module.startswith(("numpy.core.", "numpy._core.")):
                return _numpy_internal(module.split(".", 2)[2], name)
            return getattr(importlib.import_module(module), name)
        raise UnsafePickleError(f"{self.origin}: refused to load, the pickle asks for forbidden global {module}.{name}")

    # ------------------------------------------------------------ calls, checked before they run

    def refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.origin}: refused to load, the pickle asks for {what}")

    def charge(self, nbytes: int, what: str) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            limit = ALLOC_SLACK + 2 * self.size
            raise self.refuse(f"{what}, beyond its allocation budget of {limit} bytes")

    def checked_call(self, func: Any, args: tuple, kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise self.refuse("a call with malformed arguments")
        name = getattr(func, "__name__", type(func).__name__)
        self.charge(self.call_cost(func, args, kwargs), f"{name}(...) allocating too much")
        result = func(*args, **kwargs)
        if isinstance(result, np.dtype | np.ndarray) and _dtype_of(result).hasobject:
            raise self.refuse("a numpy object dtype")
        return result

    def call_cost(self, func: Any, args: tuple, kwargs: dict) -> int:
        """Bytes a call may allocate beyond the pickle's own data; refuses calls outside the known shapes."""
        first = args[0] if args else None
        if func in (bytes, bytearray):
            if not args:
                return 0
            try:
                return operator.index(first)  # bytearray(n): n zero bytes from a few pickle bytes
            except TypeError:
                return 4 * _length(first)
        if func in (list, tuple, set, frozenset, dict):
            return _ITEM_BYTES * _length(first) if args else 0
        if func is str:
            return 8 * _length(first) if args else 0
        if func in (int, float, complex, bool):
            return 0
        if func is _ENCODE:
            encoding = args[1] if len(args) > 1 else "utf-8"
            if not (isinstance(first, str) and isinstance(encoding, str) and encoding.lower() in _LATIN1):
                raise self.refuse("_codecs.encode other than of a str to latin-1")
            return len(first)
        if func is np.dtype:
            return 0
        if func is _RECONSTRUCT:
            if len(args) != 3 or first is not np.ndarray:
                raise self.refuse("_reconstruct of something other than a numpy array")
            return self.array_bytes(args[1], args[2])
        if func is np.ndarray:
            dtype = args[1] if len(args) > 1 else kwargs.get("dtype", float)
            return self.array_bytes(first if args else kwargs.get("shape"), dtype)
        if func in (_SCALAR, _FROMBUFFER):
            dtype = first if func is _SCALAR else (args[1] if len(args) > 1 else None)
            if not isinstance(dtype, np.dtype) or dtype.hasobject:
                raise self.refuse(f"{func.__name__} without a plain numpy dtype")
            return 0
        raise self.refuse(f"a call to {func!r}")

    def array_bytes(self, shape: Any, dtype: Any) -> int:
        try:
            dims = [operator.index(d) for d in shape] if isinstance(shape, tuple | list) else [operator.index(shape)]
            dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            raise self.refuse("an array of malformed shape or dtype") from None
        if dtype.hasobject:
            raise self.refuse("a numpy object dtype")
        if any(d < 0 for d in dims):
            raise self.refuse(f"an array of negative shape {dims}")
        return math.prod(dims) * dtype.itemsize

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self.checked_call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls: Any, args: tuple, kwargs: dict) -> Any:
        if not isinstance(cls, type):
            raise self.refuse(f"NEWOBJ of {cls!r}, not a class")
        self.charge(self.call_cost(cls, args, kwargs), f"{cls.__name__}.__new__ allocating too much")
        return cls.__new__(cls, *args, **kwargs)

    def _instantiate(self, klass: Any, args: tuple) -> None:  # protocol 0/1 INST and OBJ
        self.append(self.checked_call(klass, tuple(args)))

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            self.check_array_state(state)
        elif isinstance(inst, np.dtype):
            fields = state[3:5] if isinstance(state, tuple) and len(state) >= 5 else (None,)
            if any(f is not None for f in fields):
                raise self.refuse("a structured numpy dtype")
        super().load_build()
        if isinstance(inst, np.dtype | np.ndarray) and _dtype_of(inst).hasobject:
            raise self.refuse("a numpy object dtype")

    def check_array_state(self, state: Any) -> None:
        """(version, shape, dtype, fortran, data) with exactly shape x itemsize bytes of data."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise self.refuse("a numpy array with a malformed state")
        shape, dtype, data = state[-4], state[-3], state[-1]
        if not isinstance(dtype, np.dtype) or not isinstance(data, bytes | bytearray | str):
            raise self.refuse("a numpy array state without a plain dtype and its bytes")
        nbytes = self.array_bytes(shape, dtype)
        if nbytes != len(data):
            raise self.refuse(f"a numpy array of {nbytes} bytes from {len(data)} bytes of data")
        self.charge(nbytes, "numpy arrays allocating too much")

    def load_bytearray8(self) -> None:
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self.size:
            raise self.refuse(f"a bytearray of {length} bytes in a {self.size}-byte pickle")
        data = bytearray(length)
        self.readinto(data)
        self.append(data)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _dtype_of(obj: np.dtype | np.ndarray) -> np.dtype:
    return obj if isinstance(obj, np.dtype) else obj.dtype


def _length(obj: Any) -> int:
    if isinstance(obj, np.ndarray):
        return int(obj.size)
    try:
        return len(obj)
    except TypeError:
        return 0  # not a container: the call costs nothing extra (or fails by itself)


def read_capped(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes; ValueError from its size, unread, over `max_bytes` (and for FIFOs, devices)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise UnsafePickleError(f"{path}: refused to load, {info.st_size} bytes is over the {max_bytes}-byte limit")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(info.st_size + 1)  # read(n) allocates n bytes up front: never more than the file
    finally:
        os.close(fd)
    if len(data) != info.st_size:
        raise ValueError(f"{path} changed size while being read")
    return data


def safe_load_pickle(path: Path, max_bytes: int = PICKLE_MAX_BYTES) -> Any:
    """Unpickle a data file allowing only builtin containers/scalars and numpy arrays/dtypes/scalars."""
    data = read_capped(path, max_bytes)
    try:
        return _RestrictedUnpickler(data, str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or corrupt pickle: pickle raises many types
        raise ValueError(f"{path} is not a readable pickle: {type(e).__name__}: {e}") from None


def safe_loads(data: bytes, origin: str, max_bytes: int = PICKLE_MAX_BYTES) -> Any:
    if len(data) > max_bytes:
        raise UnsafePickleError(f"{origin}: refused to load, {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        return _RestrictedUnpickler(data, origin).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or corrupt pickle: pickle raises many types
        raise ValueError(f"{origin} is not a readable pickle: {type(e).__name__}: {e}") from None
