"""Removing directories through fds, as a process that may not trust the tree does (the
gofer serving a container's files, the supervisor removing what its creator left, a
MemoryStore letting go of its directory).

Standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from sandboxrt._os import beneath, channel

__all__ = ["refuse_mount_point", "remove_if_same", "remove_tree", "remove_unheld"]

_O_DIR = os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


def remove_tree(parent: int, name: str, *, same_as: os.stat_result | None = None) -> None:
    """Remove directory ``name`` of ``parent`` (an fd) and all it holds, through fds
    (with ``same_as``: only if it is the directory that is the status of, opened).

    Only ever opens a directory, never following a symlink and never blocking
    (``O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK``): a container may swap any entry
    for a FIFO, a device node or a symlink while we go (``shutil.rmtree`` opened
    what ``lstat`` had seen as a directory by name, and a FIFO there blocked us for
    good, a device node we then held open). What is no directory is unlinked; a
    mount point is refused (``EBUSY``). A loop, not a recursion: a tree is as deep
    as its writer made it (one fd held per level below the top).
    """
    top = _open_directory(parent, name)
    if top is None:
        return
    if same_as is not None and not _same_file(os.fstat(top), same_as):
        os.close(top)
        return
    levels = [(parent, name, top, _entries_or_close(top))]
    try:
        while levels:
            above, here, fd, entries = levels[-1]
            if not entries:
                levels.pop()
                os.close(fd)
                os.rmdir(here, dir_fd=above)
                continue
            entry, is_dir = entries.pop()
            if not is_dir:
                refuse_mount_point(fd, entry, entry)  # (a file bound there)
                try:
                    os.unlink(entry, dir_fd=fd)
                    continue
                except IsADirectoryError:  # swapped for a directory meanwhile
                    pass
            sub = _open_directory(fd, entry)
            if sub is not None:
                if _mount_of(sub) != _mount_of(fd):
                    os.close(sub)
                    raise OSError(errno.EBUSY, "a mount point is in the way", entry)
                levels.append((fd, entry, sub, _entries_or_close(sub)))
    finally:
        channel.close_fds([fd for _, _, fd, _ in levels])


def remove_if_same(parent: int, name: str, made: os.stat_result) -> bool:
    """Remove directory ``name`` of ``parent`` if it is still the one ``made`` is of (and
    empty); whether it did."""
    try:
        if not _same_file(os.lstat(name, dir_fd=parent), made):
            return False
        os.rmdir(name, dir_fd=parent)
    except OSError:
        return False
    return True


def remove_unheld(top: int, name: str, lock_name: str, *, patience: float = 0.0) -> bool:
    """Remove directory ``name`` of ``top`` (an fd) if nothing but ``lock_name`` is in
    it, an ``flock`` no process holds (taken exclusively, waiting up to ``patience``
    seconds); whether it did."""
    try:
        directory = os.open(name, os.O_RDONLY | _O_DIR, dir_fd=top)
    except OSError:
        return False
    try:
        lock = os.open(lock_name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        os.close(directory)
        return False
    try:
        _take(lock, patience)
        if os.listdir(directory) != [lock_name]:
            return False
        os.unlink(lock_name, dir_fd=directory)
        return remove_if_same(top, name, os.fstat(directory))
    except OSError:
        return False
    finally:
        os.close(lock)
        os.close(directory)


def _take(lock: int, patience: float) -> None:
    """``flock`` ``lock`` exclusively within ``patience`` seconds, else ``OSError``."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _same_file(one: os.stat_result, other: os.stat_result) -> bool:
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def refuse_mount_point(parent: int, name: str, path: str) -> None:
    """``EBUSY`` for a mount point, as the container's own ``rmdir`` gets: we are in a
    mount namespace of our own, where the kernel would detach the container's mount."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        return  # (the removal says so)
    try:
        if _mount_of(fd) != _mount_of(parent):
            raise OSError(errno.EBUSY, "a mount point is not removed", path)
    finally:
        os.close(fd)


def _mount_of(fd: int) -> int:
    """(statx's mount id, else /proc/self/fdinfo's: before Linux 5.8 statx has none, and
    every entry would have read as on its parent's mount.)"""
    return beneath.mount_id_of(fd)


def _open_directory(parent: int, name: str) -> int | None:
    """Directory ``name`` of ``parent`` opened; ``None`` once unlinked if it is none
    (swapped for something else meanwhile)."""
    try:
        return os.open(name, os.O_RDONLY | os.O_NONBLOCK | _O_DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
    os.unlink(name, dir_fd=parent)
    return None


def _entries_or_close(fd: int) -> list[tuple[str, bool]]:
    """The names in directory ``fd``, each with whether it is a directory (unfollowed);
    ``fd`` closed if they cannot be read."""
    try:
        with os.scandir(fd) as entries:
            return [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    except BaseException:
        os.close(fd)
        raise
