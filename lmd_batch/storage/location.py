"""A folder on any fsspec filesystem, with atomic writes and one-line storage errors.

Local disk writes go to a temporary file in the same folder and are renamed into place
(os.replace), so a reader never sees half a file. Object stores (s3://, gs://) create an object
only when its upload completes, and memory:// writes whole values, so `pipe_file` is atomic there.
Transient failures are retried a few times with backoff; what still fails becomes a
StorageError naming the URL and the operation.
"""

from __future__ import annotations

import os
import time
import uuid

from lmd_batch.errors import StorageError

_RETRIES = 3
_BACKOFF_S = 0.5


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    return isinstance(exc, (OSError, ConnectionError, TimeoutError)) or "Timeout" in type(exc).__name__


class Location:
    """A root folder URL plus fsspec storage options; all paths below it are relative."""

    def __init__(self, url: str, storage_options: dict | None = None):
        import fsspec.core

        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except ImportError as exc:
            raise StorageError(f"cannot open {url}: {exc} (install the filesystem's package, e.g. s3fs or gcsfs)") from None
        except Exception as exc:
            raise StorageError(f"cannot open {url}: {type(exc).__name__}: {exc}") from None
        self.root = self.root.rstrip("/")
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def display(self, rel: str = "") -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def _call(self, op: str, rel: str, fn, *args, **kwargs):
        for attempt in range(_RETRIES + 1):
            try:
                return fn(*args, **kwargs)
            except FileNotFoundError:
                raise
            except Exception as exc:
                if attempt < _RETRIES and _transient(exc):
                    time.sleep(_BACKOFF_S * 2**attempt)
                    continue
                msg = str(exc).splitlines()[0] if str(exc) else ""
                raise StorageError(f"storage {op} failed for {self.display(rel)}: {type(exc).__name__}: {msg}") from None

    # reads ---------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return bool(self._call("exists", rel, self.fs.exists, self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        """Whole file; raises FileNotFoundError when missing."""
        return self._call("read", rel, self.fs.cat_file, self.path(rel))

    def read_bytes_or_none(self, rel: str) -> bytes | None:
        try:
            return self.read_bytes(rel)
        except FileNotFoundError:
            return None

    def list_names(self, rel: str) -> list[str]:
        """Sorted base names of the files directly in folder `rel` (empty when it does not exist)."""
        path = self.path(rel)
        try:
            self.fs.invalidate_cache(path)
            entries = self._call("list", rel, self.fs.ls, path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def is_empty(self) -> bool:
        return not self.list_names("")

    # writes --------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically (see the module docstring)."""
        path = self.path(rel)
        if self.is_local:
            self._call("write", rel, self._write_local, path, data)
        else:
            self._call("write", rel, self.fs.pipe_file, path, data)

    @staticmethod
    def _write_local(path: str, data: bytes) -> None:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def delete(self, rel: str) -> None:
        try:
            self._call("delete", rel, self.fs.rm_file, self.path(rel))
        except FileNotFoundError:
            pass

    def delete_tree(self, rel: str = "") -> None:
        """Delete everything under `rel` (the whole location when rel is empty)."""
        path = self.path(rel)
        try:
            if self._call("delete", rel, self.fs.exists, path):
                self._call("delete", rel, self.fs.rm, path, recursive=True)
        except FileNotFoundError:
            pass
