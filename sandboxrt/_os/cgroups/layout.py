"""Where the cgroup hierarchies are mounted, and where the caller's cgroups are.

:func:`detect` reads ``/proc/self/mountinfo`` (cgroup v1 controller mounts and
the cgroup2 mount) and ``/proc/self/cgroup`` (the caller's own cgroups, needed
to resolve a relative ``linux.cgroupsPath``). Standard library only.
"""

from __future__ import annotations

import fcntl
import os
import posixpath
import re
import select
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from sandboxrt._forksafe import ForkSafeLock
from sandboxrt.errors import SandboxrtError, SpecError

__all__ = [
    "V1_CONTROLLERS",
    "V2_NEEDED",
    "CgroupLayout",
    "Hierarchy",
    "detect",
    "parse_mountinfo",
    "parse_proc_cgroup",
]

#: The v1 controllers sandboxrt places a container in.
V1_CONTROLLERS = frozenset({"cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids"})
#: The v2 controllers without which the v2 driver is not chosen.
V2_NEEDED = frozenset({"cpu", "memory", "pids"})

_KNOWN_V1 = V1_CONTROLLERS | {
    "blkio",
    "hugetlb",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
}
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One mounted cgroup hierarchy.

    ``root`` is the cgroup mounted at ``mountpoint`` (``/`` unless the mount
    is a bind mount or comes from a cgroup namespace); ``controllers`` are the
    v1 controllers of the mount, or for v2 those listed in its root's
    ``cgroup.controllers``.
    """

    mountpoint: Path
    root: str
    controllers: frozenset[str]
    version: Literal[1, 2]


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """The cgroup hierarchies of this machine and the caller's place in them.

    ``own`` maps each v1 controller (and ``""`` for v2) to the caller's cgroup,
    as listed in ``/proc/self/cgroup``.
    """

    hierarchies: tuple[Hierarchy, ...]
    own: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def v1(self) -> dict[str, Hierarchy]:
        """Controller name → its v1 hierarchy."""
        return {c: h for h in self.hierarchies if h.version == 1 for c in sorted(h.controllers)}

    @property
    def unified(self) -> Hierarchy | None:
        """The cgroup2 hierarchy, if mounted."""
        return next((h for h in self.hierarchies if h.version == 2), None)

    @property
    def mode(self) -> Literal["v1", "v2", "hybrid", "none"]:
        """``hybrid`` when v1 controllers and a cgroup2 mount coexist."""
        has_v1 = bool(self.v1)
        has_v2 = self.unified is not None
        if has_v1 and has_v2:
            return "hybrid"
        return "v1" if has_v1 else "v2" if has_v2 else "none"

    @property
    def driver(self) -> Literal["v1", "v2"] | None:
        """v2 when the cgroup2 mount has memory, pids and cpu; else v1 if mounted."""
        unified = self.unified
        if unified is not None and unified.controllers >= V2_NEEDED:
            return "v2"
        if self.v1:
            return "v1"
        return "v2" if unified is not None else None

    def resolve(self, hierarchy: Hierarchy, cgroups_path: str) -> PurePosixPath:
        """The directory of ``cgroups_path`` in ``hierarchy``, relative to its mountpoint.

        An absolute path is taken from the hierarchy's root; a relative one
        from the caller's own cgroup in that hierarchy.
        """
        where = "linux.cgroupsPath"
        parts = [p for p in cgroups_path.split("/") if p not in ("", ".")]
        if ".." in parts or "\0" in cgroups_path:
            raise SpecError([(where, f"{cgroups_path!r} must not contain '..' or NUL")])
        if not parts:
            raise SpecError([(where, f"{cgroups_path!r} names no cgroup below the root")])
        if cgroups_path.startswith("/"):
            return PurePosixPath(*parts)
        keys = ("",) if hierarchy.version == 2 else sorted(hierarchy.controllers)
        own = next((self.own[k] for k in keys if k in self.own), None)
        if own is None:
            raise SandboxrtError(
                f"cannot resolve relative cgroupsPath {cgroups_path!r}: the caller's cgroup "
                f"in the hierarchy at {hierarchy.mountpoint} is unknown"
            )
        rel = posixpath.relpath(posixpath.normpath(own), posixpath.normpath(hierarchy.root))
        if rel == ".." or rel.startswith("../"):
            raise SandboxrtError(
                f"cannot resolve relative cgroupsPath {cgroups_path!r}: the caller's cgroup "
                f"{own} is outside the hierarchy mounted at {hierarchy.mountpoint}"
            )
        return PurePosixPath(rel, *parts)


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def _read_controllers(mountpoint: Path) -> frozenset[str]:
    try:
        return frozenset((mountpoint / "cgroup.controllers").read_text().split())
    except OSError:
        return frozenset()


def parse_mountinfo(text: str) -> tuple[Hierarchy, ...]:
    """The cgroup hierarchies in a mountinfo text; the first mount of each wins."""
    found: dict[object, Hierarchy] = {}
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        fstype, options = after[0], after[2].split(",")
        root, mountpoint = _unescape(fields[3]), Path(_unescape(fields[4]))
        if fstype == "cgroup2":
            key: object = 2
            hierarchy = Hierarchy(mountpoint, root, _read_controllers(mountpoint), 2)
        elif fstype == "cgroup":
            controllers = frozenset(options) & _KNOWN_V1
            if not controllers:
                continue  # a named hierarchy such as name=systemd
            key = controllers
            hierarchy = Hierarchy(mountpoint, root, controllers, 1)
        else:
            continue
        found.setdefault(key, hierarchy)
    return tuple(found.values())


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Controller (``""`` for v2) → cgroup path, from a ``/proc/PID/cgroup`` text."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            own.setdefault(name, path)
    return own


def detect(
    mountinfo_path: str | Path = "/proc/self/mountinfo",
    proc_cgroup_path: str | Path = "/proc/self/cgroup",
) -> CgroupLayout:
    """Read the cgroup layout of this machine (and the caller's cgroups).

    This process's own mount table is parsed again only once it changed
    (see :class:`_MountedHierarchies`); the caller's cgroups are read each time.
    """
    if mountinfo_path == "/proc/self/mountinfo":
        hierarchies = _MOUNTED.current()
    else:
        with open(mountinfo_path) as f:
            hierarchies = parse_mountinfo(f.read())
    try:
        with open(proc_cgroup_path) as f:
            own = parse_proc_cgroup(f.read())
    except FileNotFoundError:
        own = {}
    return CgroupLayout(hierarchies, own)


class _MountedHierarchies:
    """The cgroup hierarchies of this process's mount table, parsed again only after it
    changed: ``poll`` on an open ``mountinfo`` reports each change as ``POLLPRI``.
    Per process: a forked child opens its own."""

    def __init__(self) -> None:
        self._lock = ForkSafeLock()
        self._pid = 0
        self._poll: select.poll | None = None
        self._fd = -1
        self._hierarchies: tuple[Hierarchy, ...] | None = None

    def current(self) -> tuple[Hierarchy, ...]:
        with self._lock:
            if self._pid != os.getpid():
                self._reopen()
            elif self._changed():
                self._hierarchies = None
            if self._hierarchies is None:
                with open("/proc/self/mountinfo") as f:
                    self._hierarchies = parse_mountinfo(f.read())
            return self._hierarchies

    def _reopen(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._pid, self._hierarchies, self._poll, self._fd = os.getpid(), None, None, -1
        try:
            opened = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:  # kept open: never on a closed fd 0-2, where the caller's stdio would be
            self._fd = fcntl.fcntl(opened, fcntl.F_DUPFD_CLOEXEC, 3)
        except OSError:
            return
        finally:
            os.close(opened)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLPRI | select.POLLERR)

    def _changed(self) -> bool:
        if self._poll is None:
            return True
        return any(event & (select.POLLPRI | select.POLLERR) for _, event in self._poll.poll(0))


_MOUNTED = _MountedHierarchies()


def mounted_hierarchies() -> tuple[Hierarchy, ...]:
    """The cgroup hierarchies mounted in this process's mount namespace (cached until its
    mount table changes)."""
    return _MOUNTED.current()
