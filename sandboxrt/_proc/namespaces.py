"""Entering a sandbox's namespaces, for its supervisor: joining those given by path,
making the new ones (a new user namespace first) and readying them.

Standard library only: the supervisor imports it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence

from sandboxrt._core import abi
from sandboxrt._os import net, procfs, syscalls, userns

__all__ = [
    "enter_namespaces",
    "prepare_namespaces",
    "unshare_private",
    "write_time_offsets",
]


def enter_namespaces(
    namespaces: Sequence[Sequence[str]], uid_map: str = "", gid_map: str = ""
) -> None:
    """Join the namespaces given by path, then make the new ones: a new user namespace
    first (mapped by ``uid_map`` and ``gid_map``), so that the others are its own."""
    joined = [(kind, path) for kind, path in namespaces if path]
    joined.sort(key=lambda item: item[0] != "user")  # the user namespace first
    joins_user = any(kind == "user" for kind, _ in joined)
    with contextlib.ExitStack() as stack:
        # Forked before we join anything: it stays where we were, and maps for us.
        writer = (
            stack.enter_context(userns.MapWriter(uid_map, gid_map))
            if uid_map and not joins_user
            else None
        )
        opened = [(kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)) for kind, path in joined]
        for kind, fd in opened:
            try:
                syscalls.setns(fd, abi.NAMESPACE_FLAGS[kind])
            finally:
                os.close(fd)
            if kind == "user":
                userns.become_root_of_joined(uid_map, gid_map)
        if writer is not None:
            writer.enter()
    flags = 0
    for kind, path in namespaces:
        # (The init makes a cgroup namespace, inside the cgroup.)
        if not path and kind not in ("cgroup", "user"):
            flags |= abi.NAMESPACE_FLAGS[kind]
    unshare_private(flags)


def write_time_offsets(offsets: str) -> None:
    """Write ``linux.timeOffsets`` for the time namespace our children enter. Our
    ``/proc/self`` files are the host root's while we are not dumpable (a uid change in
    a new user namespace made us so): dumpable for the write, while we have no child yet."""
    dumpable = syscalls.prctl(abi.PR_GET_DUMPABLE)
    try:
        if not dumpable:
            syscalls.prctl(abi.PR_SET_DUMPABLE, 1)
        procfs.write_proc_file("/proc/self/timens_offsets", offsets.encode())
    except OSError as exc:
        raise OSError(exc.errno, f"writing linux.timeOffsets: {exc.strerror}") from None
    finally:
        if not dumpable:
            syscalls.prctl(abi.PR_SET_DUMPABLE, 0)


def unshare_private(flags: int) -> None:
    """Unshare ``flags`` (always with a new mount namespace) and make every mount private."""
    syscalls.unshare(flags | abi.CLONE_NEWNS)
    # Nothing mounted in here may reach the host: every mount private, first thing.
    syscalls.mount(None, "/", None, abi.MS_REC | abi.MS_PRIVATE)


def prepare_namespaces(new: Iterable[str]) -> None:
    """Ready the supervisor's new namespaces: loopback up, its own /proc."""
    new = frozenset(new)
    if "network" in new:
        net.set_link_up("lo")
    if "pid" in new:
        # The supervisor's own view of its PID namespace (its mounts are private).
        syscalls.mount("proc", "/proc", "proc", abi.MS_NOSUID | abi.MS_NODEV | abi.MS_NOEXEC)
