"""Where a shard folder lives: a local path or any URI pyarrow.fs understands (tested: s3://).

A `Folder` is resolved once from the user's string. Credentials and the endpoint come the standard way, from the
environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, or the AWS credential chain), never
from a config; a Folder pickles as its URI alone and resolves again where it is unpickled (a Ray task, a loader
worker), so no key ever travels inside a Ray object or lands in a manifest, log or MLflow param.

Reads against object storage are retried: an endpoint that drops out mid-read is retried with exponential backoff
(READ_ATTEMPTS tries, each logged) and then fails with one line naming the object.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger("lma3d.storage")
READ_ATTEMPTS = 4
READALL_CHUNK = 8 << 20
BACKOFF_S = 0.5
T = TypeVar("T")


class StorageError(OSError):
    """An object store could not be reached, refused the credentials, or lacks the bucket (one line)."""


def is_uri(location: str | Path) -> bool:
    """True for `scheme://...` other than file://; a plain path (or file://) is a local folder."""
    scheme = urlparse(str(location)).scheme
    return len(scheme) > 1 and scheme != "file"  # a one-letter scheme is a Windows drive, not a URI


class Folder:
    """A folder on a pyarrow filesystem. `name`s below it are '/'-separated relative paths."""

    def __init__(self, location: str | Path) -> None:
        location = str(location)
        if is_uri(location):
            try:
                self.fs, root = pafs.FileSystem.from_uri(location)
            except (pa.ArrowInvalid, OSError) as error:
                raise StorageError(f"{location}: {_one_line(error)}") from None
            self.uri, self.root = location.rstrip("/"), root.rstrip("/")
        else:
            path = Path(location.removeprefix("file://")).absolute()
            self.fs, self.uri, self.root = pafs.LocalFileSystem(), str(path), str(path)

    def __reduce__(self) -> tuple[Callable, tuple[str]]:
        return Folder, (self.uri,)

    def __repr__(self) -> str:
        return f"Folder({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def local_path(self, name: str = "") -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local folder")
        return Path(self.root, name) if name else Path(self.root)

    def path(self, name: str = "") -> str:
        """`name`'s path inside the filesystem."""
        return f"{self.root}/{name}" if name else self.root

    def where(self, name: str) -> str:
        """`name` as the user would write it (for messages): the folder's URI or path joined with it."""
        return f"{self.uri}/{name}" if name else self.uri

    def size(self, name: str) -> int | None:
        """The object's byte size, None when there is none."""
        info = retried(lambda: self.fs.get_file_info(self.path(name)), self.where(name))
        return info.size if info.type == pafs.FileType.File else None

    def exists(self) -> bool:
        info = retried(lambda: self.fs.get_file_info(self.root), self.uri)
        return info.type != pafs.FileType.NotFound

    def read_bytes(self, name: str, limit: int) -> bytes:
        """The whole object, refused (ValueError) before it is read when it holds more than `limit` bytes."""
        size = self.size(name)
        if size is None:
            raise FileNotFoundError(f"{self.where(name)}: no such file")
        if size > limit:
            raise ValueError(f"{self.where(name)}: {size} bytes, more than the {limit} a reader accepts")

        def read() -> bytes:
            with self.fs.open_input_stream(self.path(name)) as f:
                return f.read(limit + 1)

        data = retried(read, self.where(name))
        if len(data) > limit:
            raise ValueError(f"{self.where(name)}: grew past {limit} bytes while it was read")
        return data

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a whole object: atomically (temp file, rename) on a local disk; an S3 PUT is atomic itself."""
        if self.is_local:
            path = self.local_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(data)
            tmp.replace(path)
            return
        with self.fs.open_output_stream(self.path(name)) as f:
            f.write(data)

    def open_write(self, name: str) -> pa.NativeFile:
        if self.is_local:
            self.local_path(name).parent.mkdir(parents=True, exist_ok=True)
        return self.fs.open_output_stream(self.path(name))

    def open_stream(self, name: str, buffer_size: int = 8 << 20) -> io.BufferedReader:
        """Sequential reads of one object. On object storage a dropped connection resumes at the byte it reached
        (READ_ATTEMPTS tries with backoff, each logged), so a whole-shard read survives a blip and fails with one
        StorageError line when the endpoint stays away. Reads are `buffer_size` ranged GETs."""
        if self.is_local:
            return open(self.local_path(name), "rb", buffering=buffer_size)  # noqa: SIM115 - the caller closes it
        return io.BufferedReader(_ResumingObject(self, name), buffer_size=buffer_size)

    def delete(self, name: str = "") -> None:
        """Remove `name` (a file or a folder with everything below it), or the whole folder; nothing when absent."""
        info = retried(lambda: self.fs.get_file_info(self.path(name)), self.where(name))
        if info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(name))
        elif info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(name))


class _ResumingObject(io.RawIOBase):
    def __init__(self, folder: Folder, name: str) -> None:
        self.folder, self.name, self.position, self.file = folder, name, 0, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        def read() -> int:
            if self.file is None:
                self.file = self.folder.fs.open_input_file(self.folder.path(self.name))
                self.file.seek(self.position)
            try:
                return self.file.readinto(buffer)
            except OSError:
                self.file = None  # reopened at self.position on the next attempt
                raise

        n = retried(read, self.folder.where(self.name))
        self.position += n
        return n

    def readall(self) -> bytes:
        # io's default reads 8 KiB at a time: here each read is a ranged GET (~4 ms against a local endpoint;
        # reading 88 MB of point-bank chunks back took 12 s). Read in whole-buffer GETs instead.
        parts = []
        while True:
            buffer = bytearray(READALL_CHUNK)
            n = self.readinto(memoryview(buffer))
            if not n:
                return b"".join(parts)
            parts.append(bytes(buffer[:n]) if n < len(buffer) else bytes(buffer))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        super().close()


def retried(call: Callable[[], T], where: str, attempts: int = READ_ATTEMPTS) -> T:
    """`call()`, retried with exponential backoff on a transport error (OSError that is not 'no such file');
    after `attempts` tries: StorageError naming `where` and the last error."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
            raise
        except OSError as error:
            if attempt == attempts:
                raise StorageError(f"{where}: {_one_line(error)} (after {attempts} attempts)") from None
            delay = BACKOFF_S * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", where, _one_line(error), delay, attempt,
                        attempts)  # fmt: skip
            time.sleep(delay)
    raise AssertionError("unreachable")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def check_reachable(location: str | Path, what: str) -> None:
    """For the driver, before Ray or MLflow start: an object-store location's bucket exists and the credentials
    are accepted; one StorageError line otherwise. Local paths are left to their own checks."""
    if not is_uri(location):
        return
    folder = Folder(location)
    bucket = folder.root.split("/", 1)[0]
    try:
        info = folder.fs.get_file_info(bucket)
    except OSError as error:
        line = _one_line(error)
        if "ACCESS_DENIED" in line or "403" in line:
            line += " (the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the chain)"
        raise StorageError(f"{what} {location}: {line}") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{what} {location}: bucket {bucket!r} does not exist")

