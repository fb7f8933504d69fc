"""A sandbox's containers as its supervisor sees them: each one's init, waiters, cgroup,
handles and exec agent (:class:`Member`, :class:`Agent`), and the answers about a pid
that is not, or no longer, one of a container's processes.

Standard library only: the supervisor imports it.
"""

from __future__ import annotations

import dataclasses
import mmap
import socket

from sandboxrt._core.protocol import ExecPlan, InitPlan, Progress, Reply
from sandboxrt._os import channel
from sandboxrt._proc.init import HANDLE_COUNT

__all__ = ["Agent", "Member", "exited_reply", "not_ours_reply"]


@dataclasses.dataclass(eq=False)
class Agent:
    """A container's exec agent (``init.run_agent``), as the supervisor sees it."""

    pid: int
    sock: socket.socket
    #: The plan it became (args, env and cwd aside): the requests it serves match it.
    profile: ExecPlan
    #: Files that move it back to the supervisor's own cgroups after each spawn.
    home_fds: list[int]
    #: Shared with it (``init.run_agent``): the spawns it began and ended (and the last
    #: pid), beside how many requests were sent, tell what became of a request when it
    #: dies without an answer.
    board: mmap.mmap
    sent: int = 0
    ready: bool = False
    #: What it spawned and has not reported exited yet.
    children: set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(eq=False)
class Member:
    """One container of the sandbox as its supervisor sees it: its init and its waiters."""

    plan: InitPlan
    #: Where its exit status is recorded.
    exit_file: str
    new_cgroup_namespace: bool = False
    init_pid: int = 0
    #: The init's sync socket, until the init is started.
    init_sync: socket.socket | None = None
    started: bool = False
    #: While its init runs its startContainer hooks (a start not waited for, see
    #: ``Supervisor._start_later``): the connection the reply goes to.
    starting: socket.socket | None = None
    returncode: int | None = None
    #: Its exit status is in :attr:`exit_file`.
    recorded: bool = False
    #: Connections waiting for the init to exit.
    waiters: list[socket.socket] = dataclasses.field(default_factory=list)
    #: While a subcontainer is being created: the connection that asked for it, which
    #: the creation steps go to.
    creator: socket.socket | None = None
    #: Its cgroup's ``cgroup.procs`` files (exec'd processes join them), and the files
    #: that join it, opened at the first exec.
    cgroup_procs: list[str] = dataclasses.field(default_factory=list)
    cgroup_fds: list[int] | None = None
    #: ``O_PATH`` fds of its cgroup's directories (one per hierarchy), sent by the library
    #: (with the root's ``cgroup`` step, or with a subcontainer's plan).
    cgroup_dirs: list[int] | None = None
    #: For each of :attr:`cgroup_dirs`, the names of the levels removed (bottom up) if the
    #: sandbox's creator is gone (``SandboxPlan.tied``: see ``leftovers``).
    cgroup_orphaned: list[list[str]] = dataclasses.field(default_factory=list)
    #: An fd on its overlay root's upper directory (from its init), or -1.
    upper: int = -1
    #: What its init handed us at ``created`` (``init.open_handles``): an ``O_PATH`` fd of
    #: its root as it sees it (mounts made, pivoted), for its gofer (``root`` requests),
    #: then fds of its namespaces, which exec'd processes join.
    handles: list[int] = dataclasses.field(default_factory=list)
    #: Its exec agent, made at its first exec that may use one (decision 31).
    agent: Agent | None = None
    #: Profiles (see ``execs._profile``) an agent failed to serve: exec'd the slow way.
    agent_unfit: list[ExecPlan] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.cgroup_procs = self.cgroup_procs or list(self.plan.cgroup_procs)

    @property
    def id(self) -> str:
        return self.plan.container_id

    @property
    def root_fd(self) -> int | None:
        return self.handles[0] if self.handles else None

    def take_handles(self, step: Progress, fds: list[int]) -> list[int]:
        """Keep the handles a ``created`` step of its init brings (the last fds); the
        rest (a pty master) go on to the library."""
        if step.step != "created" or len(fds) < HANDLE_COUNT or self.handles:
            return fds
        self.handles = fds[len(fds) - HANDLE_COUNT :]
        return fds[: len(fds) - HANDLE_COUNT]

    def close_handles(self) -> None:
        channel.close_fds(self.handles)
        self.handles = []

    @property
    def autostart(self) -> bool:
        return self.plan.autostart


def not_ours_reply(member: Member, pid: int) -> Reply:
    """The answer about a pid that is none of ``member``'s processes."""
    return Reply(
        False,
        error=f'pid {pid} does not belong to container "{member.id}"',
        error_type="ProcessNotFoundError",
        details={"pid": pid},
    )


def exited_reply(pid: int, detail: str = "has exited") -> Reply:
    """The answer about a process that has exited (or whose status is gone)."""
    return Reply(
        False,
        error=f"process {pid} {detail}",
        error_type="ProcessNotFoundError",
        details={"pid": pid, "exited": True},
    )
