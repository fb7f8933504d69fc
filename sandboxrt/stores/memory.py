"""An in-process store with the semantics of :class:`~sandboxrt.stores.file.FileStore`.

Records are kept serialised, so a returned record is always a fresh copy and
corrupt data behaves as it does on disk. Locks are per-container
:class:`threading.Lock` objects: exclusive between threads, not processes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import weakref
from pathlib import Path

from sandboxrt._forksafe import ForkSafeLock
from sandboxrt.errors import LockTimeoutError
from sandboxrt.stores.base import DEFAULT_LOCK_TIMEOUT
from sandboxrt.stores.file import _RecordStore

__all__ = ["MemoryStore"]


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):  # gone, or still in use: leave it
        path.rmdir()


class MemoryStore(_RecordStore[threading.Lock]):
    """Records in a dict, for tests and single-process embedding; thread-safe.

    ``runtime_dir`` defaults to a private temporary directory, made on first
    access and removed (if empty) when the store is garbage-collected.
    """

    def __init__(
        self,
        runtime_dir: str | os.PathLike[str] | None = None,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        super().__init__(lock_timeout)
        self._records: dict[str, bytes] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._mutex = ForkSafeLock()  # (per container: timed locks, a LockTimeoutError)
        self._runtime_dir = None if runtime_dir is None else Path(runtime_dir)

    def __repr__(self) -> str:
        return f"MemoryStore(<{len(self._records)} records>)"

    @property
    def runtime_dir(self) -> Path:
        """The directory for sandbox sockets and status files."""
        with self._mutex:
            if self._runtime_dir is None:
                path = Path(tempfile.mkdtemp(prefix="sandboxrt-mem-"))
                weakref.finalize(self, _rmdir_if_empty, path)
                self._runtime_dir = path
            else:
                self._runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return self._runtime_dir

    def _acquire(self, cid: str, timeout: float) -> threading.Lock:
        deadline = time.monotonic() + min(timeout, threading.TIMEOUT_MAX)
        while True:
            with self._mutex:
                lock = self._locks.setdefault(cid, threading.Lock())
            if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise LockTimeoutError(cid, timeout)
            # The container may have been deleted (and its lock dropped) while we waited.
            with self._mutex:
                if self._locks.get(cid) is lock:
                    return lock
            lock.release()

    def _release(self, cid: str, handle: threading.Lock, *, drop: bool) -> None:
        if drop:
            with self._mutex:
                if self._locks.get(cid) is handle:
                    del self._locks[cid]
        handle.release()

    def _put(self, cid: str, data: bytes, *, replace: bool) -> bool:
        with self._mutex:
            if not replace and cid in self._records:
                return False
            self._records[cid] = data
        return True

    def _get(self, cid: str) -> bytes | None:
        with self._mutex:
            return self._records.get(cid)

    def _exists(self, cid: str) -> bool:
        with self._mutex:
            return cid in self._records

    def _remove(self, cid: str) -> None:
        with self._mutex:
            self._records.pop(cid, None)

    def list_ids(self) -> list[str]:
        """The ids of all stored containers, sorted."""
        with self._mutex:
            return sorted(self._records)
