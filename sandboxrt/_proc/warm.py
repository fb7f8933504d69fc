"""Warm sandboxes: the namespaces one makes before it knows its plan, and the root it
builds ahead for the plan the fork server saw last (decisions 14, 17 and 30).

The warm sandbox's entry point, :func:`sandboxrt._proc.supervisor.warm`, is the
supervisor's, beside ``main``: both go on to serve as its supervisor. Standard
library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections.abc import Sequence

from sandboxrt._core import abi
from sandboxrt._core.protocol import InitPlan, Progress, SandboxPlan, decode
from sandboxrt._os import channel, syscalls
from sandboxrt._proc.init import speculate, tree_identities

__all__ = [
    "AHEAD_FINISH_TIMEOUT",
    "WARM_NAMESPACES",
    "WARM_UNSHARED",
    "RootAhead",
    "ahead_plan",
    "is_warm_shape",
    "park_trees",
]

#: How long a root built ahead that will not serve may take to finish before it is killed.
AHEAD_FINISH_TIMEOUT = 5.0


#: The namespaces a warm sandbox has made before it knows its plan.
WARM_NAMESPACES = frozenset({"pid", "network", "ipc", "uts", "mount"})


def is_warm_shape(namespaces: Sequence[Sequence[str]]) -> bool:
    """Whether a plan wants exactly the namespaces of a warm sandbox (cgroup aside)."""
    kinds = [kind for kind, path in namespaces if kind != "cgroup" or path]
    return all(not path for _, path in namespaces) and frozenset(kinds) == WARM_NAMESPACES


def park_trees(trees: Sequence[int]) -> None:
    """Close detached mounts we do not need without dissolving them now: closing the last
    fd of one never attached waits for an RCU grace period (up to milliseconds, in the
    library's ``create``, the last to close it). A directory's goes beneath our ``/proc``
    (hidden, and gone with our mount namespace); others are closed."""
    for tree in trees:
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.fstat(tree).st_mode):
                syscalls.move_mount(tree, abi.AT_FDCWD, "/proc", beneath=True)
        os.close(tree)


def ahead_plan(hint: bytes | None) -> SandboxPlan | None:
    """The plan encoded in ``hint`` (the last warm launch's), if its root may be built
    ahead: a warm sandbox's shape, no hooks, its rootfs and binds as trees (which the
    fork server opens for it: the sandbox resolves no host path)."""
    if not hint:
        return None
    try:
        plan = decode(hint, SandboxPlan)
    except ValueError:
        return None
    if not is_warm_shape(plan.namespaces) or plan.init.pause_for_hooks:
        return None  # hooks see the root being built: never ahead
    if not plan.init.rootfs_tree:
        return None
    return plan


def _bounding(plan: InitPlan) -> frozenset[int] | None:
    caps = plan.capabilities
    return None if caps is None else frozenset(caps.bounding)


class RootAhead:
    """An init building, in a warm sandbox, the root of the plan the fork server saw
    last (see :func:`sandboxrt._proc.init.speculate`): a run of containers from one
    bundle then finds its root built."""

    def __init__(self, hint: InitPlan, trees: Sequence[int], close: Sequence[int]) -> None:
        ours, theirs = channel.socket_pair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            channel.close_fds(close)
            speculate(hint, theirs, trees)
        theirs.close()
        self.hint, self.pid, self.sync = hint, pid, ours
        self.outcome: Progress | None = None
        #: An fd on the upper directory of the overlay root it built (an overlay plan), or -1.
        self.upper = -1

    def serves(self, plan: InitPlan, trees: Sequence[int]) -> bool:
        """Whether the root built ahead is the one ``plan`` asks for, from the same host
        files: ``trees``, those ``plan`` came with, are copies of the same directories
        and files (``st_dev``/``st_ino`` of their roots) as those it was built from."""
        if plan.root_key() != self.hint.root_key() or plan.start_container_hooks:
            return False  # (an init that runs hooks imports their runner before its root)
        if _bounding(plan) != _bounding(self.hint):
            return False  # it dropped the hint's bounding set already
        ready = self.finish()
        if ready.step != "ready" or ready.details.get("identities") != tree_identities(trees):
            return False
        return self._still_mounted()

    def _still_mounted(self) -> bool:
        """Whether each mount of the root is still where the plan puts it (the init
        checks: see ``init._await_claim``)."""
        self.sync.settimeout(AHEAD_FINISH_TIMEOUT)
        try:
            channel.send(self.sync, Progress("verify"))
            answer, fds = channel.receive(self.sync, Progress)
            channel.close_fds(fds)
        except (channel.ChannelClosedError, OSError, ValueError):
            return False
        finally:
            self.sync.settimeout(None)
        return answer.step == "verified" and answer.details.get("fresh") is True

    def finish(self, timeout: float | None = None) -> Progress:
        """Wait until the root is built (``ready``) or failed; how it went."""
        if self.outcome is None:
            self.sync.settimeout(timeout)
            try:
                while self.outcome is None:
                    step, fds = channel.receive(self.sync, Progress)
                    if step.step == "overlay" and len(fds) == 1 and self.upper < 0:
                        self.upper = fds[0]  # an overlay root: kept for its container
                        continue
                    channel.close_fds(fds)
                    self.outcome = step
            except (channel.ChannelClosedError, OSError, ValueError) as exc:
                self.outcome = Progress("error", error=str(exc))
            self.sync.settimeout(None)
        return self.outcome

    def discard(self) -> None:
        """End it unused, once it is done with the rootfs: killed mid-way, it could leave
        a half-made device node there."""
        self.finish(timeout=AHEAD_FINISH_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.sync.close()
        if self.upper >= 0:
            os.close(self.upper)
            self.upper = -1


#: The namespaces the fork server makes for a warm sandbox's supervisor, which it forks
#: into them (see ``supervisor.warm``): all of :data:`WARM_NAMESPACES` but the mount namespace.
WARM_UNSHARED = frozenset(WARM_NAMESPACES - {"mount"})
