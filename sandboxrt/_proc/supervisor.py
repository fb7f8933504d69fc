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

import contextlib
import errno
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from sandboxrt._core import abi
from sandboxrt._core.protocol import (
    EXEC_EXITS_FILE,
    Claim,
    ExecExits,
    ExitStatus,
    InitPlan,
    Launched,
    Progress,
    Reply,
    Request,
    SandboxPlan,
    encode,
)
from sandboxrt._os import cgroup_fds, channel, mounts, procfs, stdlib, syscalls
from sandboxrt._proc import leftovers
from sandboxrt._proc.children import (
    SUPERVISOR_NAME,
    death_before_exec,
    died_before_exec,
    fork_linked,
)
from sandboxrt._proc.confinement import Confinement, OldRootDetach, home_cgroups, home_of
from sandboxrt._proc.entry import reset_inherited_signals
from sandboxrt._proc.execs import Execs
from sandboxrt._proc.init import (
    AHEAD_PROCESS_NAME,
    error_progress,
    open_cgroup,
    raise_fd_limit,
    run_init,
)
from sandboxrt._proc.init import PROCESS_NAME as INIT_PROCESS_NAME
from sandboxrt._proc.limits import grant_ahead, shield_limits
from sandboxrt._proc.members import Member, exited_reply, not_ours_reply
from sandboxrt._proc.namespaces import (
    enter_namespaces,
    prepare_namespaces,
    unshare_private,
    write_time_offsets,
)
from sandboxrt._proc.warm import RootAhead, park_trees

__all__ = [
    "main",
    "receive_trees",
    "warm",
    "write_exit_status",
]


#: How many connections may wait for the control socket's ``accept``.
CONTROL_BACKLOG = 64
#: Seconds between tries to accept again after running out of fds (see ``_accept``).
ACCEPT_RETRY = 0.1
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
        self.root = Member(
            plan.init,
            plan.exit_file,
            new_cgroup_namespace=["cgroup", ""] in plan.namespaces,
        )
        #: Every container of the sandbox by id, the root's included.
        self.members: dict[str, Member] = {self.root.id: self.root}
        self.selector = selectors.DefaultSelector()
        self.wake_fds: tuple[int, int] | None = None
        #: The processes exec'd into its containers, and their exec agents.
        self.execs = Execs(
            self.members,
            self.selector,
            settle=self.settle,
            close_in_child=self._close_in_child,
            agent_homes=self._agent_homes,
            member_pids=self._member_pids,
        )
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
        #: A ``tied`` sandbox whose creator is gone: what it would have removed, we do.
        self.orphaned = False
        #: :meth:`confine` ran (once is all it does).
        self.confined = False

    # -- setting up ----------------------------------------------------------------------

    def setup(self) -> None:
        if os.getsid(0) != os.getpid():  # a warm sandbox is a session leader already
            os.setsid()
        syscalls.prctl(abi.PR_SET_DUMPABLE, 0)  # the container must not reach into us
        shield_limits()
        syscalls.set_process_name(SUPERVISOR_NAME)
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

    def confine(self) -> None:
        """Once the root container is created (or its init built ahead has its plan):
        open what we need of the host (the root's cgroup directories, our own cgroups),
        then make our root the minimal one
        (``mounts.confine_to_proc``: a tmpfs holding our /proc). Without a PID namespace
        of our own (no /proc of ours) we stay as we are (decision 33). A warm sandbox
        prepared the rest ahead (:attr:`confinement`). Once only: a later call does
        nothing."""
        if self.confined:
            return
        self.confined = True
        root = self.root
        if root.cgroup_dirs is None:  # (none: the library sends them with its cgroup)
            root.cgroup_dirs = []
        ahead = self.confinement or Confinement(top=-1)
        self.confinement = None  # ours to use up now
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

    def _agent_homes(self, member: Member) -> list[int] | None:
        """Our own cgroups in the hierarchies of ``member``'s, where its exec agent waits
        between spawns; ``None`` if it cannot have one (no ``subprocess`` to spawn with: a
        confined ``run`` sandbox, see :meth:`confine`)."""
        # In a user namespace of our own, our cgroups (the caller's) are not ours to join,
        # and our /proc/self/fd (through which we import) not ours to read: no agent.
        home = None if self.plan.uid_map else home_of(self.homes, member.cgroup_dirs or [])
        if home is None or not self._import_subprocess():
            return None
        return home

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
        takes, see :func:`~sandboxrt._proc.init.join_cgroup_fds`), its plan and its
        stdio; it goes on to ``created``."""
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
        member: Member,
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
        pid, mask, parent_end, child_end = fork_linked()
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
        for agent in self.execs.agents.values():
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
            root.cgroup_orphaned = leftovers.level_names(step.details.get("orphaned"), len(dirs))
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
                # Before its program runs: until we pivot, our /proc/1/mountinfo (which
                # the container reads as its PID 1's) shows the host's mount table.
                self.confine()
                self.report(self._start_step(root))
            return True

    def _start_step(self, member: Member) -> Progress:
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
        elif self.plan.tied and self.root.returncode is None:
            # Its creator holds the socket it launched us with: its closing ends us.
            self.selector.register(self.bootstrap, selectors.EVENT_READ, "conn")
        else:
            self.bootstrap.close()
        self._reap()
        while True:
            deaf = self.deaf_until
            waits = [self.execs.start_timeouts()]
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
                    self.execs.agent_message(data[1])
                elif data[0] == "exec-start":
                    if data[1].pid in self.execs.starts:  # (not answered by _reap meanwhile)
                        self.execs.start_step(data[1])
                else:
                    self._creator_message(data[1])

    def _write_exec_exits(self) -> None:
        """Record the statuses of exec'd processes we keep (exited before the sandbox
        ended): a ``Process`` waited for later reads its own, not ``-SIGKILL``."""
        exits = self.execs.kept_exits()
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
            if pid in self.execs.starts:  # so is an exec'd process's, the same way
                self.execs.start_step(self.execs.starts[pid], dead=True)
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
            elif pid in self.execs.running:
                self.execs.exited(pid, returncode)
            elif pid in self.execs.agents:
                self.execs.agent_exited(self.execs.agents.pop(pid))
            # Anything else is an orphan the kernel gave us: never ours to report.
        self.execs.end_stopped_agents()
        if self.root.returncode is not None:
            self._finish()

    def _member_of_init(self, pid: int) -> Member | None:
        for member in self.members.values():
            if member.init_pid == pid and member.returncode is None:
                return member
        return None

    def _init_exited(self, member: Member, returncode: int) -> None:
        """Record that ``member``'s init exited; a subcontainer's other processes go too."""
        member.returncode = returncode
        if member.creator is not None:
            return  # it died while being created: its creation step says so
        self._write_exit(member, returncode)
        if member is self.root:
            return  # the sandbox ends with it (_finish)
        self._answer_waiters(member, returncode)
        self._kill_rest(member)

    def _write_exit(self, member: Member, returncode: int) -> None:
        """Record ``member``'s exit status, in the runtime directory we hold open."""
        write_exit_status(member.exit_file, returncode, member.init_pid, dir_fd=self.exits_fd)
        member.recorded = True

    @staticmethod
    def _answer_waiters(member: Member, returncode: int) -> None:
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
        self.execs.stop_waiting(conn)
        conn.close()
        self._listen()  # an fd is free again
        if conn is self.bootstrap and self.root.returncode is None:
            # ``run``'s caller is gone (killed: it would have waited for, then destroyed,
            # the container), or a ``tied`` sandbox's creator: nobody will, so the
            # container goes now, as a child that dies with its parent (``bwrap
            # --die-with-parent``). Its record and cgroup wait for a destroy; it reads
            # stopped meanwhile (a ``tied`` one's have no one else to, we remove them: see
            # :meth:`_finish`). A paused one dies only once thawed (v1's freezer).
            self.orphaned = self.plan.tied
            with contextlib.suppress(ProcessLookupError):
                self._signal(self.root, signal.SIGKILL, everyone=True)
            cgroup_fds.thaw(self.root.cgroup_dirs or [], below=True)

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
                return self.execs.wait(
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
            if request.serial and self.execs.serials.get(request.pid) != request.serial:
                return exited_reply(request.pid)  # its pid is another exec's now
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
            answer = self.execs.run(conn, member, request, fds)
            if answer is not None:
                self.execs.answer(conn, *answer)
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
            member = Member(
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
                member.cgroup_orphaned = leftovers.level_names(plan.cgroup_orphaned, len(given))
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

    def _creation_step(self, member: Member) -> None:
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

    def _creator_message(self, member: Member) -> None:
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

    def _destroy_container(self, member: Member) -> Reply:
        if member is self.root:
            return Reply(
                False,
                error="the root container is destroyed with its sandbox",
                error_type="ProtocolError",
            )
        self._remove(member)
        return Reply(True)

    def _remove(self, member: Member) -> None:
        """Forget a subcontainer and SIGKILL what is left of it (destroyed, or not created).

        Its init, when reaped, is then an orphan like any other; its waiters get -9.
        """
        self.members.pop(member.id, None)
        if member.returncode is None and member.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.init_pid, signal.SIGKILL)
        self._kill_rest(member)
        self.execs.forget_member(member)
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

    def _kill_rest(self, member: Member) -> None:
        """SIGKILL a stopping subcontainer's processes: its cgroup's, its init's process
        group and the process groups of what was exec'd into it; and its exec agent."""
        self.execs.end_agent(member)
        pids = self._member_pids(member)
        if member.init_pid and member.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(member.init_pid, signal.SIGKILL)
        elif member.init_pid:
            # Reaped: the number may lead another group now (once the PID space wrapped:
            # another member's, or with the host's PID namespace anyone's).
            self._signal_group_of(member, member.init_pid, signal.SIGKILL)
        for pid in self.execs.running_in(member.id):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _member_pids(self, member: Member) -> set[int]:
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
            tops = set(self.execs.running_in(member.id))
            if member.returncode is None and member.init_pid:
                tops.add(member.init_pid)
            for top in tops:
                pids.add(top)
                pids.update(procfs.descendants(top))
        return pids - {0, os.getpid()}  # 0: outside our PID namespace; never a process group

    def _signal_exec(self, member: Member, pid: int, signum: int, *, group: bool) -> Reply:
        """Signal a process exec'd into ``member``, or its process group (which may outlive
        it). Any other process of the container is signalled too (:meth:`_signal_member`).
        """
        if self.execs.owner.get(pid) != member.id:
            return self._signal_member(member, pid, signum, group=group)
        try:
            if pid in self.execs.running:  # not reaped yet: the pid, and the group, are its own
                (os.killpg if group else os.kill)(pid, signum)
            elif not group or not self._signal_group_of(member, pid, signum):
                # Reaped: the number may lead another group now (another member's, once
                # the PID space wrapped): only the member's processes in it are signalled.
                raise ProcessLookupError
        except ProcessLookupError:
            return exited_reply(pid)
        return Reply(True, pid=pid)

    def _signal_group_of(self, member: Member, group: int, signum: int) -> bool:
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

    def _signal_member(self, member: Member, pid: int, signum: int, *, group: bool) -> Reply:
        """Signal ``pid`` (or with ``group`` its process group) if it is ``member``'s.

        It must be one of :meth:`_member_pids`, never this supervisor. A pidfd
        is opened before the check and the signal goes through it, so a pid
        reused meanwhile is never signalled.
        """
        if pid <= 0 or pid == os.getpid():
            return not_ours_reply(member, pid)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as err:  # gone, or a thread's id (ENOENT; EINVAL before Linux 6.9)
            if err.errno in (errno.ESRCH, errno.ENOENT, errno.EINVAL):
                return not_ours_reply(member, pid)
            raise
        try:
            if pid not in self._member_pids(member):
                return not_ours_reply(member, pid)
            if group:
                pgid = os.getpgid(pid)
                # Container sessions start in the container: its groups are its own.
                if pgid not in (0, os.getpgid(0)):
                    os.killpg(pgid, signum)
            else:
                signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            return exited_reply(pid)
        finally:
            os.close(pidfd)
        return Reply(True, pid=pid)

    def _signal_foreground(self, member: Member, pid: int, signum: int) -> Reply:
        """Signal the foreground process group of the terminal that ``pid`` holds.

        ``pid`` is ``member``'s init or a process exec'd into it: each leads a
        session of its own, and with a terminal it is the session's controlling
        tty. The group comes from ``/proc/PID/stat`` (``tpgid``, what
        ``tcgetpgrp`` gives); the kernel keeps it within that session, so
        within the container.
        """
        if pid != member.init_pid and self.execs.owner.get(pid) != member.id:
            return not_ours_reply(member, pid)
        if pid != member.init_pid and pid not in self.execs.running:
            return exited_reply(pid)
        if pid == member.init_pid and member.returncode is not None:
            return exited_reply(pid)
        group = procfs.foreground_group(pid)
        if group is None:
            info = procfs.read_stat(pid)
            if info is None or info.state in ("Z", "X"):
                return exited_reply(pid)
            return Reply(
                False,
                error=f'process {pid} of container "{member.id}" has no controlling terminal',
                error_type="ProcessNotFoundError",
                details={"pid": pid},
            )
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            return exited_reply(pid, f"has no foreground process group ({group} is gone)")
        return Reply(True, pid=group)

    def _start(self, member: Member, request: Request) -> Reply:
        """Start ``member``; the reply once its program runs, or its start failed."""
        sync = self._begin_start(member, request)
        return sync if isinstance(sync, Reply) else self._start_outcome(member, sync)

    def _start_later(self, conn: socket.socket, member: Member, request: Request) -> Reply | None:
        """:meth:`_start`, the reply sent to ``conn`` later (:meth:`_started`): the init
        runs the startContainer hooks, which may take long, while we serve the other
        containers' requests."""
        sync = self._begin_start(member, request)
        if isinstance(sync, Reply):
            return sync
        member.init_sync, member.starting = sync, conn
        self.selector.register(sync, selectors.EVENT_READ, ("starting", member))
        return None

    def _begin_start(self, member: Member, request: Request) -> socket.socket | Reply:
        """Tell ``member``'s init to go on to exec (with autostart too: then it waits for
        this only, right after created); its sync socket, which says how it went, or the
        reply of a start refused."""
        if member.started or member.init_sync is None:
            return Reply(False, error="the container was started already", error_type="State")
        if member.returncode is not None:  # (killed while created, and reaped)
            return _STOPPED_BEFORE_START
        # Our old root detached first: until then our /proc/1/mountinfo, which the program
        # reads as its PID 1's, still shows the host's mounts.
        self.settle()
        member.started = True
        sync, member.init_sync = member.init_sync, None
        with contextlib.suppress(OSError):  # (a dead init: its end of stream says so)
            channel.send(sync, request)
        return sync

    def _started(self, member: Member) -> None:
        """A start not waited for is over (:meth:`_start_later`): reply."""
        sync, conn = member.init_sync, member.starting
        member.init_sync = member.starting = None
        if sync is None or conn is None:
            return
        self.selector.unregister(sync)
        reply = self._start_outcome(member, sync)
        with contextlib.suppress(OSError):
            channel.send(conn, reply)

    def _start_outcome(self, member: Member, sync: socket.socket) -> Reply:
        """Read how ``member``'s start went on its init's ``sync`` socket (closed here)."""
        try:
            step, _ = channel.receive(sync, Progress)
        except channel.ChannelClosedError:
            # The sync socket closed on exec (the program runs), or as the init died.
            if member.returncode is not None:  # reaped already: it cannot tell which
                return _STOPPED_BEFORE_START
            if not died_before_exec(member.init_pid, (INIT_PROCESS_NAME, AHEAD_PROCESS_NAME)):
                return Reply(True)
            self._await_init(member)
            assert member.returncode is not None
            return Reply(False, error=death_before_exec("init", member.returncode, member.plan))
        finally:
            sync.close()
        # The init exits right after reporting the failure: record its exit before
        # replying, so the caller sees the container stopped once start fails.
        self._await_init(member)
        return Reply(False, error=step.error, error_type=step.error_type, details=step.details)

    def _await_init(self, member: Member) -> None:
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

    def _signal(self, member: Member, signum: int, *, everyone: bool, group: bool = False) -> None:
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
            self.execs.agent_message(member)  # their waiters get the true status, not -SIGKILL
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
            cgroup_fds.thaw(member.cgroup_dirs or [], below=True)
            with contextlib.suppress(OSError):
                self._write_exit(member, -signal.SIGKILL)
        self._answer_waiters(root, root.returncode)
        for member in killed:
            self._answer_waiters(member, -signal.SIGKILL)
            if member.starting is not None:
                with contextlib.suppress(OSError):
                    channel.send(member.starting, _STOPPED_BEFORE_START)
        self.execs.end_all()
        self.listener.close()
        # (Not ours to remove in a user namespace of our own: the library's destroy does.)
        with contextlib.suppress(OSError):
            os.unlink(os.path.basename(self.plan.control_socket), dir_fd=self.runtime_fd)
        if self.orphaned:
            self._remove_leftovers()
        code = root.returncode if root.returncode >= 0 else 128 - root.returncode
        os._exit(code)

    def _remove_leftovers(self) -> None:
        """Our creator is gone and no one else knows our containers (``tied``): once every
        process of theirs is gone (killed, whichever group or session it left; reaped, up
        to a few seconds), remove their cgroups and our runtime directory, as its destroy
        would have. Best effort: what stays, stays."""
        if os.getpid() == 1:  # (all but us in our PID namespace)
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)
        else:
            for member in self.members.values():
                for pid in self._member_pids(member):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        for member in self.members.values():  # (frozen, they die only once thawed)
            cgroup_fds.thaw(member.cgroup_dirs or [], below=True)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.005)
            except ChildProcessError:
                break
        for member in self.members.values():
            for index, directory in enumerate(member.cgroup_dirs or []):
                names = member.cgroup_orphaned[index] if member.cgroup_orphaned else []
                leftovers.remove_cgroup_levels(directory, names, member.id)
        leftovers.remove_runtime_dir(
            self.runtime_fd, self.plan.runtime_dir, root_lock=self.plan.runtime_root_lock
        )


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
            supervisor.confine()
        created = supervisor.relay_creation()
        if created:  # (done already if built ahead, or for ``run``: then it does nothing)
            supervisor.confine()
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


#: The answer to a start of a container whose init is gone (the library reads the
#: container's status: stopped, then ``InvalidStateError``).
_STOPPED_BEFORE_START = Reply(
    False, error="the container's init exited before it was started", error_type="SandboxStopped"
)


def _launched(pid: int) -> Launched:
    """Name our child ``pid`` for the library; as its parent we read its start time safely."""
    info = procfs.read_stat(pid)
    return Launched(pid, info.start_ticks if info is not None else 0)


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
