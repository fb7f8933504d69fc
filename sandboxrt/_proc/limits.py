"""The supervisor's own limits: raised ahead, in the host's user namespace, for what its
inits ask (:func:`grant_ahead`); shielded from the container's ``prlimit``
(:func:`shield_limits`).

Standard library only: the supervisor imports it.
"""

from __future__ import annotations

import contextlib
import os
import resource

from sandboxrt._core import abi, idmap
from sandboxrt._core.protocol import InitPlan
from sandboxrt._os import procfs

__all__ = ["grant_ahead", "shield_limits"]


def shield_limits() -> None:
    """Keep the container's root from changing our rlimits with ``prlimit``, which the
    kernel grants a process of the same uids and gids as its target (no capability
    needed), and through us from the processes we fork later (exec'd, a pod's members).
    A saved gid unlike our real and effective ones matches no process's (the check wants
    its gid equal to all three of ours); signals look at uids only, and what we make
    goes by our effective ids. The overflow gid where it is mapped, else another; in a
    user namespace mapping no gid but root, nothing."""
    try:
        with open("/proc/self/gid_map", "rb") as f:
            extents = idmap.extents_from_text(f.read().decode())
    except (OSError, ValueError):
        return
    ends = [gid for inside, _, size in extents for gid in (inside, inside + size - 1)]
    shield = next(
        (
            gid
            for gid in (idmap.OVERFLOW_ID, *ends)
            if gid and idmap.to_host(extents, gid) is not None
        ),
        None,
    )
    if shield is not None:
        os.setresgid(-1, -1, shield)


def grant_ahead(init: InitPlan) -> None:
    """What the root's init will ask that the kernel grants only in the host's user
    namespace, done here before we leave it, for us (and so for the sandbox, which
    inherits it; the init then sets its own exactly): a hard rlimit above ours, and its
    ``oom_score_adj``, whose file a process forked in the namespace may not write (as
    runc sets them from outside)."""
    for name, _, hard in init.rlimits:
        kind = abi.RLIMIT_NUMBERS[name]
        soft, current = resource.getrlimit(kind)
        if current != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > current):
            with contextlib.suppress(ValueError, OSError):  # (not ours either: the init says)
                resource.setrlimit(kind, (soft, hard))
    if init.oom_score_adj is not None:
        with contextlib.suppress(OSError):  # (not ours either: the init says)
            procfs.set_oom_score_adj(init.oom_score_adj)
