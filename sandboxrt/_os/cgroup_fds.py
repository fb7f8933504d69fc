"""Cgroups reached through fds of their directories, with no path: how the supervisor,
whose root shows no cgroupfs (decision 33), sees its containers' cgroups.

Standard library only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from sandboxrt._os import beneath, channel

__all__ = ["Below", "cgroups_below", "thaw"]

_O_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: At most this many cgroups beneath one are looked for (each held as an fd meanwhile).
_MAX_BELOW = 1024
#: A frozen cgroup's file that thaws it, and what thaws it: v1's, v2's.
_THAWING = (("freezer.state", b"THAWED"), ("cgroup.freeze", b"0"))

#: A cgroup beneath another: ``(its parent's fd, its name, its fd)``.
Below = tuple[int, str, int]


def cgroups_below(directory: int) -> list[Below]:
    """The cgroups beneath ``directory`` (an fd), parents first, each opened (``O_PATH``,
    no link followed, no mount entered: a filesystem mounted on one is not the cgroup's
    hierarchy); the caller closes them."""
    found: list[Below] = []
    try:
        mount = beneath.mount_id_of(directory)
    except OSError:
        return found
    todo = [directory]
    while todo and len(found) < _MAX_BELOW:
        at = todo.pop()
        try:
            listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=at)
        except OSError:
            continue
        try:
            with os.scandir(listing) as entries:
                names = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
        except OSError:
            names = []
        finally:
            os.close(listing)
        for name in names[: _MAX_BELOW - len(found)]:
            try:
                fd = os.open(name, _O_DIR_PATH, dir_fd=at)
            except OSError:
                continue
            try:
                elsewhere = beneath.mount_id_of(fd) != mount
            except OSError:
                elsewhere = True
            if elsewhere:
                os.close(fd)
                continue
            found.append((at, name, fd))
            todo.append(fd)
    return found


def thaw(directories: Sequence[int], *, below: bool = False) -> None:
    """Thaw the cgroup whose directories (fds) are ``directories``, in whichever hierarchy
    has a freezer (with ``below``: and every cgroup beneath, which a container may have
    frozen itself: thawing a v1 parent leaves those frozen). Best effort."""
    for directory in directories:
        beneath = cgroups_below(directory) if below else []
        try:
            for fd in [directory, *(fd for _, _, fd in beneath)]:
                _thaw_one(fd)
        finally:
            channel.close_fds([fd for _, _, fd in beneath])


def _thaw_one(directory: int) -> None:
    """(Never blocking, and only a regular file: what a container may have put there is
    no cgroup file.)"""
    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    for name, thawed in _THAWING:
        try:
            fd = os.open(name, flags, dir_fd=directory)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.write(fd, thawed)
        except OSError:
            pass
        finally:
            os.close(fd)
