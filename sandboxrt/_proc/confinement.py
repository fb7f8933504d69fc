"""The supervisor's confinement (decision 33): what a warm sandbox makes ahead for it
(the minimal root, fds of its own cgroups, where exec agents wait), and the detach
of the host's root, done aside in a thread.

Standard library only (``_thread``, not ``threading``: decision 35).
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Sequence

from sandboxrt._os import mounts

__all__ = ["Confinement", "OldRootDetach", "home_cgroups", "home_of"]


@dataclasses.dataclass(eq=False)
class Confinement:
    """What a warm sandbox makes ahead for ``Supervisor.confine``: the minimal root
    (``mounts.minimal_root``, detached) and our own cgroups (:func:`home_cgroups`)."""

    top: int
    homes: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def make(cls) -> Confinement | None:
        try:
            top = mounts.minimal_root()
        except OSError:
            return None
        return cls(top, home_cgroups())


_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


def _detach_old_root() -> None:
    with contextlib.suppress(OSError):
        mounts.detach_old_root()


class OldRootDetach:
    """:func:`_detach_old_root` in a thread of its own, made with ``_thread``: ``threading``
    registers an at-fork handler that every child of the fork server would run (decision
    35)."""

    def __init__(self) -> None:
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            _detach_old_root()
        finally:
            self._done.release()

    def join(self) -> None:
        """Wait until the thread is gone (not only done: we fork after this), as the
        kernel counts our threads."""
        self._done.acquire()
        deadline = time.monotonic() + 1.0  # (it has nothing left to run but its exit)
        while _thread_count() > 1 and time.monotonic() < deadline:
            time.sleep(0)


def _thread_count() -> int:
    """How many threads this process has (``num_threads`` in ``/proc/self/stat``); 1
    where it cannot be read (``/proc`` is the one mount a confined supervisor keeps)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 1
    # The fields after the command (which may hold anything) from the last ")" on.
    return int(stat[stat.rindex(b")") + 2 :].split()[17])


def home_cgroups() -> list[int]:
    """``O_PATH`` fds of our own cgroup in every cgroup hierarchy mounted here (read from
    our mountinfo and ``/proc/self/cgroup``), opened before we are confined: a
    container's exec agent waits there between spawns. Those that cannot be told are
    left out."""
    try:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
        with open("/proc/self/cgroup") as f:
            own_text = f.read()
    except OSError:
        return []
    own: dict[str, str] = {}
    for line in own_text.splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        for name in controllers.split(",") if controllers else [""]:
            own.setdefault(name, path)
    homes: list[int] = []
    for line in mountinfo.splitlines():
        head, _, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if len(fields) < 5 or len(after) < 3 or after[0] not in ("cgroup", "cgroup2"):
            continue
        keys = [""] if after[0] == "cgroup2" else [o for o in after[2].split(",") if o in own]
        root, mountpoint = [
            _MOUNTINFO_ESCAPE.sub(lambda m: chr(int(m[1], 8)), x) for x in fields[3:5]
        ]
        ours = own.get(keys[0]) if keys else None
        if ours is None or not (root in ("/", ours) or ours.startswith(root + "/")):
            continue
        if root != "/":
            ours = ours[len(root) :]
        with contextlib.suppress(OSError):
            home = os.path.join(mountpoint, ours.lstrip("/"))
            homes.append(os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    return homes


def home_of(homes: Sequence[int], dirs: Sequence[int]) -> list[int] | None:
    """Of ``homes`` (see :func:`home_cgroups`), those in the hierarchies of a container's
    cgroup ``dirs`` (the same filesystem); ``None`` if one has none, or is the container's."""
    found = []
    stats = [(home, os.fstat(home)) for home in homes]
    for directory in dirs:
        st = os.fstat(directory)
        match = [(home, h) for home, h in stats if h.st_dev == st.st_dev]
        if not match or match[0][1].st_ino == st.st_ino:
            return None
        found.append(match[0][0])
    return found
