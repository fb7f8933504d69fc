"""The sandbox supervisor: PID 1 of the sandbox, reaper, signal relay, control server.

Started as a fresh interpreter (never forked from the library's process) with
the bootstrap socket on fd 3. :func:`main` enters the sandbox's namespaces and
forks the supervisor, which is PID 1 of the new PID namespace; it forks the
root container's init, relays its creation, then serves control requests
(and forks the inits of subcontainers that join the sandbox: a pod) until the
root container's init exits, records that exit status and exits with it.

Imports only the standard library and sandboxrt's stdlib-only modules, so it
starts in milliseconds.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import mmap
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from typing import NoReturn

from sandboxrt._core import abi
from sandboxrt._core.protocol import (
    EXEC_EXITS_FILE,
    EXEC_EXITS_KEPT,
    Claim,
    ExecExits,
    ExecPlan,
    ExitStatus,
    InitPlan,
    Launched,
    ProcessPlan,
    Progress,
    Reply,
    Request,
    SandboxPlan,
    encode,
)
from sandboxrt._os import capabilities, channel, mounts, procfs, stdlib, syscalls
from sandboxrt._proc.confinement import Confinement, OldRootDetach, home_cgroups, home_of
from sandboxrt._proc.entry import reset_inherited_signals
from sandboxrt._proc.init import (
    AGENT_BOARD,
    AHEAD_PROCESS_NAME,
    EXEC_PROCESS_NAME,
    HANDLE_COUNT,
    error_progress,
    give_stdio,
    join_cgroup_fds,
    open_cgroup,
    raise_fd_limit,
    run_agent,
    run_exec,
    run_init,
)
from sandboxrt._proc.init import PROCESS_NAME as INIT_PROCESS_NAME
from sandboxrt._proc.limits import grant_ahead, shield_limits
from sandboxrt._proc.namespaces import (
    enter_namespaces,
    prepare_namespaces,
    unshare_private,
    write_time_offsets,
)
from sandboxrt._proc.warm import RootAhead, park_trees

__all__ = [
    "PROCESS_NAME",
    "main",
    "receive_trees",
    "warm",
    "write_exit_status",
]

#: The supervisor's name in ``/proc/PID/comm``.
PROCESS_NAME = "sandboxrt-sup"

#: Exit statuses of exec'd processes kept after their first wait (the latest ones).
WAITED_KEPT = 4096
#: Exit statuses of exec'd processes nobody waited for: kept until waited, up to this many.
UNWAITED_KEPT = 65536
#: How long an exec'd process may take to reach ``execve`` before it is killed (seconds).
EXEC_START_TIMEOUT = 30.0
#: How many connections may wait for the control socket's ``accept``.
CONTROL_BACKLOG = 64
#: Seconds between tries to accept again after running out of fds (see ``_accept``).
ACCEPT_RETRY = 0.1
#: How often (over a second) the supervisor looks for a dying agent it waits for, before
#: leaving it to the reaping of any child.
AGENT_REAP_TRIES = 200
#: How long an init that said why its start failed may take to exit before it is killed.
AWAIT_INIT_TIMEOUT = 1.0
#: How long the rest of a message's fds (``channel.send_many``) may take to come.
RECEIVE_TIMEOUT = 5.0

_RELAYED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


def write_exit_status(
    path: str, returncode: int, pid: int = 0, *, dir_fd: int | None = None
) -> None:
    """Record an exit status (and whose: ``pid``) atomically (temporary file, then rename);
    with ``dir_fd`` (the runtime directory, held open), ``path`` is taken beneath it by
    its name alone."""
    _write_atomically(path, encode(ExitStatus(returncode, pid)), dir_fd=dir_fd)


def _write_atomically(path: str, data: bytes, *, dir_fd: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (see
    :func:`write_exit_status`)."""
    if dir_fd is not None:
        path = os.path.basename(path)
    # A leading dot: no container id starts with one, so this is never another's file.
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


@dataclasses.dataclass(eq=False)
class _Agent:
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
class _ExecStart:
    """A process exec'd the slow way (``run_exec``), on its way to ``execve``: the reply
    goes to ``conn`` once it gets there or fails (its ``status`` socket is close-on-exec),
    while we serve other requests (a process of the container that stops it cannot
    stall the sandbox)."""

    pid: int
    member: _Member
    plan: ExecPlan
    status: socket.socket
    conn: socket.socket
    #: The agent's failed reply, when it tried first (see :meth:`Supervisor._exec`).
    by_agent: Reply | None
    deadline: float
    pty: list[int] = dataclasses.field(default_factory=list)
    timed_out: bool = False


@dataclasses.dataclass(eq=False)
class _Member:
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
    #: :meth:`Supervisor._start_later`): the connection the reply goes to.
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
    #: An fd on its overlay root's upper directory (from its init), or -1.
    upper: int = -1
    #: What its init handed us at ``created`` (``init.open_handles``): an ``O_PATH`` fd of
    #: its root as it sees it (mounts made, pivoted), for its gofer (``root`` requests),
    #: then fds of its namespaces, which exec'd processes join.
    handles: list[int] = dataclasses.field(default_factory=list)
    #: Its exec agent, made at its first exec that may use one (decision 31).
    agent: _Agent | None = None
    #: Profiles (see :func:`_profile`) an agent failed to serve: exec'd the slow way.
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


class Supervisor:
    """PID 1 of one sandbox: the root container's, and any subcontainers' (a pod)."""

    def __init__(
        self,
        plan: SandboxPlan,
        bootstrap: socket.socket,
        stdio: list[int],
        gate: int | None,
        *,
        prepared: bool = False,
    ) -> None:
        self.plan = plan
        self.bootstrap = bootstrap
        #: Closed by the launched process once the library has our pid: we speak after that.
        self.gate: int | None = gate
        #: Loopback and /proc were readied ahead (a warm sandbox).
        self.prepared = prepared
        self.stdio = stdio
        #: The root's init was built ahead (:class:`RootAhead`), not forked for this plan.
        self.adopted = False
        #: The root container: the sandbox ends when its init exits.
        self.root = _Member(
            plan.init,
            plan.exit_file,
            new_cgroup_namespace=["cgroup", ""] in plan.namespaces,
        )
        #: Every container of the sandbox by id, the root's included.
        self.members: dict[str, _Member] = {self.root.id: self.root}
        self.selector = selectors.DefaultSelector()
        self.wake_fds: tuple[int, int] | None = None
        # Exec'd processes (pids in our PID namespace). Running ones are in ``execs``; once
        # reaped, their status waits in ``unwaited`` until a wait asks for it, then moves to
        # ``waited`` (the latest WAITED_KEPT). A pid the kernel hands out again (after the
        # PID space wraps) replaces an old status nobody asked for.
        self.execs: set[int] = set()
        self.unwaited: dict[int, int] = {}
        self.waited: collections.OrderedDict[int, int] = collections.OrderedDict()
        #: The container each exec'd process (running, or with a status kept) was exec'd into.
        self.exec_owner: dict[int, str] = {}
        #: Each exec's serial (its reply's ``serial``), by pid: a pid taken again is
        #: another exec. The status of one whose pid was taken before anyone asked is
        #: kept in ``superseded``, by serial, with its container (the latest UNWAITED_KEPT).
        #: They start anywhere: a handle of an earlier sandbox of the same id (its runtime
        #: directory's path) never names one of our execs in what we leave there.
        self.exec_serial = int.from_bytes(os.urandom(6), "big")
        self.exec_serials: dict[int, int] = {}
        self.superseded: dict[int, tuple[str, int]] = {}
        #: Connections waiting for an exec'd process, by pid, and the pid each waits for.
        self.exec_waiters: dict[int, list[socket.socket]] = {}
        self.waiting_on: dict[socket.socket, int] = {}
        #: Every exec agent not reaped yet (its member's, or one ended), by pid.
        self.agents: dict[int, _Agent] = {}
        #: Processes exec'd the slow way that have not reached ``execve`` yet, by pid.
        self.exec_starts: dict[int, _ExecStart] = {}
        #: The runtime directory (its control socket) and where we record exit statuses
        #: (``plan.EXITS_DIR``), held open: confined, we reach no host path (decision 33).
        self.runtime_fd = -1
        self.exits_fd = -1
        #: The runtime and exit directories' fds and the bound control socket, when the
        #: launched process made them before it entered a user namespace (see :func:`main`).
        self.held: tuple[int, int, socket.socket] | None = None
        #: While out of fds (see _accept): when to listen again, if no connection closed
        #: meanwhile; None while the selector watches the listener.
        self.deaf_until: float | None = None
        #: ``O_PATH`` fds of our own cgroup in every hierarchy (exec agents wait there).
        self.homes: list[int] = []
        #: The standard library's directories (``O_PATH``), held once confined (:meth:`confine`).
        self.stdlib_fds: list[int] = []
        #: The thread detaching the old root, until :meth:`settle`.
        self.detaching: OldRootDetach | None = None
        #: What a warm sandbox made ahead for :meth:`confine`, until it is used.
        self.confinement: Confinement | None = None

    # -- setting up ----------------------------------------------------------------------

    def setup(self) -> None:
        if os.getsid(0) != os.getpid():  # a warm sandbox is a session leader already
            os.setsid()
        syscalls.prctl(abi.PR_SET_DUMPABLE, 0)  # the container must not reach into us
        shield_limits()
        syscalls.set_process_name(PROCESS_NAME)
        syscalls.prctl(abi.PR_SET_CHILD_SUBREAPER, 1)
        new = {kind for kind, path in self.plan.namespaces if not path}
        if self.plan.hostname is not None:
            socket.sethostname(self.plan.hostname)
        if self.plan.domainname is not None:
            syscalls.setdomainname(self.plan.domainname)
        if not self.prepared:
            prepare_namespaces(new)
        if self.held is not None:
            (self.runtime_fd, self.exits_fd, self.listener), self.held = self.held, None
            self.listener.listen(CONTROL_BACKLOG)
        else:
            self.listener = channel.bind_listener(self.plan.control_socket, CONTROL_BACKLOG)
            self.runtime_fd, self.exits_fd = _open_runtime_dirs(self.plan)

    def confine(self, ahead: Confinement | None = None) -> None:
        """Once the root container is created (or its init built ahead has its plan):
        open what we need of the host (the root's cgroup directories, our own cgroups),
        then make our root the minimal one
        (``mounts.confine_to_proc``: a tmpfs holding our /proc). Without a PID namespace
        of our own (no /proc of ours) we stay as we are (decision 33). A warm sandbox
        prepared the rest ``ahead``."""
        root = self.root
        if root.cgroup_dirs is None:  # (none: the library sends them with its cgroup)
            root.cgroup_dirs = []
        self.confinement = None  # ours to use up now (``ahead``)
        ahead = ahead or Confinement(top=-1)
        self.homes = ahead.homes if ahead.top >= 0 else home_cgroups()
        if ["pid", ""] not in self.plan.namespaces:
            channel.close_fds([ahead.top])
            return
        # The exec agent spawns with ``subprocess`` (decision 31), imported at the first exec
        # from the host's standard library through these (not now: it takes 1.6 ms).
        self.stdlib_fds = stdlib.directories()
        try:
            # In a user namespace of our own, the inits we fork later may mount a sysfs
            # only where one is visible: a new one of ours goes in too.
            top = ahead.top if ahead.top >= 0 else None
            mounts.confine_to_proc(top, sysfs=bool(self.plan.uid_map))
        except OSError as exc:
            print(f"sandboxrt-sup: cannot confine the supervisor: {exc}", file=sys.stderr)
            return
        # Detaching the host's mounts may wait for an RCU grace period (up to ms): done
        # aside, and waited for before we fork (:meth:`settle`) or on a quiet moment.
        self.detaching = OldRootDetach()

    def _import_subprocess(self) -> bool:
        """Import ``subprocess`` (for the exec agent) if it is not yet: from the host's
        standard library directories, held open since :meth:`confine`, through our
        ``/proc/self/fd``; whether it is there."""
        try:
            stdlib.import_through(self.stdlib_fds, "subprocess")
        except ImportError as exc:
            print(f"sandboxrt-sup: no exec agent: {exc}", file=sys.stderr)
            return False
        return True

    def settle(self) -> None:
        """Wait for the old root's detach (:meth:`confine`): before any fork, since
        forking with a second thread alive is unsafe."""
        if self.detaching is not None:
            self.detaching.join()
            self.detaching = None

    def adopt_init(self, ahead: RootAhead) -> None:
        """Take the init that built our root ahead (see :func:`warm`) as the root's."""
        self.root.init_pid, self.root.init_sync = ahead.pid, ahead.sync
        self.root.upper, ahead.upper = ahead.upper, -1
        self.adopted = True

    def hand_plan(self) -> None:
        """Give an adopted init its cgroup (files we open: its root hides the host's
        cgroupfs; it joins by itself, which on v1 spares the global lock a move by pid
        takes, see :func:`join_cgroup_fds`), its plan and its stdio; it goes on to
        ``created``."""
        root = self.root
        assert root.init_sync is not None
        if root.cgroup_dirs is None:  # (none: the library sends them with its cgroup)
            root.cgroup_dirs = []
        cgroup = open_cgroup(root.cgroup_dirs)
        try:
            claim = Claim(self.plan.init, len(cgroup), root.new_cgroup_namespace)
            channel.send(root.init_sync, claim, [*cgroup, *self.stdio])
        finally:
            channel.close_fds([*cgroup, *self.stdio])
            self.stdio = []

    def fork_init(self) -> None:
        """Fork the root container's init."""
        stdio, self.stdio = self.stdio, []
        try:
            self._fork_init(self.root, stdio)
        finally:
            channel.close_fds(stdio)

    def _fork_init(
        self,
        member: _Member,
        stdio: Sequence[int],
        host_tree: int | None = None,
        spare: Sequence[int] = (),
    ) -> None:
        """Fork ``member``'s init, which builds its root and reports on ``member.init_sync``.

        Every signal is blocked across the fork: the child must not run our
        handlers (which signal the root's init) before it has reset them. The child
        closes ``spare`` (fds of ours it has no use for).
        """
        self.settle()
        parent_end, child_end = channel.socket_pair()
        try:
            pid, mask = _fork_signals_blocked()
        except BaseException:
            parent_end.close()
            child_end.close()
            raise
        if pid == 0:
            parent_end.close()
            cgroup = member.cgroup_fds
            if cgroup is not None:  # not closed with the rest: the init joins through them
                member.cgroup_fds = None
            self._close_in_child()
            channel.close_fds([*spare, *(member.cgroup_dirs or [])])
            run_init(
                member.plan,
                child_end,
                stdio,
                new_cgroup_namespace=member.new_cgroup_namespace,
                signal_mask=mask,
                cgroup=cgroup,
                host_tree=host_tree,
            )
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child_end.close()
        member.init_pid = pid
        member.init_sync = parent_end

    def _close_in_child(self, keep: Sequence[int] = ()) -> None:
        """In a child just forked: close our sockets, which the container must never hold,
        and our fds on host files; a member's handles in ``keep`` stay open."""
        self.listener.close()
        self.bootstrap.close()
        if self.gate is not None:
            os.close(self.gate)
        for key in list(self.selector.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
        for member in self.members.values():
            if member.init_sync is not None:
                member.init_sync.close()
        for agent in self.agents.values():
            agent.sock.close()
            channel.close_fds(agent.home_fds)
        for member in self.members.values():
            channel.close_fds(member.cgroup_fds or [])
        if self.wake_fds is not None:
            signal.set_wakeup_fd(-1)
            channel.close_fds(self.wake_fds)
        channel.close_fds([self.runtime_fd, self.exits_fd, *self.homes, *self.stdlib_fds])
        for member in self.members.values():
            handles = [fd for fd in member.handles if fd not in keep]
            channel.close_fds([*(member.cgroup_dirs or []), member.upper, *handles])
        if self.confinement is not None:
            channel.close_fds([self.confinement.top, *self.confinement.homes])

    def report(self, step: Progress, fds: list[int] | None = None) -> None:
        """Send a creation step to the library, after the launched process named us."""
        if self.gate is not None:
            os.read(self.gate, 1)
            os.close(self.gate)
            self.gate = None
        channel.send(self.bootstrap, step, fds or [])

    def relay_cgroup(self) -> None:
        """Pass the library's word on the root's cgroup to its init (``await_cgroup``): the
        files that join it, beneath the directories that came as fds."""
        root = self.root
        assert root.init_sync is not None
        step, dirs = channel.receive(self.bootstrap, Progress)
        if step.step == "cgroup":
            root.cgroup_procs = [str(p) for p in step.details.get("procs", [])]
            if len(dirs) != len(root.cgroup_procs):
                channel.close_fds(dirs)
                raise ValueError(f"{len(dirs)} cgroup directories for {root.cgroup_procs}")
            root.cgroup_dirs = dirs
        else:
            channel.close_fds(dirs)
        if step.step == "cgroup" and self.adopted:
            return  # moved in by hand_plan
        joiners = open_cgroup(dirs) if step.step == "cgroup" else []
        try:
            with contextlib.suppress(OSError):  # an init that failed already said why
                channel.send(root.init_sync, step, joiners)
        finally:
            channel.close_fds(joiners)

    def relay_creation(self) -> bool:
        """Pass the root init's creation steps to the library; ``True`` once created.

        With ``autostart``, the start follows at once and its outcome is reported too
        (a failed start still counts as created: the library sees the error).
        """
        root = self.root
        assert root.init_sync is not None
        while True:
            try:
                step, fds = channel.receive(root.init_sync, Progress)
            except channel.ChannelClosedError:
                step, fds = Progress("error", error="the container's init died"), []
            if step.step == "overlay" and len(fds) == 1 and root.upper < 0:
                root.upper = fds[0]  # ours to keep, for the library's "upper" requests
                continue
            fds = root.take_handles(step, fds)
            self.report(step, fds)
            channel.close_fds(fds)
            if step.step == "mounted":
                go, _ = channel.receive(self.bootstrap, Progress)
                channel.send(root.init_sync, go)
                continue
            if step.step != "created":
                return False
            if root.autostart:
                self.report(self._start_step(root))
            return True

    def _start_step(self, member: _Member) -> Progress:
        """Start ``member`` (autostart); ``started``, or the error as a creation step."""
        reply = self._start(member, Request("start", member.id))
        if reply.ok:
            return Progress("started")
        return Progress("error", reply.error, reply.error_type, dict(reply.details))

    # -- serving ---------------------------------------------------------------------------

    def serve(self) -> NoReturn:
        raise_fd_limit()
        wake_r, wake_w = self.wake_fds = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in _RELAYED_SIGNALS:
            signal.signal(sig, self._relay_signal)
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")
        self.selector.register(self.listener, selectors.EVENT_READ, "listen")
        if self.root.autostart and self.root.returncode is None:
            # ``run``: the library waits on the socket it launched us with, as a waiter
            # that asked no question (its closing is seen like any connection's).
            self.root.waiters.append(self.bootstrap)
            self.selector.register(self.bootstrap, selectors.EVENT_READ, "conn")
        else:
            self.bootstrap.close()
        self._reap()
        while True:
            deaf = self.deaf_until
            waits = [self._exec_start_timeouts()]
            if deaf is not None:
                waits.append(deaf - time.monotonic())
            timeout = min((w for w in waits if w is not None), default=None)
            events = self.selector.select(None if timeout is None else max(timeout, 0.0))
            if deaf is not None and time.monotonic() >= deaf:
                self._listen()  # out of fds a while ago, no connection closed since: try again
            for key, _ in events:
                data = key.data
                if data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    self._reap()
                elif data == "listen":
                    self._accept()
                elif data == "conn":
                    self._handle(key.fileobj)  # type: ignore[arg-type]
                elif data[0] == "creating":
                    self._creation_step(data[1])
                elif data[0] == "starting":
                    self._started(data[1])
                elif data[0] == "agent":
                    self._agent_message(data[1])
                elif data[0] == "exec-start":
                    if data[1].pid in self.exec_starts:  # (not answered by _reap meanwhile)
                        self._exec_start_step(data[1])
                else:
                    self._creator_message(data[1])

    def _write_exec_exits(self) -> None:
        """Record the statuses of exec'd processes we keep (exited before the sandbox
        ended): a ``Process`` waited for later reads its own, not ``-SIGKILL``."""
        exits = [
            (self.exec_serials[pid], pid, self.exec_owner.get(pid, ""), returncode)
            for pid, returncode in (*self.unwaited.items(), *self.waited.items())
            if pid in self.exec_serials
        ]
        exits += [(serial, 0, owner, code) for serial, (owner, code) in self.superseded.items()]
        exits = sorted(exits)[-EXEC_EXITS_KEPT:]  # the latest: a record of bounded size
        if exits:
            with contextlib.suppress(OSError):  # (then they read -SIGKILL, as before)
                data = encode(ExecExits(tuple(exits)))
                _write_atomically(EXEC_EXITS_FILE, data, dir_fd=self.exits_fd)

    def _relay_signal(self, signum: int, _frame: object) -> None:
        root = self.root
        if root.init_pid and root.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(root.init_pid, signum)

    def _reap(self) -> None:
        while True:
            try:  # which child exited, left unreaped for now
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if info is None or info.si_pid == 0:
                break
            pid = info.si_pid
            starting = self._member_of_init(pid)
            if starting is not None and starting.starting is not None:
                # Its start is answered first, while its /proc entry (a zombie's) tells
                # an exec from a death before it.
                self._started(starting)
            if pid in self.exec_starts:  # so is an exec'd process's, the same way
                self._exec_start_step(self.exec_starts[pid], dead=True)
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue  # (reaped meanwhile: _started waited for it)
            if reaped == 0:
                break  # (never: it exited)
            returncode = os.waitstatus_to_exitcode(status)
            member = self._member_of_init(pid)
            if member is not None:
                self._init_exited(member, returncode)
            elif pid in self.execs:
                self._exec_exited(pid, returncode)
            elif pid in self.agents:
                self._agent_exited(self.agents.pop(pid))
            # Anything else is an orphan the kernel gave us: never ours to report.
        self._end_stopped_agents()
        if self.root.returncode is not None:
            self._finish()

    def _end_stopped_agents(self) -> None:
        """End the exec agents the container stopped (its processes may signal them):
        what one spawned would wait for it for ever. Ended, it leaves them to us (their
        subreaper); no agent serves its container any more (another could be stopped)."""
        for agent in list(self.agents.values()):
            try:
                stopped = os.waitid(os.P_PID, agent.pid, os.WSTOPPED | os.WNOHANG)
            except ChildProcessError:
                continue
            if stopped is None or stopped.si_pid == 0:
                continue
            for member in self.members.values():
                if member.agent is agent:
                    member.agent_unfit.append(agent.profile)
                    self._end_agent(member)

    def _member_of_init(self, pid: int) -> _Member | None:
        for member in self.members.values():
            if member.init_pid == pid and member.returncode is None:
                return member
        return None

    def _init_exited(self, member: _Member, returncode: int) -> None:
        """Record that ``member``'s init exited; a subcontainer's other processes go too."""
        member.returncode = returncode
        if member.creator is not None:
            return  # it died while being created: its creation step says so
        self._write_exit(member, returncode)
        if member is self.root:
            return  # the sandbox ends with it (_finish)
        self._answer_waiters(member, returncode)
        self._kill_rest(member)

    def _write_exit(self, member: _Member, returncode: int) -> None:
        """Record ``member``'s exit status, in the runtime directory we hold open."""
        write_exit_status(member.exit_file, returncode, member.init_pid, dir_fd=self.exits_fd)
        member.recorded = True

    @staticmethod
    def _answer_waiters(member: _Member, returncode: int) -> None:
        waiters, member.waiters = member.waiters, []
        for conn in waiters:
            with contextlib.suppress(OSError):
                channel.send(conn, Reply(True, returncode=returncode, pid=member.init_pid))

    def _accept(self) -> None:
        """Take a connection. Out of fds, stop listening until one closes (clients wait in
        the backlog) rather than die, which would end the sandbox."""
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.selector.unregister(self.listener)
                self.deaf_until = time.monotonic() + ACCEPT_RETRY
            return
        self.selector.register(conn, selectors.EVENT_READ, "conn")

    def _listen(self) -> None:
        """Watch the listener again, if we stopped (out of fds: see :meth:`_accept`)."""
        if self.deaf_until is not None:
            self.selector.register(self.listener, selectors.EVENT_READ, "listen")
            self.deaf_until = None

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        pid = self.waiting_on.pop(conn, None)
        if pid is not None:
            with contextlib.suppress(ValueError):
                self.exec_waiters[pid].remove(conn)
        conn.close()
        self._listen()  # an fd is free again
        if conn is self.bootstrap and self.root.returncode is None:
            # ``run``'s caller is gone (killed: it would have waited for, then destroyed,
            # the container): nobody will, so the container goes now, as a child that dies
            # with its parent (``bwrap --die-with-parent``). Its record and cgroup wait for
            # a destroy; it reads stopped meanwhile.
            with contextlib.suppress(ProcessLookupError):
                self._signal(self.root, signal.SIGKILL, everyone=True)

    def _handle(self, conn: socket.socket) -> None:
        try:
            request, fds = channel.receive(conn, Request)
        except (channel.ChannelClosedError, OSError, ValueError):
            self._drop(conn)
            return
        try:
            reply = self._dispatch(conn, request, fds)
        except Exception as exc:
            reply = Reply(False, error=str(exc), error_type=type(exc).__name__)
        finally:
            channel.close_fds(fds)
        if reply is not None:
            with contextlib.suppress(OSError):
                channel.send(conn, reply)

    def _dispatch(self, conn: socket.socket, request: Request, fds: list[int]) -> Reply | None:
        if request.op == "ping":
            return Reply(True)
        if request.op == "create-container":
            self._create_container(conn, request, fds)
            return None
        member = self.members.get(request.container_id or self.root.id)
        if member is None or member.creator is not None:
            return Reply(
                False,
                error=f'container "{request.container_id}" is not in sandbox '
                f'"{self.plan.sandbox_id}"',
                error_type="ContainerNotFoundError",
            )
        if request.op == "wait":
            if request.pid and request.pid != member.init_pid:
                return self._wait_exec(
                    conn, member, request.pid, nohang=request.nohang, serial=request.serial
                )
            if member.returncode is not None or request.nohang:
                # (whether it was started: a caller killed in ``start`` did not record it)
                started = {"started": member.started}
                pid = member.init_pid
                return Reply(True, returncode=member.returncode, pid=pid, details=started)
            member.waiters.append(conn)
            return None
        if request.op == "start":
            return self._start_later(conn, member, request)
        if request.op == "signal":
            if request.serial and self.exec_serials.get(request.pid) != request.serial:
                return self._exited(request.pid)  # its pid is another exec's now
            if request.foreground:
                pid = request.pid or member.init_pid
                return self._signal_foreground(member, pid, request.signal)
            if request.pid and request.pid != member.init_pid:
                return self._signal_exec(member, request.pid, request.signal, group=request.group)
            self._signal(member, request.signal, everyone=request.all, group=request.group)
            return Reply(True)
        if request.op == "root":  # (for the gofer: the root, and a pidfd of the init)
            if member.root_fd is None:
                error = "the container's root is not open"
                return Reply(False, error=error, error_type="ProtocolError")
            if member.returncode is not None:  # (not reaped before: no pid reuse here)
                return Reply(False, error="the container has stopped", error_type="Stopped")
            init = os.pidfd_open(member.init_pid)
            try:
                with contextlib.suppress(OSError):
                    channel.send(conn, Reply(True), [member.root_fd, init])
            finally:
                os.close(init)
            return None
        if request.op == "upper":
            if member.upper < 0:
                error = "the container has no overlay root"
                return Reply(False, error=error, error_type="NoOverlay")
            with contextlib.suppress(OSError):
                channel.send(conn, Reply(True), [member.upper])  # the peer gets its own fd
            return None
        if request.op == "exec":
            answer = self._exec(conn, member, request, fds)
            if answer is not None:
                self._answer_exec(conn, *answer)
            return None
        if request.op == "destroy-container":
            return self._destroy_container(member)
        return Reply(False, error=f"unknown request {request.op!r}", error_type="ProtocolError")

    # -- subcontainers ---------------------------------------------------------------------

    def _create_container(self, conn: socket.socket, request: Request, fds: list[int]) -> None:
        """Fork a subcontainer's init; its creation steps go to ``conn`` as they come.

        Nothing blocks meanwhile: the init's steps and the library's answers
        (``go``/``cancel`` after ``mounted``) arrive through the selector. The
        library giving up (its connection closing) kills the init.
        """
        plan = request.container
        error, error_type = "", "ProtocolError"
        extra = 0  # after the stdio and trees: its cgroup's directories, the host's root
        if plan is not None:
            extra = len(plan.init.cgroup_procs) + (1 if plan.host_tree else 0)
            error = _receive_rest(conn, fds, plan.init, extra)
        if error:
            pass  # said below
        elif plan is None or len(fds) - len(plan.init.tree_sources()) - extra not in (
            (0, 3) if plan.init.terminal else (3,)
        ):
            error = "malformed create-container request"
        elif os.path.dirname(plan.exit_file) != os.path.dirname(self.plan.exit_file):
            error = "its exit file is not in the sandbox's runtime directory"
        elif plan.sandbox_id != self.plan.sandbox_id:
            error = f'the plan is for sandbox "{plan.sandbox_id}", not "{self.plan.sandbox_id}"'
        elif self.root.returncode is not None:
            error, error_type = "the sandbox's root container has exited", "SandboxStopped"
        elif plan.init.container_id in self.members:
            error, error_type = "it is in the sandbox already", "ContainerExistsError"
        member = None
        if not error and plan is not None:
            member = _Member(
                plan.init,
                plan.exit_file,
                new_cgroup_namespace=plan.new_cgroup_namespace,
                creator=conn,
            )
            given = fds[len(fds) - extra :]
            host_tree = given.pop() if plan.host_tree else None
            try:
                # Ours to keep (the request's fds are closed after it): exec'd processes
                # and the signal checks use them; the init joins through files opened here.
                member.cgroup_dirs = [os.dup(fd) for fd in given]
                member.cgroup_fds = open_cgroup(member.cgroup_dirs)
                spare = given  # (the request's: closed here after it, in the init now)
                self._fork_init(member, fds[: len(fds) - extra], host_tree, spare)
            except OSError as exc:
                channel.close_fds([*(member.cgroup_dirs or []), *(member.cgroup_fds or [])])
                member.cgroup_dirs = member.cgroup_fds = None
                error, error_type = f"cannot fork its init: {exc}", type(exc).__name__
        if error or member is None:
            with contextlib.suppress(OSError):
                channel.send(conn, Progress("error", error, error_type))
            return
        self.members[member.id] = member
        assert member.init_sync is not None
        self.selector.modify(conn, selectors.EVENT_READ, ("creator", member))
        self.selector.register(member.init_sync, selectors.EVENT_READ, ("creating", member))

    def _creation_step(self, member: _Member) -> None:
        """A subcontainer's init reported a creation step: pass it on to the library."""
        sync, creator = member.init_sync, member.creator
        if sync is None or creator is None:
            return
        try:
            step, fds = channel.receive(sync, Progress)
        except (channel.ChannelClosedError, OSError, ValueError):
            step, fds = Progress("error", error="the container's init died"), []
        if step.step == "overlay" and len(fds) == 1 and member.upper < 0:
            member.upper = fds[0]  # kept for the library's "upper" requests
            return
        fds = member.take_handles(step, fds)
        try:
            channel.send(creator, step, fds)
        except OSError:
            step = Progress("error")  # the library is gone: the creation is abandoned
        finally:
            channel.close_fds(fds)
        if step.step == "mounted":
            return  # the library answers on its connection (_creator_message)
        if step.step != "created":
            self._remove(member)
            return
        self.selector.unregister(sync)
        member.creator = None
        started = None
        if member.returncode is not None:  # killed after it reported: now it is stopped
            self._init_exited(member, member.returncode)
            started = Progress("error", error="the container's init died", error_type="Died")
        elif member.autostart:
            started = self._start_step(member)
        if member.autostart and started is not None:
            with contextlib.suppress(OSError):
                channel.send(creator, started)
        # Back to a plain connection: the library closes it.
        self.selector.modify(creator, selectors.EVENT_READ, "conn")

    def _creator_message(self, member: _Member) -> None:
        """The library answered ``mounted`` (``go`` or ``cancel``), or gave up."""
        creator, sync = member.creator, member.init_sync
        if creator is None or sync is None:
            return
        try:
            answer, fds = channel.receive(creator, Progress)
            channel.close_fds(fds)
            channel.send(sync, answer)
        except (channel.ChannelClosedError, OSError, ValueError):
            self._remove(member)

    def _destroy_container(self, member: _Member) -> Reply:
        if member is self.root:
            return Reply(
                False,
                error="the root container is destroyed with its sandbox",
                error_type="ProtocolError",
            )
        self._remove(member)
        return Reply(True)

    def _remove(self, member: _Member) -> None:
        """Forget a subcontainer and SIGKILL what is left of it (destroyed, or not created).

        Its init, when reaped, is then an orphan like any other; its waiters get -9.
        """
        self.members.pop(member.id, None)
        if member.returncode is None and member.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.init_pid, signal.SIGKILL)
        self._kill_rest(member)
        for start in self.exec_starts.values():  # (stopped before it joined the cgroup, say)
            if start.member is member:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(start.pid, signal.SIGKILL)
        # Its exec'd processes' statuses go; running ones are kept from a later container
        # of the same id (their waiters are still answered).
        for pid in [p for p, owner in self.exec_owner.items() if owner == member.id]:
            self.unwaited.pop(pid, None)
            self.waited.pop(pid, None)
            if pid in self.execs:
                self.exec_owner[pid] = ""
            else:
                self._forget_exec(pid)
        for serial in [s for s, (owner, _) in self.superseded.items() if owner == member.id]:
            del self.superseded[serial]
        if member.cgroup_fds is not None:
            channel.close_fds(member.cgroup_fds)
            member.cgroup_fds = None
        if member.cgroup_dirs is not None:
            channel.close_fds(member.cgroup_dirs)
            member.cgroup_dirs = None
        if member.upper >= 0:
            os.close(member.upper)
            member.upper = -1
        member.close_handles()
        if member.init_sync is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(member.init_sync)
            member.init_sync.close()
            member.init_sync = None
        if member.starting is not None:
            with contextlib.suppress(OSError):
                channel.send(member.starting, _STOPPED_BEFORE_START)
            member.starting = None
        if member.creator is not None:
            self._drop(member.creator)
            member.creator = None
        if member.returncode is None:
            self._answer_waiters(member, -signal.SIGKILL)

    def _kill_rest(self, member: _Member) -> None:
        """SIGKILL a stopping subcontainer's processes: its cgroup's, its init's process
        group and the process groups of what was exec'd into it; and its exec agent."""
        self._end_agent(member)
        pids = self._member_pids(member)
        if member.init_pid and member.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(member.init_pid, signal.SIGKILL)
        elif member.init_pid:
            # Reaped: the number may lead another group now (once the PID space wrapped:
            # another member's, or with the host's PID namespace anyone's).
            self._signal_group_of(member, member.init_pid, signal.SIGKILL)
        for pid, owner in self.exec_owner.items():
            if owner == member.id and pid in self.execs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _member_pids(self, member: _Member) -> set[int]:
        """``member``'s processes, as pids of our PID namespace; never this one.

        Its cgroup holds them (daemons that left our subtree included). Without a
        cgroup (or with an empty one): our descendants when it is the root and the
        only container (in a PID namespace of our own: all of it), else its live
        init's and its exec'd processes' trees.
        """
        pids: set[int] = set()
        try:
            for directory in member.cgroup_dirs or []:
                fd = os.open("cgroup.procs", os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
                with os.fdopen(fd) as f:
                    pids.update(int(pid) for pid in f.read().split())
        except (OSError, ValueError):
            pids.clear()
        if not pids and member is self.root and len(self.members) == 1:
            pids.update(procfs.descendants(os.getpid()))
        elif not pids:
            tops = {p for p, owner in self.exec_owner.items() if owner == member.id}
            tops &= self.execs
            if member.returncode is None and member.init_pid:
                tops.add(member.init_pid)
            for top in tops:
                pids.add(top)
                pids.update(procfs.descendants(top))
        return pids - {0, os.getpid()}  # 0: outside our PID namespace; never a process group

    # -- exec'd processes ------------------------------------------------------------------

    def _exec(
        self, conn: socket.socket, member: _Member, request: Request, fds: list[int]
    ) -> tuple[Reply, list[int]] | None:
        """Run ``request.exec`` in ``member``: spawned by its exec agent when one may serve
        it (:meth:`_exec_by_agent`), else (or if the agent failed) the slow way, whose
        reply goes to ``conn`` later (None here: :meth:`_exec_start_step`).

        The reply carries its pid, and its pty master.
        """
        plan = request.exec
        if plan is None or len(fds) != (0 if plan.terminal else 3):
            return Reply(False, error="malformed exec request", error_type="ProtocolError"), []
        if member.returncode is not None or not member.init_pid:
            return _EXEC_STOPPED, []
        capabilities.last_cap()  # probed once here, not in every child
        if member.cgroup_fds is None:  # opened once: every exec'd child writes to them
            member.cgroup_fds = open_cgroup(member.cgroup_dirs or [])
        by_agent = self._exec_by_agent(member, plan, fds)
        if by_agent is not None and (by_agent.ok or by_agent.error_type != "AgentFailed"):
            return by_agent, []
        # The slow way forks outside the container's cgroup and joins it, which pids.max
        # does not refuse: it is checked here, as the agent's fork inside meets it.
        full = _pids_limit_reached(member.cgroup_dirs or [])
        if full is not None:
            error = f"fork: Resource temporarily unavailable (the container's pids.max, {full})"
            return Reply(False, error=error, error_type="ExecError"), []
        self._fork_exec(conn, member, plan, fds, by_agent)
        return None

    def _answer_exec(self, conn: socket.socket, reply: Reply, pty: list[int]) -> None:
        try:
            with contextlib.suppress(OSError):
                channel.send(conn, reply, pty)
        finally:
            channel.close_fds(pty)

    def _fork_exec(
        self,
        conn: socket.socket,
        member: _Member,
        plan: ExecPlan,
        fds: list[int],
        by_agent: Reply | None,
    ) -> None:
        """The slow way: fork a process that joins the init's namespaces and root and execs
        (``run_exec``); answered once it exec'd or failed (:meth:`_exec_start_step`), or
        killed after EXEC_START_TIMEOUT."""
        assert member.cgroup_fds is not None
        cgroup = member.cgroup_fds
        self.settle()
        ours, theirs = channel.socket_pair()
        try:
            pid, mask = _fork_signals_blocked()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            run_exec(plan, member.handles, theirs, fds, mask, cgroup=cgroup)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        deadline = time.monotonic() + EXEC_START_TIMEOUT
        start = _ExecStart(pid, member, plan, ours, conn, by_agent, deadline)
        self.exec_starts[pid] = start
        self.selector.register(ours, selectors.EVENT_READ, ("exec-start", start))

    def _exec_start_step(self, start: _ExecStart, *, dead: bool = False) -> None:
        """Read what ``start``'s process said (a pty master, an error) or that its status
        socket closed, and answer once that tells how it went; ``dead``: it exited (not
        reaped yet, see :meth:`_reap`), so all it said is there to read."""
        try:
            while True:
                step, fds = channel.receive(start.status, Progress)
                if step.step == "pty":
                    channel.close_fds(start.pty)
                    start.pty = fds
                    if dead:
                        continue
                    return  # (the rest comes later)
                channel.close_fds(fds)
                details = {"cause_type": step.error_type}
                reply = Reply(False, error=step.error, error_type="ExecError", details=details)
                # Not waited for: it exits now, unless stopped (by a process of the
                # container), which must not hold us: killed, and collected by _reap then.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(start.pid, signal.SIGKILL)
                self._reap_failed(start.pid, hang=False)
                break
        except channel.ChannelClosedError:
            reply = self._exec_start_outcome(start)
        except (OSError, ValueError) as exc:
            with contextlib.suppress(ProcessLookupError):
                os.kill(start.pid, signal.SIGKILL)
            self._reap_failed(start.pid, hang=False)
            reply = Reply(False, error=f"the process did not start: {exc}", error_type="ExecError")
        self._exec_start_done(start, reply)

    def _exec_start_outcome(self, start: _ExecStart) -> Reply:
        """Its status socket closed: on exec (the program runs), or as it died before."""
        pid = start.pid
        if not _died_before_exec(pid, (EXEC_PROCESS_NAME,)):
            serial = self._record_exec(pid, start.member.id)
            return Reply(True, pid=pid, details={"serial": serial})
        _, wait_status = os.waitpid(pid, 0)
        if start.timed_out:
            error = f"the process did not start within {EXEC_START_TIMEOUT:g} s"
        else:
            returncode = os.waitstatus_to_exitcode(wait_status)
            error = _death_before_exec("process", returncode, start.plan)
        return Reply(False, error=error, error_type="ExecError")

    def _exec_start_done(self, start: _ExecStart, reply: Reply) -> None:
        self.exec_starts.pop(start.pid, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(start.status)
        start.status.close()
        pty, start.pty = start.pty, []
        if not reply.ok:
            channel.close_fds(pty)
            pty = []
        by_agent, member = start.by_agent, start.member
        transient = by_agent is not None and by_agent.details.get("cause_type") in _TRANSIENT
        if by_agent is not None and reply.ok and not transient and member.id in self.members:
            # The agent failed where the slow way works: never again for this profile.
            member.agent_unfit.append(_profile(start.plan))
            self._end_agent(member)
        self._answer_exec(start.conn, reply, pty)

    def _exec_start_timeouts(self) -> float | None:
        """Kill the processes that did not reach ``execve`` in time (each answered as it
        is reaped); seconds until the next one's deadline, or None."""
        now, next_deadline = time.monotonic(), None
        for start in self.exec_starts.values():
            if start.timed_out:
                continue
            if start.deadline <= now:
                start.timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(start.pid, signal.SIGKILL)
            elif next_deadline is None or start.deadline < next_deadline:
                next_deadline = start.deadline
        return None if next_deadline is None else next_deadline - now

    # -- exec agents (decision 31) ----------------------------------------------------------

    def _exec_by_agent(self, member: _Member, plan: ExecPlan, fds: list[int]) -> Reply | None:
        """Run ``plan`` through ``member``'s exec agent (made now if it has none).

        ``None`` when no agent may serve it (a terminal, a user to look up, no
        cgroup, another profile than the agent's, one an agent failed at, a seccomp
        profile that pretends);
        a reply with ``error_type`` ``AgentFailed`` when the agent could not
        spawn it (the caller then goes the slow way, whose outcome counts).
        """
        profile = _profile(plan)
        if plan.terminal or plan.user or not member.cgroup_procs or profile in member.agent_unfit:
            return None
        if plan.seccomp is not None and plan.seccomp.pretends:
            return None
        if (
            plan.scheduler is not None
            and plan.scheduler[1] & abi.SCHED_FLAGS["SCHED_FLAG_RESET_ON_FORK"]
        ):
            return None  # (the agent's would not reach what it spawns)
        agent = member.agent
        if agent is not None and agent.profile != profile:
            return None  # the first profile keeps the agent; others go the slow way
        if agent is None:
            agent = self._start_agent(member, profile)
            if agent is None:
                return None
        assert member.cgroup_fds is not None
        failed = Reply(False, error="the exec agent failed", error_type="AgentFailed")
        # Gone before it took the request: nothing ran, and nothing is said of its fitness.
        lost = Reply(
            False, error="the exec agent died", error_type="AgentFailed", details=_AGENT_DIED
        )
        info = procfs.read_stat(agent.pid)
        if info is not None and info.state in ("T", "t"):
            # Stopped (any process of the pod may signal it): it would not answer, and
            # we would wait for it with every other request of the sandbox behind. No
            # agent serves this container any more: the next one could be stopped too.
            self._end_agent(member)
            member.agent_unfit.append(profile)
            return lost
        try:
            join_cgroup_fds(member.cgroup_fds, agent.pid)  # what it spawns is born inside
            give_stdio(fds, plan.uid)  # (the agent has dropped the privilege to)
            # What varies between its spawns, and nothing else: a short message.
            channel.send(agent.sock, ExecPlan(args=plan.args, env=plan.env, cwd=plan.cwd), fds)
            agent.sent += 1
        except OSError:
            self._end_agent(member)
            return lost
        try:
            step = self._agent_reply(member, agent)
        finally:
            if member.agent is agent:
                # Back to our cgroups before the reply: then it is never one of the
                # container's processes to anyone who knows of the exec.
                self._agent_home(member, agent)
        if step is None:
            error = "the exec agent died or did not answer"
            return Reply(False, error=error, error_type="ExecError", details=_AGENT_DIED)
        if step.step == "unready":
            return failed  # unfit: the slow way runs it, and says whether it could
        if step.step == "lost":
            return lost
        if step.step != "spawned":
            details = {"cause_type": step.error_type}
            return Reply(False, error=step.error, error_type="AgentFailed", details=details)
        pid = int(step.details.get("pid", 0))
        serial = self._agent_spawned(member, agent, pid)
        return Reply(True, pid=pid, details={"serial": serial})

    def _agent_spawned(self, member: _Member, agent: _Agent, pid: int) -> int:
        """Note ``pid``, which ``agent`` spawned for ``member``; its exec's serial."""
        if pid in agent.children:
            return self.exec_serials[pid]
        agent.children.add(pid)
        return self._record_exec(pid, member.id)

    def _record_exec(self, pid: int, member_id: str) -> int:
        """Note ``pid`` as a process exec'd into ``member_id``; its serial. The status an
        earlier exec with that pid left unasked is kept apart, by that exec's serial."""
        earlier, status = self.exec_serials.get(pid), self.unwaited.pop(pid, None)
        if earlier is not None and status is not None:
            self.superseded[earlier] = (self.exec_owner.get(pid, ""), status)
            while len(self.superseded) > UNWAITED_KEPT:
                del self.superseded[next(iter(self.superseded))]
        self.waited.pop(pid, None)
        self.execs.add(pid)
        self.exec_owner[pid] = member_id
        self.exec_serial += 1
        self.exec_serials[pid] = self.exec_serial
        return self.exec_serial

    def _forget_exec(self, pid: int) -> None:
        self.exec_owner.pop(pid, None)
        self.exec_serials.pop(pid, None)

    def _agent_reply(self, member: _Member, agent: _Agent) -> Progress | None:
        """The agent's answer to the request just sent (``spawned`` or an error).

        If it dies without one, its ``board`` says how far it got: ``spawned``
        (then died); ``Progress("unready")`` if its seccomp filter killed it
        (``SIGSYS``: a syscall it needs is not allowed) or its preparation failed;
        ``Progress("lost")`` if it died otherwise before it spawned; ``None`` if it
        died while spawning (or hung). Exits it reports meanwhile are handled.
        """
        # Waited for in slices: a process of the pod may stop the agent (SIGSTOP) once it
        # took the request, and every other request of the sandbox would wait behind it.
        deadline = time.monotonic() + EXEC_START_TIMEOUT
        agent.sock.settimeout(_AGENT_REPLY_SLICE)
        try:
            while True:
                try:
                    step, fds = channel.receive(agent.sock, Progress)
                except TimeoutError:
                    info = procfs.read_stat(agent.pid)
                    stopped = info is not None and info.state in ("T", "t")
                    if stopped or time.monotonic() >= deadline:
                        raise
                    continue
                channel.close_fds(fds)
                if self._agent_news(agent, step):
                    continue
                if not agent.ready:
                    self._end_agent(member)  # its preparation failed
                    return Progress("unready", error=step.error)
                return step
        except channel.ChannelClosedError:
            return self._agent_dead(member, agent)
        except (OSError, ValueError):  # TimeoutError included: stopped, say
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, signal.SIGKILL)
            return self._agent_dead(member, agent)
        finally:
            if member.agent is agent:
                agent.sock.settimeout(None)

    def _agent_dead(self, member: _Member, agent: _Agent) -> Progress | None:
        """What became of the request of an agent that died (or was killed) without an
        answer (see :meth:`_agent_reply`), once it is reaped."""
        begun, done, pid = (
            int.from_bytes(agent.board[i : i + 8], "little") for i in range(0, 24, 8)
        )
        if done >= agent.sent:  # it spawned, and died before it said so
            self._agent_spawned(member, agent, pid)
        returncode = self._reap_agent(agent)
        if done >= agent.sent:
            return Progress("spawned", details={"pid": pid})
        if returncode == -signal.SIGSYS:  # a syscall it needs is denied, say: unfit
            if begun < agent.sent:
                return Progress("unready")  # (the slow way runs it, and says whether)
            # Its spawn had begun, so it may have spawned (a SIGSYS any process of its uid
            # may send as its child execs): never run it twice, nor this profile here.
            member.agent_unfit.append(agent.profile)
            return None
        if begun < agent.sent and returncode is not None:
            return Progress("lost")  # nothing was spawned
        return None  # killed while it spawned: it may have, so never run it twice

    def _agent_home(self, member: _Member, agent: _Agent) -> None:
        """Move ``agent`` back to our cgroups, where it waits between spawns."""
        try:
            join_cgroup_fds(agent.home_fds, agent.pid)
        except OSError:  # left in the container's cgroup, it would count as one of its own
            self._end_agent(member)

    def _agent_news(self, agent: _Agent, step: Progress) -> bool:
        """Take in what ``agent`` says unasked (``ready``, an ``exited`` child); ``False``
        for any other step."""
        if step.step == "ready":
            agent.ready = True
        elif step.step == "exited":
            self._agent_child_exited(agent, step)
        else:
            return False
        return True

    def _agent_child_exited(self, agent: _Agent, step: Progress) -> None:
        pid = int(step.details.get("pid", 0))
        if pid in agent.children:
            agent.children.discard(pid)
            if pid in self.execs:
                self._exec_exited(pid, int(step.details.get("returncode", -signal.SIGKILL)))

    def _agent_message(self, member: _Member) -> None:
        """The agent spoke (an exit, ``ready``) or ended, between requests."""
        agent = member.agent
        if agent is None:
            return
        agent.sock.settimeout(0.0)
        try:
            while True:
                step, fds = channel.receive(agent.sock, Progress)
                channel.close_fds(fds)
                self._agent_news(agent, step)
        except BlockingIOError:
            pass
        except (channel.ChannelClosedError, OSError, ValueError):
            self._end_agent(member)
            return
        finally:
            if member.agent is agent:
                agent.sock.settimeout(None)

    def _start_agent(self, member: _Member, profile: ExecPlan) -> _Agent | None:
        """Fork ``member``'s exec agent for ``profile``; ``None`` if it cannot have one
        (no ``subprocess`` to spawn with: a confined ``run`` sandbox, see :meth:`confine`)."""
        # In a user namespace of our own, our cgroups (the caller's) are not ours to join,
        # and our /proc/self/fd (through which we import) not ours to read: no agent.
        home = None if self.plan.uid_map else home_of(self.homes, member.cgroup_dirs or [])
        if home is None or not self._import_subprocess():
            member.agent_unfit.append(profile)
            return None
        try:
            home_fds = open_cgroup(home)
        except OSError:
            member.agent_unfit.append(profile)
            return None
        self.settle()
        ours, theirs = channel.socket_pair()
        board = mmap.mmap(-1, 8 * AGENT_BOARD)  # anonymous, shared with the child
        try:
            pid, mask = _fork_signals_blocked()
        except BaseException:
            channel.close_fds(home_fds)
            ours.close()
            theirs.close()
            board.close()
            raise
        if pid == 0:
            ours.close()
            self._close_in_child(keep=member.handles)
            run_agent(profile, member.handles, theirs, mask, board)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        member.agent = self.agents[pid] = _Agent(pid, ours, profile, home_fds, board)
        self.selector.register(ours, selectors.EVENT_READ, ("agent", member))
        return member.agent

    def _end_agent(self, member: _Member) -> None:
        """SIGKILL ``member``'s agent and detach it; it is forgotten once reaped
        (:meth:`_agent_exited`)."""
        agent, member.agent = member.agent, None
        if agent is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(agent.sock)
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent.pid, signal.SIGKILL)

    def _reap_agent(self, agent: _Agent) -> int | None:
        """Wait (a second at most: a frozen one would not end) for ``agent``, which is
        exiting or killed, and forget it; its exit status. ``None`` if it is not reaped
        by then: it is ended, and :meth:`_reap` collects it later."""
        for _ in range(AGENT_REAP_TRIES):
            try:
                done, status = os.waitpid(agent.pid, os.WNOHANG)
            except ChildProcessError:  # not ours to wait for any more: gone
                self.agents.pop(agent.pid, None)
                self._agent_exited(agent)
                return None
            if done:
                self.agents.pop(agent.pid, None)
                self._agent_exited(agent)
                return os.waitstatus_to_exitcode(status)
            time.sleep(1.0 / AGENT_REAP_TRIES)
        for member in self.members.values():
            if member.agent is agent:
                self._end_agent(member)
        return None

    def _agent_exited(self, agent: _Agent) -> None:
        """An agent was reaped: read the exits it reported, then settle what it spawned.

        What still runs is our child now (we are its subreaper) and is reaped
        as any exec'd process; what it reaped without telling us is reported
        killed.
        """
        for member in self.members.values():
            if member.agent is agent:
                member.agent = None
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(agent.sock)
        agent.sock.settimeout(0.0)
        with contextlib.suppress(OSError, ValueError):  # end of stream included
            while True:
                step, fds = channel.receive(agent.sock, Progress)
                channel.close_fds(fds)
                if step.step == "exited":
                    self._agent_child_exited(agent, step)
        agent.sock.close()
        agent.board.close()
        channel.close_fds(agent.home_fds)
        for pid in sorted(agent.children & self.execs):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by the agent, which died before it said so
                self._exec_exited(pid, -signal.SIGKILL)
                continue
            if done:
                self._exec_exited(pid, os.waitstatus_to_exitcode(status))

    @staticmethod
    def _reap_failed(pid: int, *, hang: bool = True) -> None:
        """Reap a child that failed to start; without ``hang`` only if it has exited
        already (killed in a cgroup frozen from outside, it ends once thawed: then
        :meth:`_reap` collects it, as no process of ours)."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0 if hang else os.WNOHANG)

    def _exec_exited(self, pid: int, returncode: int) -> None:
        self.execs.discard(pid)
        waiters = self.exec_waiters.pop(pid, [])
        if self.exec_owner.get(pid) not in self.members:
            self._forget_exec(pid)  # its container was destroyed: status not kept
        elif not waiters:
            self.unwaited[pid] = returncode
            if len(self.unwaited) > UNWAITED_KEPT:
                oldest = next(iter(self.unwaited))
                del self.unwaited[oldest]
                self._forget_exec(oldest)
            return
        else:
            self._remember_waited(pid, returncode)
        for conn in waiters:
            self.waiting_on.pop(conn, None)
            with contextlib.suppress(OSError):
                channel.send(conn, Reply(True, pid=pid, returncode=returncode))

    def _remember_waited(self, pid: int, returncode: int) -> None:
        self.waited[pid] = returncode
        self.waited.move_to_end(pid)
        while len(self.waited) > WAITED_KEPT:
            oldest, _ = self.waited.popitem(last=False)
            self._forget_exec(oldest)

    def _not_ours(self, member: _Member, pid: int) -> Reply:
        return Reply(
            False,
            error=f'pid {pid} does not belong to container "{member.id}"',
            error_type="ProcessNotFoundError",
            details={"pid": pid},
        )

    def _wait_exec(
        self, conn: socket.socket, member: _Member, pid: int, *, nohang: bool, serial: int = 0
    ) -> Reply | None:
        if serial and self.exec_serials.get(pid) != serial:  # its pid is another exec's now
            owner, returncode = self.superseded.get(serial, (member.id, None))
            if owner != member.id:
                return self._not_ours(member, pid)
            if returncode is None:
                return self._exited(pid, "has exited; its status was not kept")
            return Reply(True, pid=pid, returncode=returncode)
        if self.exec_owner.get(pid) != member.id:
            return self._not_waitable(member, pid)
        if pid in self.execs:
            if nohang:
                return Reply(True, pid=pid)
            self.exec_waiters.setdefault(pid, []).append(conn)
            self.waiting_on[conn] = pid
            return None
        if pid in self.unwaited:
            self._remember_waited(pid, self.unwaited.pop(pid))
        if pid in self.waited:
            return Reply(True, pid=pid, returncode=self.waited[pid])
        return self._not_ours(member, pid)

    def _not_waitable(self, member: _Member, pid: int) -> Reply:
        """The answer to a wait for a pid that is no exec'd process: ``ProcessNotFoundError``,
        saying so of one of the container's other processes."""
        if pid in self._member_pids(member):
            return Reply(
                False,
                error=f'process {pid} of container "{member.id}" is neither its init nor '
                "exec'd into it: only those are waited for",
                error_type="ProcessNotFoundError",
                details={"pid": pid},
            )
        return self._not_ours(member, pid)

    def _signal_exec(self, member: _Member, pid: int, signum: int, *, group: bool) -> Reply:
        """Signal a process exec'd into ``member``, or its process group (which may outlive
        it). Any other process of the container is signalled too (:meth:`_signal_member`).
        """
        if self.exec_owner.get(pid) != member.id:
            return self._signal_member(member, pid, signum, group=group)
        try:
            if pid in self.execs:  # not reaped yet: the pid, and the group, are its own
                (os.killpg if group else os.kill)(pid, signum)
            elif not group or not self._signal_group_of(member, pid, signum):
                # Reaped: the number may lead another group now (another member's, once
                # the PID space wrapped): only the member's processes in it are signalled.
                raise ProcessLookupError
        except ProcessLookupError:
            return self._exited(pid)
        return Reply(True, pid=pid)

    def _signal_group_of(self, member: _Member, group: int, signum: int) -> bool:
        """Signal ``member``'s processes of process group ``group`` (each through a pidfd,
        checked once opened); whether there was one. Without a cgroup, its processes
        that we adopted (a reaped exec's children) are ours but no other member's."""
        candidates = self._member_pids(member)
        if not member.cgroup_dirs:
            others = set().union(
                *(self._member_pids(m) for m in self.members.values() if m is not member)
            )
            candidates |= set(procfs.descendants(os.getpid())) - others
        found = False
        for pid in candidates:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                if os.getpgid(pid) == group:
                    signal.pidfd_send_signal(pidfd, signum)
                    found = True
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
        return found

    @staticmethod
    def _exited(pid: int, detail: str = "has exited") -> Reply:
        return Reply(
            False,
            error=f"process {pid} {detail}",
            error_type="ProcessNotFoundError",
            details={"pid": pid, "exited": True},
        )

    def _signal_member(self, member: _Member, pid: int, signum: int, *, group: bool) -> Reply:
        """Signal ``pid`` (or with ``group`` its process group) if it is ``member``'s.

        It must be one of :meth:`_member_pids`, never this supervisor. A pidfd
        is opened before the check and the signal goes through it, so a pid
        reused meanwhile is never signalled.
        """
        if pid <= 0 or pid == os.getpid():
            return self._not_ours(member, pid)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as err:  # gone, or a thread's id (ENOENT; EINVAL before Linux 6.9)
            if err.errno in (errno.ESRCH, errno.ENOENT, errno.EINVAL):
                return self._not_ours(member, pid)
            raise
        try:
            if pid not in self._member_pids(member):
                return self._not_ours(member, pid)
            if group:
                pgid = os.getpgid(pid)
                # Container sessions start in the container: its groups are its own.
                if pgid not in (0, os.getpgid(0)):
                    os.killpg(pgid, signum)
            else:
                signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            return self._exited(pid)
        finally:
            os.close(pidfd)
        return Reply(True, pid=pid)

    def _signal_foreground(self, member: _Member, pid: int, signum: int) -> Reply:
        """Signal the foreground process group of the terminal that ``pid`` holds.

        ``pid`` is ``member``'s init or a process exec'd into it: each leads a
        session of its own, and with a terminal it is the session's controlling
        tty. The group comes from ``/proc/PID/stat`` (``tpgid``, what
        ``tcgetpgrp`` gives); the kernel keeps it within that session, so
        within the container.
        """
        if pid != member.init_pid and self.exec_owner.get(pid) != member.id:
            return self._not_ours(member, pid)
        if pid != member.init_pid and pid not in self.execs:
            return self._exited(pid)
        if pid == member.init_pid and member.returncode is not None:
            return self._exited(pid)
        group = procfs.foreground_group(pid)
        if group is None:
            info = procfs.read_stat(pid)
            if info is None or info.state in "ZX":
                return self._exited(pid)
            return Reply(
                False,
                error=f'process {pid} of container "{member.id}" has no controlling terminal',
                error_type="ProcessNotFoundError",
                details={"pid": pid},
            )
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            return self._exited(pid, f"has no foreground process group ({group} is gone)")
        return Reply(True, pid=group)

    def _start(self, member: _Member, request: Request) -> Reply:
        """Start ``member``; the reply once its program runs, or its start failed."""
        sync = self._begin_start(member, request)
        return sync if isinstance(sync, Reply) else self._start_outcome(member, sync)

    def _start_later(self, conn: socket.socket, member: _Member, request: Request) -> Reply | None:
        """:meth:`_start`, the reply sent to ``conn`` later (:meth:`_started`): the init
        runs the startContainer hooks, which may take long, while we serve the other
        containers' requests."""
        sync = self._begin_start(member, request)
        if isinstance(sync, Reply):
            return sync
        member.init_sync, member.starting = sync, conn
        self.selector.register(sync, selectors.EVENT_READ, ("starting", member))
        return None

    def _begin_start(self, member: _Member, request: Request) -> socket.socket | Reply:
        """Tell ``member``'s init to go on to exec (unless it goes by itself: autostart);
        its sync socket, which says how it went, or the reply of a start refused."""
        if member.started or member.init_sync is None:
            return Reply(False, error="the container was started already", error_type="State")
        if member.returncode is not None:  # (killed while created, and reaped)
            return _STOPPED_BEFORE_START
        member.started = True
        sync, member.init_sync = member.init_sync, None
        if not member.autostart:  # else it goes on to exec by itself after created
            with contextlib.suppress(OSError):  # (a dead init: its end of stream says so)
                channel.send(sync, request)
        return sync

    def _started(self, member: _Member) -> None:
        """A start not waited for is over (:meth:`_start_later`): reply."""
        sync, conn = member.init_sync, member.starting
        member.init_sync = member.starting = None
        if sync is None or conn is None:
            return
        self.selector.unregister(sync)
        reply = self._start_outcome(member, sync)
        with contextlib.suppress(OSError):
            channel.send(conn, reply)

    def _start_outcome(self, member: _Member, sync: socket.socket) -> Reply:
        """Read how ``member``'s start went on its init's ``sync`` socket (closed here)."""
        try:
            step, _ = channel.receive(sync, Progress)
        except channel.ChannelClosedError:
            # The sync socket closed on exec (the program runs), or as the init died.
            if member.returncode is not None:  # reaped already: it cannot tell which
                return _STOPPED_BEFORE_START
            if not _died_before_exec(member.init_pid, (INIT_PROCESS_NAME, AHEAD_PROCESS_NAME)):
                return Reply(True)
            self._await_init(member)
            assert member.returncode is not None
            return Reply(False, error=_death_before_exec("init", member.returncode, member.plan))
        finally:
            sync.close()
        # The init exits right after reporting the failure: record its exit before
        # replying, so the caller sees the container stopped once start fails.
        self._await_init(member)
        return Reply(False, error=step.error, error_type=step.error_type, details=step.details)

    def _await_init(self, member: _Member) -> None:
        """Reap ``member``'s init, which is exiting (it said why its start failed, or it
        died): waited for a moment (AWAIT_INIT_TIMEOUT), then killed and recorded as
        killed, so that a process of the sandbox that stops it (or a cgroup frozen from
        outside) cannot hold us; :meth:`_reap` collects it later, as no init of ours."""
        deadline = time.monotonic() + AWAIT_INIT_TIMEOUT
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, status = os.waitpid(member.init_pid, os.WNOHANG)
                if pid:
                    self._init_exited(member, os.waitstatus_to_exitcode(status))
                    return
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.init_pid, signal.SIGKILL)
            self._init_exited(member, -signal.SIGKILL)

    def _signal(self, member: _Member, signum: int, *, everyone: bool, group: bool = False) -> None:
        if member.returncode is not None and not everyone:
            raise ProcessLookupError(errno.ESRCH, "the container's init has exited")
        if everyone and os.getpid() == 1 and list(self.members.values()) == [member]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signum)
        elif everyone:
            for pid in self._member_pids(member):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
        elif group:
            os.killpg(member.init_pid, signum)
        else:
            os.kill(member.init_pid, signum)

    def _finish(self) -> NoReturn:
        root = self.root
        assert root.returncode is not None
        # Subcontainers and exec'd processes end with the sandbox (with our PID namespace,
        # if we have one; without, here): killed, as their waiters are told. Every exit
        # status is recorded before any waiter hears of one.
        if not root.recorded:  # (once: a rename over a file makes ext4 flush)
            self._write_exit(root, root.returncode)
        for member in list(self.members.values()):  # exits an agent reported, not read yet:
            self._agent_message(member)  # their waiters get the true status, not -SIGKILL
        self._write_exec_exits()
        killed = [
            member
            for member in self.members.values()
            if member is not root and member.returncode is None and member.creator is None
        ]
        for member in killed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(member.init_pid, signal.SIGKILL)
            # A paused member's processes would die only once thawed, and we, PID 1 of
            # their namespace, could not end before them: the member would read stopped
            # with its processes left until its destroy.
            _thaw(member.cgroup_dirs or [])
            with contextlib.suppress(OSError):
                self._write_exit(member, -signal.SIGKILL)
        self._answer_waiters(root, root.returncode)
        for member in killed:
            self._answer_waiters(member, -signal.SIGKILL)
            if member.starting is not None:
                with contextlib.suppress(OSError):
                    channel.send(member.starting, _STOPPED_BEFORE_START)
        for pid in self.execs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for start in list(self.exec_starts.values()):  # on their way: never to run
            with contextlib.suppress(ProcessLookupError):
                os.kill(start.pid, signal.SIGKILL)
            channel.close_fds(start.pty)
            with contextlib.suppress(OSError):
                channel.send(start.conn, _EXEC_STOPPED)
        for pid in self.agents:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid, conns in self.exec_waiters.items():
            for conn in conns:
                with contextlib.suppress(OSError):
                    channel.send(conn, Reply(True, pid=pid, returncode=-signal.SIGKILL))
        self.listener.close()
        # (Not ours to remove in a user namespace of our own: the library's destroy does.)
        with contextlib.suppress(OSError):
            os.unlink(os.path.basename(self.plan.control_socket), dir_fd=self.runtime_fd)
        code = root.returncode if root.returncode >= 0 else 128 - root.returncode
        os._exit(code)


#: A frozen cgroup's file that thaws it, and what thaws it: v1's, v2's.
_THAWING = (("freezer.state", b"THAWED"), ("cgroup.freeze", b"0"))


def _thaw(cgroup_dirs: Sequence[int]) -> None:
    """Thaw the cgroup whose directories (fds) are ``cgroup_dirs``, in whichever
    hierarchy has a freezer (best effort: the library's destroy thaws it too)."""
    for directory in cgroup_dirs:
        for name, thawed in _THAWING:
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=directory)
            except OSError:
                continue
            try:
                os.write(fd, thawed)
            except OSError:
                pass
            finally:
                os.close(fd)


def _open_runtime_dirs(plan: SandboxPlan) -> tuple[int, int]:
    """``O_PATH`` fds of the runtime directory and of its exit directory."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    runtime_fd = os.open(plan.runtime_dir, flags)
    try:
        return runtime_fd, os.open(os.path.dirname(plan.exit_file), flags)
    except BaseException:
        os.close(runtime_fd)
        raise


def _hold_runtime_dir(plan: SandboxPlan) -> tuple[int, int, socket.socket]:
    """:func:`_open_runtime_dirs`, and the control socket bound in the runtime directory."""
    runtime_fd, exits_fd = _open_runtime_dirs(plan)
    try:
        # The supervisor listens: its peers must see it (``SO_PEERCRED``), not us.
        return runtime_fd, exits_fd, channel.bind_listener(plan.control_socket, listen=False)
    except BaseException:
        channel.close_fds([runtime_fd, exits_fd])
        raise


def _run_supervisor(
    plan: SandboxPlan,
    bootstrap: socket.socket,
    stdio: list[int],
    gate: int | None,
    *,
    prepared: bool = False,
    ahead: RootAhead | None = None,
    confinement: Confinement | None = None,
    held: tuple[int, int, socket.socket] | None = None,
) -> NoReturn:
    supervisor = Supervisor(plan, bootstrap, stdio, gate, prepared=prepared)
    supervisor.held = held
    supervisor.confinement = confinement  # (an init forked before it is used closes it)
    try:
        supervisor.setup()
        if ahead is not None:
            supervisor.adopt_init(ahead)
        else:
            supervisor.fork_init()
        if plan.init.await_cgroup:
            supervisor.relay_cgroup()
        if ahead is not None:
            supervisor.hand_plan()
            # Its init has a root and namespace of its own: we confine ourselves while it
            # goes on to created (on the other core), not after.
            supervisor.confine(confinement)
        created = supervisor.relay_creation()
        if created and ahead is None:
            supervisor.confine(confinement)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            supervisor.report(error_progress(exc))
        os._exit(1)
    if not created:
        os._exit(1)
    supervisor.serve()


def main(bootstrap_fd: int) -> NoReturn:
    """Entry point of the launched process; ``bootstrap_fd`` is its bootstrap socket."""
    reset_inherited_signals()
    bootstrap = socket.socket(fileno=bootstrap_fd)
    os.set_inheritable(bootstrap_fd, False)
    try:
        plan, stdio = channel.receive(bootstrap, SandboxPlan)
        receive_trees(bootstrap, stdio, plan.init)
        # Our root in a new user namespace owns its runtime directory (the library gave
        # it), but may not reach it by path: held, and its socket bound, from out here.
        held = _hold_runtime_dir(plan) if plan.uid_map else None
        if plan.uid_map:
            # What inits import later from the host's files, which a user namespace's root
            # may not read (the interpreter's may be in /root): the hooks' runner.
            import subprocess  # noqa: F401

            grant_ahead(plan.init)
        enter_namespaces(plan.namespaces, plan.uid_map, plan.gid_map)
        if plan.time_offsets:  # (our children enter the new time namespace: none yet)
            write_time_offsets(plan.time_offsets)
        gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
    except BaseException as exc:
        with contextlib.suppress(OSError):
            channel.send(bootstrap, error_progress(exc))
        os._exit(1)
    if pid == 0:
        os.close(gate_w)
        _run_supervisor(plan, bootstrap, stdio, gate_r, held=held)
    channel.send(bootstrap, _launched(pid))
    os.close(gate_w)
    os._exit(0)


#: The answer to an exec on its way when the sandbox ends.
_EXEC_STOPPED = Reply(False, error="the container's init has exited", error_type="Stopped")

#: The answer to a start of a container whose init is gone (the library reads the
#: container's status: stopped, then ``InvalidStateError``).
_STOPPED_BEFORE_START = Reply(
    False, error="the container's init exited before it was started", error_type="SandboxStopped"
)


def _died_before_exec(pid: int, names: Sequence[str]) -> bool:
    """Whether our child ``pid``, whose sync socket just closed, died before its
    ``execve`` rather than exec'd: it is exiting (or a zombie) under one of our
    ``names``, or ours (:data:`PROCESS_NAME`: killed before it named itself). A process
    in the middle of an exec is neither (its name may still be ours for a moment); one
    that exec'd and exits at once has its program's name. Its ``/proc`` entry stays
    until we reap it."""
    return procfs.dying_name(pid) in (*names, PROCESS_NAME)


def _death_before_exec(what: str, returncode: int, plan: ProcessPlan) -> str:
    """Why a container's ``what`` (its init, an exec'd process: ``plan``) never ran its
    program."""
    if returncode >= 0:
        return f"its {what} exited with status {returncode} before it ran the program"
    try:
        signame = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        signame = ""
    why = f"its {what} was killed by signal {-returncode}{signame} before it ran the program"
    if returncode == -signal.SIGSYS and plan.seccomp is not None:
        why += (
            ": the seccomp profile, loaded early without noNewPrivileges, forbids a "
            "system call the runtime makes before the program starts"
            if plan.seccomp.early
            else ": the seccomp profile forbids a system call of the program's execve"
        )
    return why


def _launched(pid: int) -> Launched:
    """Name our child ``pid`` for the library; as its parent we read its start time safely."""
    info = procfs.read_stat(pid)
    return Launched(pid, info.start_ticks if info is not None else 0)


def _fork_signals_blocked() -> tuple[int, set[int | signal.Signals]]:
    """``fork()`` with every signal blocked: the child must not run our handlers (which
    signal inits) before it has reset them. ``(pid, the mask to restore)``; the parent
    restores it on failure, each side once its work allows."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        return os.fork(), mask
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise


#: How long the supervisor waits for an agent's reply before it looks whether the agent
#: was stopped (then killed, its request handed over).
_AGENT_REPLY_SLICE = 0.05

#: Failures of an agent that say nothing of its fitness: ``EAGAIN`` (a pids limit reached,
#: which the slow way then meets too, :func:`_pids_limit_reached`), its death by another's
#: hand.
_TRANSIENT = frozenset({"BlockingIOError", "AgentDied"})


def _pids_limit_reached(dirs: Iterable[int]) -> int | None:
    """The ``pids.max`` of the cgroup directories ``dirs`` (fds), or of a cgroup above
    one (a pod's, a kubelet's), when its ``pids.current`` has reached it, else ``None``."""
    for directory in dirs:
        level = os.dup(directory)
        try:
            for _ in range(64):  # (up to the hierarchy's root, which has no pids.max)
                try:
                    limit = _read_at(level, "pids.max")
                    current = _read_at(level, "pids.current")
                except OSError:  # (not the pids hierarchy's, or its root)
                    break
                if limit != "max" and int(current) >= int(limit):
                    return int(limit)
                try:
                    parent = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=level)
                except OSError:
                    break
                os.close(level)
                level = parent
        finally:
            os.close(level)
    return None


def _read_at(directory: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
    try:
        return os.read(fd, 64).decode().strip()
    finally:
        os.close(fd)


_AGENT_DIED = {"cause_type": "AgentDied"}


def _profile(plan: ExecPlan) -> ExecPlan:
    """What an exec agent becomes ahead for ``plan``: the plan without what each spawn
    sets (args, env, cwd)."""
    return dataclasses.replace(plan, args=[], env=[], cwd="/")


def receive_trees(sock: socket.socket, fds: list[int], plan: InitPlan, extra: int = 0) -> None:
    """Receive into ``fds`` (the stdio fds that came with ``plan``) the rest of its trees
    (and of ``extra`` fds after them), when there were more than one message carries
    (``channel.send_many``)."""
    if len(fds) >= channel.MAX_FDS:
        channel.receive_rest(sock, fds, 3 + len(plan.tree_sources()) + extra)


def _receive_rest(conn: socket.socket, fds: list[int], plan: InitPlan, extra: int) -> str:
    """:func:`receive_trees` on a control connection (the rest follows at once, if
    any): what went wrong, or ``""``."""
    try:
        conn.settimeout(RECEIVE_TIMEOUT)
        receive_trees(conn, fds, plan, extra)
    except (OSError, ValueError) as exc:
        return f"the rest of its fds did not come: {exc}"
    finally:
        with contextlib.suppress(OSError):
            conn.settimeout(None)
    return ""


def warm(
    link: socket.socket, hint: SandboxPlan | None = None, trees: Sequence[int] = ()
) -> NoReturn:
    """Be a sandbox's supervisor made ahead of its plan, for a launch to claim.

    Runs in a child the fork server forked into new namespaces
    (:data:`~sandboxrt._proc.warm.WARM_UNSHARED`): PID 1 of its PID namespace.
    It brings loopback up, starts building the root of ``hint`` (see
    :func:`~sandboxrt._proc.warm.ahead_plan`) from ``trees``, its detached
    mounts the fork server opened (:class:`RootAhead`),
    and waits on ``link`` for a launch request carrying the bootstrap socket
    and log fd; end of stream (nobody will launch here) makes it exit. After
    the request it waits for ``link`` to close, the sign that the library,
    which knows our pid, let go. The root built ahead serves if the request
    says the host's mounts did not change meanwhile and :meth:`RootAhead.serves`
    the plan; else it is dropped.
    """
    syscalls.set_process_name("sandboxrt-warm")
    ahead: RootAhead | None = None
    confinement: Confinement | None = None
    try:
        prepare_namespaces({"network"})
        if hint is not None:
            ahead = RootAhead(hint.init, trees, [link.fileno()])
        confinement = Confinement.make()  # after that fork: the init built ahead holds none
        channel.close_fds(trees)
        request, fds = channel.receive(link, Request)
        link.recv(1)  # end of stream: the library, which knows our pid, let go
    except BaseException:
        if ahead is not None:
            ahead.discard()
        os._exit(0)
    link.close()
    bootstrap_fd, log_fd = fds
    os.dup2(log_fd, 2)
    os.close(log_fd)
    bootstrap = socket.socket(fileno=bootstrap_fd)
    try:
        plan, stdio = channel.receive(bootstrap, SandboxPlan)
        receive_trees(bootstrap, stdio, plan.init)
        unshare_private(0)
        prepare_namespaces({"pid"})
        claimed = stdio[3:]
        if ahead is not None and not (request.speculation and ahead.serves(plan.init, claimed)):
            ahead.discard()
            ahead = None
        if ahead is not None:  # its root is built: the trees that came are not needed
            park_trees(claimed)
            stdio = stdio[:3]
    except BaseException as exc:
        with contextlib.suppress(OSError):
            channel.send(bootstrap, error_progress(exc))
        os._exit(1)
    _run_supervisor(
        plan, bootstrap, stdio, None, prepared=True, ahead=ahead, confinement=confinement
    )
