"""What a ``tied`` sandbox removes itself once its creator is gone (``SandboxPlan.tied``):
its containers' cgroups and its runtime directory, which only the creator knew of (a
``MemoryStore``'s records die with their process). Reached through the fds the
supervisor holds, and ``..`` from them: its root shows no host path (decision 33).

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from sandboxrt._os import cgroup_fds, cgroup_marks, channel, removal

__all__ = ["level_names", "remove_cgroup_levels", "remove_runtime_dir"]

_O_PARENT = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def level_names(value: Any, count: int) -> list[list[str]]:
    """The library's ``orphaned`` levels (one list of names per cgroup directory, of
    ``count``), checked; none where they are not that (nothing is removed then)."""
    if not isinstance(value, list) or len(value) != count:
        return []
    for names in value:
        if not isinstance(names, list) or not all(_is_name(name) for name in names):
            return []
    return value


def _is_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name


def remove_cgroup_levels(directory: int, names: list[str], container_id: str) -> None:
    """Remove the cgroup directory ``directory`` (an fd), the cgroups the container made
    beneath it first (children before parents), as ``names[0]`` of its parent, then
    that parent as ``names[1]`` of its own, and so on up, each only while it is still the
    directory we came from and empty; stops at the first that stays. With no names (a
    ``cgroupsPath`` that existed before: it stays) it loses the owner mark of
    ``container_id``, as a destroy drops it: it is no longer that container's."""
    if not names:
        cgroup_marks.release_owner(f"/proc/self/fd/{directory}", container_id)
        return
    below = cgroup_fds.cgroups_below(directory)
    try:
        for parent, name, fd in reversed(below):
            with contextlib.suppress(OSError):
                removal.remove_if_same(parent, name, os.fstat(fd))
    finally:
        channel.close_fds([fd for _, _, fd in below])
    here, opened = directory, []
    try:
        for name in names:
            made = os.fstat(here)
            here = os.open("..", _O_PARENT, dir_fd=here)
            opened.append(here)
            if not removal.remove_if_same(here, name, made):
                break
    except OSError:
        pass
    finally:
        channel.close_fds(opened)


def remove_runtime_dir(runtime_fd: int, runtime_dir: str, *, root_lock: str = "") -> None:
    """Remove the runtime directory ``runtime_dir`` (``runtime_fd`` is an fd of it) and
    all it holds; then, with ``root_lock`` (the lock file a ``MemoryStore``'s processes
    hold in the directory it made, ``SandboxPlan.runtime_root_lock``), its parent, once
    nothing but that file is left in it and no process holds it."""
    opened: list[int] = []
    try:
        parent = os.open("..", _O_PARENT, dir_fd=runtime_fd)
        opened.append(parent)
        removal.remove_tree(parent, os.path.basename(runtime_dir), same_as=os.fstat(runtime_fd))
        if root_lock:
            top = os.open("..", _O_PARENT, dir_fd=parent)
            opened.append(top)
            # A process killed outright lets go of its files one by one: its socket, which
            # told us it is gone, may close before its lock does.
            root_name = os.path.basename(os.path.dirname(runtime_dir))
            removal.remove_unheld(top, root_name, root_lock, patience=0.5)
    except OSError:
        pass
    finally:
        channel.close_fds(opened)
