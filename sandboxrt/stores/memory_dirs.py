"""The temporary runtime directories of MemoryStores: held by the processes that may use
them, and swept once none is left (decision 66).

A MemoryStore's records die with its process. Its sandboxes remove their cgroups and
runtime files when that process is killed while they run (decision 64); a container that
had exited before leaves them, with no one to remove them. So each such directory holds
a lock file, :data:`LOCK_NAME`, ``flock``-ed shared by the process that made it, and so
by every child it forks (which has a copy of the store), never by a program either
execs (close-on-exec). A process making a new directory first takes each other one of
its user's exclusively, without waiting: taken, no process that could use it is left,
and it removes what is there (the sandboxes' runtime files, and the cgroups of the
store's level that are empty).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import posixpath
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sandboxrt._forksafe import ForkSafeLock
from sandboxrt._os import channel, removal
from sandboxrt.errors import SandboxrtError

if TYPE_CHECKING:
    from sandboxrt._os.cgroups.layout import Hierarchy

__all__ = ["LOCK_NAME", "PREFIX", "make", "remove_if_empty", "sweep"]

#: The name of a MemoryStore's temporary runtime directory starts with this.
PREFIX = "sandboxrt-mem-"
#: The lock file in it, held (shared) by the processes that may use the store.
LOCK_NAME = ".lock"

_O_LOCK = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
#: The directories this process made, with the fd holding each one's lock (and the
#: process that made it: a forked child holds its parent's too, but leaves them be).
_held: dict[Path, tuple[int, int]] = {}
_mutex = ForkSafeLock()  # (a child forked while another thread held it gets it unheld)
_swept = False


def make() -> Path:
    """A new temporary runtime directory, held by this process (and the children it
    forks) until :func:`remove_if_empty` removes it; the first in a process sweeps
    those that no process holds any more (:func:`sweep`) before."""
    global _swept
    with _mutex:
        if not _swept:
            _swept = True
            sweep(tempfile.gettempdir())
        path = Path(tempfile.mkdtemp(prefix=PREFIX))
        # Locked before it is named: a sweep never finds it free.
        made = path / f"{LOCK_NAME}-{secrets.token_hex(4)}"
        fd = os.open(made, _O_LOCK | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.rename(made, path / LOCK_NAME)
        except BaseException:
            os.close(fd)
            shutil.rmtree(path, ignore_errors=True)
            raise
        _held[path] = (fd, os.getpid())
        return path


def remove_if_empty(path: Path) -> None:
    """Let go of ``path`` (made by :func:`make` in this process, which uses it no more),
    and remove it if nothing but its lock file is left in it and no other process holds
    it (a child this one forked, which may still use its copy of the store: then the
    last to go leaves it to a sweep)."""
    with _mutex:
        fd, maker = _held.get(path, (-1, -1))
        if maker != os.getpid() or not _only_lock_in(path):
            return  # (the containers a stand-in destroys at exit are still in it: held)
        del _held[path]
        os.close(fd)  # (our hold: a forked child's, on the same open file, stays)
        with contextlib.suppress(OSError):
            parent = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                removal.remove_unheld(parent, path.name, LOCK_NAME)
            finally:
                os.close(parent)


def _only_lock_in(path: Path) -> bool:
    try:
        return os.listdir(path) == [LOCK_NAME]
    except OSError:
        return False


def sweep(top: str) -> None:
    """Remove the MemoryStore directories of this user in ``top`` that no process holds,
    and the cgroups of their stores' level. Best effort."""
    try:
        entries = list(os.scandir(top))
    except OSError:
        return
    uid = os.geteuid()
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != uid:
                continue
            fd = os.open(os.path.join(entry.path, LOCK_NAME), _O_LOCK)
        except OSError:
            continue  # (no lock file: made by an older sandboxrt, or being removed)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: a process that may use the store lives
            _remove_left(Path(entry.path))
        finally:
            os.close(fd)


def _remove_left(path: Path) -> None:
    """Remove what the store at ``path`` left: the cgroups of its level (empty ones
    only: ``rmdir``), then the directory. Not if a supervisor still serves in it."""
    from sandboxrt import _cgroup
    from sandboxrt._os import cgroups

    with contextlib.suppress(OSError):
        for sandbox in path.iterdir():
            control = sandbox / "ctl"
            if control.is_socket() and channel.listening(str(control)):
                return
    level = posixpath.dirname(cgroups.default_path("-", _cgroup.scope_for(path, transient=True)))
    with contextlib.suppress(OSError, SandboxrtError):
        for hierarchy in _hierarchies():
            _remove_empty_tree(str(hierarchy.mountpoint) + level)
    shutil.rmtree(path, ignore_errors=True)


@functools.cache
def _hierarchies() -> tuple[Hierarchy, ...]:
    """The mounted cgroup hierarchies, read once (a sweep may find many stores)."""
    from sandboxrt._os import cgroups

    return cgroups.detect().hierarchies


def _remove_empty_tree(directory: str) -> None:
    """``rmdir`` every directory of the cgroup tree ``directory``, children first: a
    cgroup with a process in it (or a child left) stays."""
    if not os.path.isdir(directory):
        return
    for below, _, _ in os.walk(directory, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(below)
