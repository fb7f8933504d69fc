"""Container records as files: one JSON record and one lock file per container.

Layout of a store root (ids never start with ``.``, so dotted names cannot
clash with them)::

    <root>/<id>.json        the record, replaced atomically on every save
    <root>/<id>.lock        the container's flock(2) lock file, never replaced; removed
                            (under the lock) when the lock is released without a record
    <root>/.tmp-<id>-<hex>  a record being written (ignored, cleaned up when stale)
    <root>/.sandboxes/      runtime_dir: sandbox sockets and status files

This module also holds :class:`_RecordStore`, the logic every store shares.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import math
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

import portalocker

from sandboxrt._caller_paths import absolute_path
from sandboxrt._core.ids import validate_id
from sandboxrt._core.records import ContainerRecord, record_from_json, record_to_json
from sandboxrt._os import syscalls
from sandboxrt._signals import interrupts_deferred
from sandboxrt.errors import (
    ContainerExistsError,
    ContainerNotFoundError,
    CorruptMetadataError,
    InvalidArgumentError,
    InvalidIDError,
    LockTimeoutError,
    SandboxrtError,
    SystemCallError,
)
from sandboxrt.stores.base import DEFAULT_LOCK_TIMEOUT

__all__ = ["MAX_FILE_ID_LENGTH", "FileStore", "default_root"]

_RECORD_SUFFIX = ".json"
_LOCK_SUFFIX = ".lock"
_TEMP_PREFIX = ".tmp-"
_NAME_MAX = 255
#: The longest id a :class:`FileStore` can hold: ``<id>.json`` must fit in NAME_MAX.
MAX_FILE_ID_LENGTH = _NAME_MAX - len(_RECORD_SUFFIX)
#: Temp files older than this (seconds) are left over by a crashed writer.
_STALE_TEMP_AGE = 60.0
_POLL_FIRST, _POLL_MAX = 0.001, 0.05
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW

_H = TypeVar("_H")


def default_root() -> Path:
    """The store root used when none is given.

    ``/run/sandboxrt`` for root, else ``$XDG_RUNTIME_DIR/sandboxrt``. Without an
    (absolute) ``XDG_RUNTIME_DIR`` it falls back to ``<tmpdir>/sandboxrt-<uid>``
    (``/tmp`` unless ``TMPDIR`` says otherwise); :class:`FileStore` refuses to use
    a default root that is not a private directory owned by the caller.
    """
    uid = os.geteuid()
    if uid == 0:
        return Path("/run/sandboxrt")
    xdg = Path(os.environ.get("XDG_RUNTIME_DIR", ""))
    if xdg.is_absolute():
        return xdg / "sandboxrt"
    return Path(tempfile.gettempdir()) / f"sandboxrt-{uid}"


@contextlib.contextmanager
def _os_errors(what: str, container_id: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into :class:`SystemCallError`."""
    try:
        yield
    except SandboxrtError:
        raise
    except OSError as err:
        raise SystemCallError(what, err, container_id=container_id) from err


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"a lock timeout must be a number of seconds, not {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise InvalidArgumentError("", f"a lock timeout must be a number >= 0, not {timeout!r}")
    return float(timeout)


class _RecordStore(abc.ABC, Generic[_H]):
    """What every store shares: id checks, encoding, create-if-absent, the lock's life.

    Subclasses store encoded records (``_put``/``_get``/``_exists``/``_remove``)
    and take and release the per-container lock (``_acquire``/``_release``,
    ``_H`` being a held lock). When a lock is released and its container has no
    record (it was deleted, or never created), the lock itself is dropped
    first: only a holder may do that safely, and ``_acquire`` retries when the
    lock it waited for was dropped meanwhile.
    """

    def __init__(self, lock_timeout: float) -> None:
        self._lock_timeout = _check_timeout(lock_timeout)

    def _check_id(self, container_id: str) -> str:
        return validate_id(container_id)

    @contextlib.contextmanager
    def lock(self, container_id: str, *, timeout: float | None = None) -> Iterator[None]:
        """Hold the container's exclusive lock for a ``with`` block (not re-entrant).

        Raises :class:`LockTimeoutError` after ``timeout`` seconds (default: the
        store's ``lock_timeout``).
        """
        cid = self._check_id(container_id)
        seconds = self._lock_timeout if timeout is None else _check_timeout(timeout)
        # A Ctrl-C is held back from the moment the lock is ours until the block owns it,
        # and during its release (it left the lock held, for good, by nobody); the wait
        # for it stays interruptible (it looks at what was held back).
        held: list[_H] = []
        try:
            with interrupts_deferred() as interrupted:
                held.append(self._acquire(cid, seconds, interrupted))
            yield
        finally:
            if held:
                with interrupts_deferred():
                    self._release(cid, held[0], drop=not self._exists(cid))

    def create(self, record: ContainerRecord) -> None:
        """Store a new record; :class:`ContainerExistsError` if the id is taken."""
        self._write(record, replace=False)

    def save(self, record: ContainerRecord) -> None:
        """Store ``record`` atomically, replacing the previous one."""
        self._write(record, replace=True)

    def _write(self, record: ContainerRecord, *, replace: bool) -> None:
        cid = self._check_id(record.id)
        if not self._put(cid, record_to_json(record), replace=replace):
            raise ContainerExistsError(cid)

    def load(self, container_id: str) -> ContainerRecord:
        """The record of ``container_id`` (an exact id).

        Raises :class:`ContainerNotFoundError`, or :class:`CorruptMetadataError`
        when the stored data is not a record of this container.
        """
        cid = self._check_id(container_id)
        data = self._get(cid)
        if data is None:
            raise ContainerNotFoundError(cid)
        try:
            record = record_from_json(data)
        except Exception as exc:  # any parse failure means the data is corrupt
            raise CorruptMetadataError(cid, f"{type(exc).__name__}: {exc}") from exc
        if record.id != cid:
            raise CorruptMetadataError(cid, f"the record names container {record.id!r}")
        return record

    def delete(self, container_id: str) -> None:
        """Remove the record (a missing one is fine); its lock goes when released."""
        self._remove(self._check_id(container_id))

    @abc.abstractmethod
    def list_ids(self) -> list[str]:
        """The ids of all stored containers, sorted."""

    @abc.abstractmethod
    def _acquire(self, cid: str, timeout: float, interrupted: Sequence[int] = ()) -> _H:
        """Take the lock of ``cid`` or raise :class:`LockTimeoutError`; a wait for it ends
        with ``KeyboardInterrupt`` once ``interrupted`` holds a signal (a Ctrl-C held
        back)."""

    @abc.abstractmethod
    def _release(self, cid: str, handle: _H, *, drop: bool) -> None:
        """Release a lock; with ``drop``, first remove it (the container is gone)."""

    @abc.abstractmethod
    def _put(self, cid: str, data: bytes, *, replace: bool) -> bool:
        """Store ``data`` atomically; without ``replace``, return False if it exists."""

    @abc.abstractmethod
    def _get(self, cid: str) -> bytes | None:
        """The stored data of ``cid``, or None."""

    @abc.abstractmethod
    def _exists(self, cid: str) -> bool:
        """Whether a record (even a corrupt one) of ``cid`` is stored."""

    @abc.abstractmethod
    def _remove(self, cid: str) -> None:
        """Remove the stored data of ``cid`` if any."""


class FileStore(_RecordStore[int]):
    """Records in a directory; locks are flock(2) locks, exclusive across processes and threads.

    ``root`` defaults to :func:`default_root` and is created (0o711 for root,
    0o700 otherwise) on first use. Records are 0600 files replaced atomically
    (temp file, then rename), so a crashed process leaves the old or the new
    record. With ``durable=True`` the file and the directory are also fsynced,
    so that holds across power loss too; the default root is usually on tmpfs,
    which a reboot empties anyway, so it is off by default. A lock is an open
    file description of ``<id>.lock`` (close-on-exec), polled with
    ``LOCK_EX | LOCK_NB`` until the timeout.
    Ids longer than :data:`MAX_FILE_ID_LENGTH` are rejected.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        durable: bool = False,
    ) -> None:
        super().__init__(lock_timeout)
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be a bool, not {durable!r}")
        if root is not None and not os.fspath(root):
            raise InvalidArgumentError("", "a store's root must name a directory, not ''")
        self.durable = durable
        # A default root outside root's /run must be private to us (it may be in /tmp).
        self._must_be_private = root is None and os.geteuid() != 0
        self._root = absolute_path(default_root() if root is None else root, "store root")
        self._root_ready = False

    def __repr__(self) -> str:
        return f"FileStore({str(self._root)!r})"

    @property
    def root(self) -> Path:
        """The directory holding the records (it may not exist yet)."""
        return self._root

    @property
    def runtime_dir(self) -> Path:
        """``<root>/.sandboxes``, created (0o711) on access."""
        path = self._ensure_root() / ".sandboxes"
        with _os_errors(f"create runtime directory {path}"):
            _mkdir(path, 0o711)
        return path

    # -- paths ---------------------------------------------------------------------------------

    def _record_path(self, cid: str) -> Path:
        return self._root / (cid + _RECORD_SUFFIX)

    def _lock_path(self, cid: str) -> Path:
        """The one place that names a container's lock file."""
        return self._root / (cid + _LOCK_SUFFIX)

    def _check_id(self, container_id: str) -> str:
        cid = validate_id(container_id)
        if len(cid) > MAX_FILE_ID_LENGTH:
            raise InvalidIDError(
                cid, f"a file store holds ids of at most {MAX_FILE_ID_LENGTH} characters"
            )
        return cid

    def _ensure_root(self) -> Path:
        if not self._root_ready:
            mode = 0o711 if os.geteuid() == 0 else 0o700
            with _os_errors(f"create store directory {self._root}"):
                _mkdir(self._root, mode, parents=True)
                if self._must_be_private:
                    _require_private(self._root)
            self._root_ready = True
        return self._root

    def _check_existing_root(self) -> None:
        """Before reading: a default root in /tmp must be private even if we did not make it."""
        if self._must_be_private and not self._root_ready and self._root.exists():
            self._ensure_root()

    def _fsync_root(self) -> None:
        if not self.durable:
            return
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- locking -------------------------------------------------------------------------------

    def _acquire(self, cid: str, timeout: float, interrupted: Sequence[int] = ()) -> int:
        path = self._lock_path(cid)
        deadline = time.monotonic() + timeout
        self._ensure_root()
        while True:
            with _os_errors(f"open lock file {path}", cid):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600)
            try:
                delay = _POLL_FIRST
                while not _try_flock(fd, cid):
                    if interrupted:
                        raise KeyboardInterrupt
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LockTimeoutError(cid, timeout)
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, _POLL_MAX)
                # A holder may have deleted (and someone recreated) the file meanwhile:
                # only a lock on the file the path names now counts.
                if _same_file(fd, path):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _release(self, cid: str, handle: int, *, drop: bool) -> None:
        try:
            if drop:
                path = self._lock_path(cid)
                with _os_errors(f"remove lock file {path}", cid):
                    if _same_file(handle, path):
                        path.unlink(missing_ok=True)
            portalocker.unlock(handle)
        finally:
            os.close(handle)

    # -- records -------------------------------------------------------------------------------

    def _put(self, cid: str, data: bytes, *, replace: bool) -> bool:
        root = self._ensure_root()
        path = self._record_path(cid)
        tmp = root / f"{_TEMP_PREFIX}{cid[:200]}-{secrets.token_hex(8)}"
        with _os_errors(f"write {path}", cid):
            try:
                # (in the try: an interrupt right after it still removes the file)
                fh = _create_exclusively(tmp)
                with fh:
                    fh.write(data)
                    fh.flush()
                    if self.durable:
                        os.fsync(fh.fileno())
                if replace:
                    _replace(tmp, path)
                else:
                    try:
                        os.link(tmp, path)  # atomic create-if-absent
                    except FileExistsError:
                        return False
            finally:
                tmp.unlink(missing_ok=True)
            self._fsync_root()
        return True

    def _get(self, cid: str) -> bytes | None:
        path = self._record_path(cid)
        with _os_errors(f"read {path}", cid):
            self._check_existing_root()
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

    def _exists(self, cid: str) -> bool:
        return self._record_path(cid).exists()

    def _remove(self, cid: str) -> None:
        path = self._record_path(cid)
        with _os_errors(f"remove {path}", cid):
            try:
                path.unlink()
            except FileNotFoundError:
                return
            self._fsync_root()

    def list_ids(self) -> list[str]:
        """Ids of the ``<id>.json`` records in the root, sorted; other files are ignored.

        What a process killed half-way left is removed on the way, once a minute old:
        temporary files, and lock files of no record that nobody holds.
        """
        ids = []
        locks = []
        now = time.time()
        with _os_errors(f"list {self._root}"):
            self._check_existing_root()
            try:
                entries = list(os.scandir(self._root))
            except FileNotFoundError:
                return []
        for entry in entries:
            name = entry.name
            if name.startswith(_TEMP_PREFIX):
                _remove_if_stale(entry, now)
            elif name.endswith(_RECORD_SUFFIX) and _is_file(entry):
                cid = name[: -len(_RECORD_SUFFIX)]
                with contextlib.suppress(InvalidIDError):
                    ids.append(self._check_id(cid))
            elif name.endswith(_LOCK_SUFFIX) and _is_stale(entry, now):
                locks.append(name[: -len(_LOCK_SUFFIX)])
        for cid in set(locks).difference(ids):
            self._drop_lock_if_free(cid)
        return sorted(ids)

    def _drop_lock_if_free(self, cid: str) -> None:
        """Remove the lock file of ``cid`` (which has no record) unless someone holds it:
        as its holder, the one who may (see :class:`_RecordStore`)."""
        with contextlib.suppress(SandboxrtError, OSError):
            handle = self._acquire(self._check_id(cid), 0.0)
            self._release(cid, handle, drop=not self._exists(cid))


def _create_exclusively(path: Path) -> BinaryIO:
    """``path`` made anew (``O_EXCL``, never through a symlink) and opened for writing; a
    Ctrl-C meanwhile is held back until the file object owns the fd (it lost the fd)."""
    fh: BinaryIO | None = None
    try:
        with interrupts_deferred():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600)
            fh = os.fdopen(fd, "wb")
    except BaseException:
        if fh is not None:
            fh.close()
        raise
    return fh


def _mkdir(path: Path, mode: int, *, parents: bool = False) -> None:
    """Create ``path`` with exactly ``mode`` (umask notwithstanding) unless it exists."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    path.chmod(mode)


def _require_private(path: Path) -> None:
    """Refuse a directory others could have planted or can read (e.g. in /tmp)."""
    st = os.lstat(path)
    uid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise PermissionError(
            errno.EPERM,
            f"{path} is not a directory private to uid {uid}; set XDG_RUNTIME_DIR "
            "or pass the store a root",
        )


def _try_flock(fd: int, cid: str) -> bool:
    """Take an exclusive flock on ``fd`` without blocking; False if it is held elsewhere."""
    try:
        portalocker.lock(fd, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
    except portalocker.exceptions.LockException as exc:
        cause = exc.__cause__
        if isinstance(exc, portalocker.exceptions.AlreadyLocked) or (
            isinstance(cause, OSError) and cause.errno in (errno.EAGAIN, errno.EACCES)
        ):
            return False
        err = cause if isinstance(cause, OSError) else OSError(errno.EIO, str(exc))
        raise SystemCallError("lock", err, container_id=cid) from exc
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _is_stale(entry: os.DirEntry[str], now: float) -> bool:
    """Whether ``entry`` is a file older than :data:`_STALE_TEMP_AGE` seconds."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and now - st.st_mtime > _STALE_TEMP_AGE


def _remove_if_stale(entry: os.DirEntry[str], now: float) -> None:
    """Remove a temp file a crashed writer left behind (best effort)."""
    if _is_stale(entry, now):
        with contextlib.suppress(OSError):
            Path(entry.path).unlink()


def _replace(new: Path, path: Path) -> None:
    """Put ``new`` in ``path``'s place atomically (``path`` has the new file or the old,
    whole, at every moment), leaving the old one, if any, under ``new``'s name."""
    try:
        syscalls.rename_exchange(str(new), str(path))
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EPERM):
            raise
        new.replace(path)  # no old file to swap with, or a filesystem without exchange
