"""An in-process store with the semantics of :class:`~sandboxrt.stores.file.FileStore`.

Records are kept serialised, so a returned record is always a fresh copy and
corrupt data behaves as it does on disk. Locks are per-container
:class:`threading.Lock` objects: exclusive between threads, not processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from sandboxrt._caller_paths import absolute_path
from sandboxrt._forksafe import ForkSafeLock
from sandboxrt._os.exiting import call_at_exit
from sandboxrt.errors import (
    ContainerNotFoundError,
    InvalidArgumentError,
    LockTimeoutError,
    SandboxrtError,
)
from sandboxrt.stores import memory_dirs
from sandboxrt.stores.base import DEFAULT_LOCK_TIMEOUT
from sandboxrt.stores.file import _RecordStore

__all__ = ["MemoryStore"]

#: How long a wait for a container's lock goes before it looks for a Ctrl-C held back.
_WAIT_SLICE = 0.05

log = logging.getLogger("sandboxrt")


class MemoryStore(_RecordStore[threading.Lock]):
    """Records in a dict, for tests and single-process embedding; thread-safe.

    ``runtime_dir`` defaults to a private temporary directory, made on first
    access and removed (if empty) when the store is garbage-collected.

    No other process can reach its containers, so none outlives the process that
    made it: those still recorded when it exits are destroyed then, also those of a
    store garbage-collected before (which no one could reach any more). A forked
    child destroys those it made itself, not its parent's. Should the process be
    killed outright (SIGKILL), or ``exec`` another program, its containers' processes
    are killed with it (their sandboxes are tied to it: once a child it forked
    meanwhile has exited too), and their sandboxes remove their cgroups and runtime
    directories (not in a user namespace of their own, which may not). Those of a
    container that had exited before stay, empty, until another process makes a
    MemoryStore's temporary directory: it removes what stores of processes all gone left
    (``stores.memory_dirs``).
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
        #: The sockets whose closing ends a recorded container's sandbox (``tied``): held
        #: while it is recorded, so that it dies with this process however it ends.
        self._ties: dict[str, socket.socket] = {}
        self._mutex = ForkSafeLock()  # (per container: timed locks, a LockTimeoutError)
        # Absolute, links resolved: the directory is named alike by every spelling of
        # it, and stays the same one whatever this process's working directory becomes.
        given_dir = None
        if runtime_dir is not None:
            given_dir = absolute_path(runtime_dir, "runtime directory", resolve=True)
        self._runtime_dir = given_dir
        if self._runtime_dir is not None and any(
            self._runtime_dir in store._made_in for store in _live_stores()
        ):  # (ids are unique in a store: two would take each other's sandboxes' files)
            problem = f"{self._runtime_dir} is the runtime directory of another MemoryStore"
            raise InvalidArgumentError("", problem)
        #: Where its runtime directory is, once known: for :func:`_orphaned`.
        self._made_in: list[Path] = [] if given_dir is None else [given_dir]
        #: The temporary runtime directory it made itself (removed when left empty).
        self._made_temp: Path | None = None
        #: The process it was made in (for records that name no creator).
        self._owner = os.getpid()
        _LIVE.add(self)
        given = runtime_dir is not None
        finalize = weakref.finalize(
            self, _orphaned, self._records, self._made_in, given, self._ties
        )
        finalize.atexit = False

    def __repr__(self) -> str:
        return f"MemoryStore(<{len(self._records)} records>)"

    @property
    def runtime_dir(self) -> Path:
        """The directory for sandbox sockets and status files."""
        with self._mutex:
            if self._runtime_dir is None:
                path = memory_dirs.make()
                weakref.finalize(self, memory_dirs.remove_if_empty, path)
                self._runtime_dir = self._made_temp = path
                self._made_in.append(path)
            else:
                self._runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return self._runtime_dir

    @property
    def made_runtime_dir(self) -> bool:
        """Whether :attr:`runtime_dir` is a temporary directory the store made (and removes
        once empty), not one it was given."""
        with self._mutex:
            return self._runtime_dir is not None and self._runtime_dir == self._made_temp

    def _acquire(self, cid: str, timeout: float, interrupted: Sequence[int] = ()) -> threading.Lock:
        deadline = time.monotonic() + min(timeout, threading.TIMEOUT_MAX)
        while True:
            with self._mutex:
                lock = self._locks.setdefault(cid, threading.Lock())
            # In slices: a Ctrl-C held back (see ``lock``) ends the wait.
            while not lock.acquire(timeout=min(_WAIT_SLICE, max(0.0, deadline - time.monotonic()))):
                if interrupted:
                    raise KeyboardInterrupt
                if time.monotonic() >= deadline:
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
        if not replace:
            call_at_exit(_destroy_left)  # (a multiprocessing worker's exit too: decision 62)
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
            tie = self._ties.pop(cid, None)
        if tie is not None:
            tie.close()

    def keep_tie(self, cid: str, tie: socket.socket) -> None:
        """Hold ``tie`` while ``cid`` is recorded: the sandbox ends when it closes, this
        process's end included (see ``SandboxPlan.tied``)."""
        with self._mutex:
            self._ties[cid] = tie

    def list_ids(self) -> list[str]:
        """The ids of all stored containers, sorted."""
        with self._mutex:
            return sorted(self._records)


#: How long a destroy at exit waits for a container's lock (unless its config says).
_EXIT_LOCK_TIMEOUT = 5.0
#: Every MemoryStore alive, and stand-ins for those collected while they still recorded
#: containers: what :func:`_destroy_left` goes through when this process exits.
_LIVE: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


def _live_stores() -> list[MemoryStore]:
    """The live stores, now (another thread may make or drop one as we look: the set's
    iteration then raises, and is done again)."""
    while True:
        try:
            return list(_LIVE)
        except RuntimeError:  # (set changed size during iteration)
            continue


_ORPHANS: list[MemoryStore] = []


def _orphaned(
    records: dict[str, bytes], made_in: list[Path], given: bool, ties: dict[str, socket.socket]
) -> None:
    """A store was garbage-collected: keep what it still recorded, for the exit (in a
    stand-in with its records, the sockets its sandboxes end with, and its runtime
    directory)."""
    if records:
        stand_in = MemoryStore()
        stand_in._records.update(records)
        stand_in._ties.update(ties)
        if made_in:
            stand_in._runtime_dir = made_in[0]
            stand_in._made_in = made_in
            stand_in._made_temp = None if given else made_in[0]
        _ORPHANS.append(stand_in)


def _made_here(store: MemoryStore, cid: str) -> bool:
    """Whether this process created container ``cid`` of ``store`` (a forked child has
    copies of its parent's records: not its containers)."""
    try:
        creator = store.load(cid).creator
    except SandboxrtError:
        return store._owner == os.getpid()
    return (creator.pid if creator is not None else store._owner) == os.getpid()


def _destroy_left() -> None:
    """At exit: destroy the containers this process made that MemoryStores still record
    (nothing else could); a Ctrl-C meanwhile waits for the end, and is dropped there."""
    left = [
        (store, cid)
        for store in (*_live_stores(), *_ORPHANS)
        for cid in store.list_ids()
        if _made_here(store, cid)
    ]
    if not left:
        return
    from sandboxrt._os import cgroups
    from sandboxrt._signals import interrupts_deferred
    from sandboxrt.container import Container

    with contextlib.suppress(KeyboardInterrupt), interrupts_deferred():
        for store, _ in left:  # (a daemon thread caught in a create holds its lock for good)
            store._lock_timeout = min(store._lock_timeout, _EXIT_LOCK_TIMEOUT)
        for store, cid in left:
            try:
                Container.load(cid, store=store).destroy()
            except ContainerNotFoundError:
                pass  # (a pod's member, gone with its root)
            except Exception as exc:  # (one failing must not keep the others)
                log.warning("container %s of a MemoryStore outlives this process: %s", cid, exc)
        for store in {id(store): store for store, _ in left}.values():
            if store._made_temp is not None:
                memory_dirs.remove_if_empty(store._made_temp)
        cgroups.release_parents()  # (it ran before us, at exit: our destroys kept levels)
