"""The sandbox supervisor: PID 1 of the sandbox, reaper, signal relay, control server.

Started as a fresh interpreter (never forked from the library's process) with
the bootstrap socket on fd 3. :func:`main` enters the sandbox's namespaces and
forks the supervisor, which is PID 1 of the new PID namespace; it forks the
container's init, relays its creation, then serves control requests until the
root container's init exits, records that exit status and exits with it.

Imports only the standard library and sandboxrt's stdlib-only modules, so it
starts in milliseconds.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import selectors
import signal
import socket
from collections.abc import Iterable, Sequence
from typing import NoReturn

from sandboxrt._core import abi
from sandboxrt._core.protocol import (
    ExitStatus,
    InitPlan,
    Launched,
    Progress,
    Reply,
    Request,
    SandboxPlan,
    decode,
    encode,
)
from sandboxrt._os import capabilities, channel, net, procfs, syscalls
from sandboxrt._proc.init import (
    error_progress,
    join_cgroup,
    open_cgroup,
    root_identities,
    run_exec,
    run_init,
    speculate,
)

__all__ = [
    "PROCESS_NAME",
    "WARM_NAMESPACES",
    "RootAhead",
    "is_warm_shape",
    "main",
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
#: How long a root built ahead that will not serve may take to finish before it is killed.
AHEAD_FINISH_TIMEOUT = 5.0

_RELAYED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


def write_exit_status(path: str, returncode: int, pid: int = 0) -> None:
    """Record an exit status (and whose: ``pid``) atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encode(ExitStatus(returncode, pid)))
    os.replace(tmp, path)


def _enter_namespaces(namespaces: Sequence[Sequence[str]]) -> None:
    """Join the namespaces given by path, then unshare the new ones."""
    joined = [(kind, path) for kind, path in namespaces if path]
    joined.sort(key=lambda item: item[0] != "user")  # the user namespace first
    opened = [(kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)) for kind, path in joined]
    for kind, fd in opened:
        try:
            syscalls.setns(fd, abi.NAMESPACE_FLAGS[kind])
        finally:
            os.close(fd)
    flags = 0
    for kind, path in namespaces:
        if not path and kind != "cgroup":  # the init makes that one, inside the cgroup
            flags |= abi.NAMESPACE_FLAGS[kind]
    _unshare_private(flags)


def _unshare_private(flags: int) -> None:
    """Unshare ``flags`` (always with a new mount namespace) and make every mount private."""
    syscalls.unshare(flags | abi.CLONE_NEWNS)
    # Nothing mounted in here may reach the host: every mount private, first thing.
    syscalls.mount(None, "/", None, abi.MS_REC | abi.MS_PRIVATE)


def _prepare_namespaces(new: Iterable[str]) -> None:
    """Ready the supervisor's new namespaces: loopback up, its own /proc."""
    new = frozenset(new)
    if "network" in new:
        net.set_link_up("lo")
    if "pid" in new:
        # The supervisor's own view of its PID namespace (its mounts are private).
        syscalls.mount("proc", "/proc", "proc", abi.MS_NOSUID | abi.MS_NODEV | abi.MS_NOEXEC)


#: The namespaces a warm sandbox has made before it knows its plan.
WARM_NAMESPACES = frozenset({"pid", "network", "ipc", "uts", "mount"})


def is_warm_shape(namespaces: Sequence[Sequence[str]]) -> bool:
    """Whether a plan wants exactly the namespaces of a warm sandbox (cgroup aside)."""
    kinds = [kind for kind, path in namespaces if kind != "cgroup" or path]
    return all(not path for _, path in namespaces) and frozenset(kinds) == WARM_NAMESPACES


class Supervisor:
    """PID 1 of one sandbox."""

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
        self.init_pid = 0
        self.init_sync: socket.socket | None = None
        #: An fd on the overlay root's upper directory (from the init), or -1.
        self.upper = -1
        #: The init was built ahead (:class:`RootAhead`), not forked for this plan.
        self.adopted = False
        #: The container's ``cgroup.procs`` files (exec'd processes join them), and the
        #: files that join it, opened at the first exec.
        self.cgroup_procs = list(plan.init.cgroup_procs)
        self.cgroup_fds: list[int] | None = None
        self.returncode: int | None = None
        self.waiters: list[socket.socket] = []
        self.selector = selectors.DefaultSelector()
        self.started = False
        # Exec'd processes (pids in our PID namespace). Running ones are in ``execs``; once
        # reaped, their status waits in ``unwaited`` until a wait asks for it, then moves to
        # ``waited`` (the latest WAITED_KEPT). A pid the kernel hands out again (after the
        # PID space wraps) replaces an old status nobody asked for.
        self.execs: set[int] = set()
        self.unwaited: dict[int, int] = {}
        self.waited: collections.OrderedDict[int, int] = collections.OrderedDict()
        #: Connections waiting for an exec'd process, by pid, and the pid each waits for.
        self.exec_waiters: dict[int, list[socket.socket]] = {}
        self.waiting_on: dict[socket.socket, int] = {}

    # -- setting up ----------------------------------------------------------------------

    def setup(self) -> None:
        os.setsid()
        syscalls.prctl(abi.PR_SET_DUMPABLE, 0)  # the container must not reach into us
        syscalls.set_process_name(PROCESS_NAME)
        syscalls.prctl(abi.PR_SET_CHILD_SUBREAPER, 1)
        new = {kind for kind, path in self.plan.namespaces if not path}
        if self.plan.hostname is not None:
            socket.sethostname(self.plan.hostname)
        if self.plan.domainname is not None:
            syscalls.setdomainname(self.plan.domainname)
        if not self.prepared:
            _prepare_namespaces(new)
        self.listener = channel.bind_listener(self.plan.control_socket)

    @property
    def new_cgroup_namespace(self) -> bool:
        return ["cgroup", ""] in self.plan.namespaces

    def adopt_init(self, ahead: RootAhead) -> None:
        """Take the init that built our root ahead (see :func:`warm`) as the container's."""
        self.init_pid, self.init_sync = ahead.pid, ahead.sync
        self.upper, ahead.upper = ahead.upper, -1
        self.adopted = True

    def hand_plan(self) -> None:
        """Give an adopted init its cgroup (moved in by us: its root hides the host's
        cgroupfs), its plan and its stdio; it goes on to ``created``."""
        assert self.init_sync is not None
        join_cgroup(self.cgroup_procs, pid=self.init_pid)
        go = Progress("go", details={"cgroupns": self.new_cgroup_namespace})
        channel.send(self.init_sync, go)
        channel.send(self.init_sync, self.plan.init, self.stdio)
        channel.close_fds(self.stdio)
        self.stdio = []

    def fork_init(self) -> None:
        parent_end, child_end = channel.socket_pair()
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            self.listener.close()
            self.bootstrap.close()
            if self.gate is not None:
                os.close(self.gate)
            run_init(
                self.plan.init,
                child_end,
                self.stdio,
                new_cgroup_namespace=self.new_cgroup_namespace,
            )
        child_end.close()
        channel.close_fds(self.stdio)
        self.stdio = []
        self.init_pid = pid
        self.init_sync = parent_end

    def report(self, step: Progress, fds: list[int] | None = None) -> None:
        """Send a creation step to the library, after the launched process named us."""
        if self.gate is not None:
            os.read(self.gate, 1)
            os.close(self.gate)
            self.gate = None
        channel.send(self.bootstrap, step, fds or [])

    def relay_cgroup(self) -> None:
        """Pass the library's word on the container's cgroup to the init (``await_cgroup``)."""
        assert self.init_sync is not None
        step, _ = channel.receive(self.bootstrap, Progress)
        if step.step == "cgroup":
            self.cgroup_procs = [str(p) for p in step.details.get("procs", [])]
        if step.step == "cgroup" and self.adopted:
            return  # moved in by hand_plan
        with contextlib.suppress(OSError):  # an init that failed already said why
            channel.send(self.init_sync, step)

    def relay_creation(self) -> bool:
        """Pass creation steps between init and the library; ``True`` once created.

        With ``autostart``, the start follows at once and its outcome is reported too
        (a failed start still counts as created: the library sees the error).
        """
        assert self.init_sync is not None
        while True:
            try:
                step, fds = channel.receive(self.init_sync, Progress)
            except channel.ChannelClosedError:
                step, fds = Progress("error", error="the container's init died"), []
            if step.step == "overlay" and len(fds) == 1 and self.upper < 0:
                self.upper = fds[0]  # ours to keep, for the library's "upper" requests
                continue
            self.report(step, fds)
            channel.close_fds(fds)
            if step.step == "mounted":
                go, _ = channel.receive(self.bootstrap, Progress)
                channel.send(self.init_sync, go)
                continue
            if step.step != "created":
                return False
            if self.plan.autostart:
                reply = self._start(Request("start", self.plan.init.container_id))
                started = Progress("started")
                if not reply.ok:
                    started = Progress("error", reply.error, reply.error_type, dict(reply.details))
                self.report(started)
            return True

    # -- serving ---------------------------------------------------------------------------

    def serve(self) -> NoReturn:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in _RELAYED_SIGNALS:
            signal.signal(sig, self._relay_signal)
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")
        self.selector.register(self.listener, selectors.EVENT_READ, "listen")
        self.bootstrap.close()
        self._reap()
        while True:
            for key, _ in self.selector.select():
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    self._reap()
                elif key.data == "listen":
                    conn, _ = self.listener.accept()
                    self.selector.register(conn, selectors.EVENT_READ, "conn")
                else:
                    self._handle(key.fileobj)  # type: ignore[arg-type]

    def _relay_signal(self, signum: int, _frame: object) -> None:
        if self.init_pid and self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == self.init_pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif pid in self.execs:
                self._exec_exited(pid, os.waitstatus_to_exitcode(status))
            # Anything else is an orphan the kernel gave us: never ours to report.
        if self.returncode is not None:
            self._finish()

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        pid = self.waiting_on.pop(conn, None)
        if pid is not None:
            with contextlib.suppress(ValueError):
                self.exec_waiters[pid].remove(conn)
        conn.close()

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
        if request.op == "wait":
            if request.pid and request.pid != self.init_pid:
                return self._wait_exec(conn, request.pid, nohang=request.nohang)
            if self.returncode is not None or request.nohang:
                return Reply(True, returncode=self.returncode, pid=self.init_pid)
            self.waiters.append(conn)
            return None
        if request.op == "start":
            return self._start(request)
        if request.op == "signal":
            if request.foreground:
                return self._signal_foreground(request.pid or self.init_pid, request.signal)
            if request.pid and request.pid != self.init_pid:
                return self._signal_exec(request.pid, request.signal, group=request.group)
            self._signal(request.signal, everyone=request.all, group=request.group)
            return Reply(True)
        if request.op == "upper":
            if self.upper < 0:
                error = "the container has no overlay root"
                return Reply(False, error=error, error_type="NoOverlay")
            with contextlib.suppress(OSError):
                channel.send(conn, Reply(True), [self.upper])  # the peer gets its own fd
            return None
        if request.op == "exec":
            reply, pty = self._exec(request, fds)
            try:
                with contextlib.suppress(OSError):
                    channel.send(conn, reply, pty)
            finally:
                channel.close_fds(pty)
            return None
        return Reply(False, error=f"unknown request {request.op!r}", error_type="ProtocolError")

    # -- exec'd processes ------------------------------------------------------------------

    def _exec(self, request: Request, fds: list[int]) -> tuple[Reply, list[int]]:
        """Fork a process that joins the init's namespaces and root and execs ``request.exec``.

        Waits (at most EXEC_START_TIMEOUT) until it exec'd or failed: its status
        socket is close-on-exec. The reply carries its pid, and its pty master.
        """
        plan = request.exec
        if plan is None or len(fds) != (0 if plan.terminal else 3):
            return Reply(False, error="malformed exec request", error_type="ProtocolError"), []
        if self.returncode is not None or not self.init_pid:
            return Reply(False, error="the container's init has exited", error_type="Stopped"), []
        capabilities.last_cap()  # probed once here, not in every child
        if self.cgroup_fds is None:  # opened once: every exec'd child writes to them
            self.cgroup_fds = open_cgroup(self.cgroup_procs)
        cgroup = self.cgroup_fds
        ours, theirs = channel.socket_pair()
        # Blocked across fork: the child must not run our handlers (which signal the init)
        # before it has reset them.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            run_exec(plan, self.init_pid, theirs, fds, mask, cgroup=cgroup)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        with ours:
            return self._await_exec(pid, ours)

    def _await_exec(self, pid: int, status: socket.socket) -> tuple[Reply, list[int]]:
        pty: list[int] = []
        status.settimeout(EXEC_START_TIMEOUT)
        try:
            while True:
                try:
                    step, fds = channel.receive(status, Progress)
                except channel.ChannelClosedError:
                    break  # close-on-exec: the program runs
                if step.step == "pty":
                    channel.close_fds(pty)
                    pty = fds
                    continue
                channel.close_fds(fds + pty)
                self._reap_failed(pid)
                details = {"cause_type": step.error_type}
                return Reply(False, error=step.error, error_type="ExecError", details=details), []
        except (OSError, ValueError) as exc:  # TimeoutError included
            channel.close_fds(pty)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._reap_failed(pid)
            return Reply(
                False, error=f"the process did not start: {exc}", error_type="ExecError"
            ), []
        self.unwaited.pop(pid, None)
        self.waited.pop(pid, None)
        self.execs.add(pid)
        return Reply(True, pid=pid), pty

    @staticmethod
    def _reap_failed(pid: int) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def _exec_exited(self, pid: int, returncode: int) -> None:
        self.execs.discard(pid)
        waiters = self.exec_waiters.pop(pid, [])
        if not waiters:
            self.unwaited[pid] = returncode
            if len(self.unwaited) > UNWAITED_KEPT:
                del self.unwaited[next(iter(self.unwaited))]
            return
        self._remember_waited(pid, returncode)
        for conn in waiters:
            self.waiting_on.pop(conn, None)
            with contextlib.suppress(OSError):
                channel.send(conn, Reply(True, pid=pid, returncode=returncode))

    def _remember_waited(self, pid: int, returncode: int) -> None:
        self.waited[pid] = returncode
        self.waited.move_to_end(pid)
        while len(self.waited) > WAITED_KEPT:
            self.waited.popitem(last=False)

    def _not_ours(self, pid: int) -> Reply:
        container_id = self.plan.init.container_id
        return Reply(
            False,
            error=f'pid {pid} does not belong to container "{container_id}"',
            error_type="ProcessNotFoundError",
            details={"pid": pid},
        )

    def _wait_exec(self, conn: socket.socket, pid: int, *, nohang: bool) -> Reply | None:
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
        return self._not_ours(pid)

    def _signal_exec(self, pid: int, signum: int, *, group: bool) -> Reply:
        """Signal an exec'd process, or its process group (which may outlive it).

        Any other process of the container is signalled too (see :meth:`_signal_member`).
        """
        if pid not in self.execs and pid not in self.unwaited and pid not in self.waited:
            return self._signal_member(pid, signum, group=group)
        try:
            if group:
                os.killpg(pid, signum)
            elif pid in self.execs:  # not reaped yet: the pid is still its own
                os.kill(pid, signum)
            else:
                raise ProcessLookupError
        except ProcessLookupError:
            return self._exited(pid)
        return Reply(True, pid=pid)

    @staticmethod
    def _exited(pid: int, detail: str = "has exited") -> Reply:
        return Reply(
            False,
            error=f"process {pid} {detail}",
            error_type="ProcessNotFoundError",
            details={"pid": pid, "exited": True},
        )

    def _signal_member(self, pid: int, signum: int, *, group: bool) -> Reply:
        """Signal ``pid`` (or with ``group`` its process group) if it is the container's.

        It must be one of :meth:`_member_pids`, never this supervisor. A pidfd
        is opened before the check and the signal goes through it, so a pid
        reused meanwhile is never signalled.
        """
        if pid <= 0 or pid == os.getpid():
            return self._not_ours(pid)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return self._not_ours(pid)
        try:
            if pid not in self._member_pids():
                return self._not_ours(pid)
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

    def _signal_foreground(self, pid: int, signum: int) -> Reply:
        """Signal the foreground process group of the terminal that ``pid`` holds.

        ``pid`` is the init or an exec'd process: each leads a session of its
        own, and with a terminal it is the session's controlling tty. The
        group comes from ``/proc/PID/stat`` (``tpgid``, what ``tcgetpgrp``
        gives); the kernel keeps it within that session, so within the container.
        """
        if pid != self.init_pid and pid not in self.execs:
            if pid in self.unwaited or pid in self.waited:
                return self._exited(pid)
            return self._not_ours(pid)
        if pid == self.init_pid and self.returncode is not None:
            return self._exited(pid)
        group = procfs.foreground_group(pid)
        if group is None:
            info = procfs.read_stat(pid)
            if info is None or info.state in "ZX":
                return self._exited(pid)
            container_id = self.plan.init.container_id
            return Reply(
                False,
                error=f'process {pid} of container "{container_id}" has no controlling terminal',
                error_type="ProcessNotFoundError",
                details={"pid": pid},
            )
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            return self._exited(pid, f"has no foreground process group ({group} is gone)")
        return Reply(True, pid=group)

    def _start(self, request: Request) -> Reply:
        if self.started or self.init_sync is None:
            return Reply(False, error="the container was started already", error_type="State")
        self.started = True
        sync, self.init_sync = self.init_sync, None
        try:
            channel.send(sync, request)
            step, _ = channel.receive(sync, Progress)
        except channel.ChannelClosedError:
            return Reply(True)  # the sync socket closed on exec: the program runs
        finally:
            sync.close()
        # The init exits right after reporting the failure: record its exit before
        # replying, so the caller sees the container stopped once start fails.
        self._await_init()
        return Reply(False, error=step.error, error_type=step.error_type, details=step.details)

    def _await_init(self) -> None:
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(self.init_pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            write_exit_status(self.plan.exit_file, self.returncode, self.init_pid)

    def _signal(self, signum: int, *, everyone: bool, group: bool = False) -> None:
        if self.returncode is not None and not everyone:
            raise ProcessLookupError(errno.ESRCH, "the container's init has exited")
        if everyone and os.getpid() == 1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signum)
        elif everyone:
            for pid in self._member_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
        elif group:
            os.killpg(self.init_pid, signum)
        else:
            os.kill(self.init_pid, signum)

    def _member_pids(self) -> set[int]:
        """The container's processes, as pids of our PID namespace; never this one.

        Its cgroup holds them (daemons that left our subtree included); without a
        cgroup, our descendants (in a PID namespace of our own: all of it).
        """
        pids: set[int] = set()
        try:
            for path in self.cgroup_procs:
                with open(path) as f:
                    pids.update(int(pid) for pid in f.read().split())
        except (OSError, ValueError):
            pids.clear()
        if not pids:
            pids.update(procfs.descendants(os.getpid()))
        return pids - {0, os.getpid()}  # 0: outside our PID namespace; never a process group

    def _finish(self) -> NoReturn:
        assert self.returncode is not None
        write_exit_status(self.plan.exit_file, self.returncode, self.init_pid)
        for conn in self.waiters:
            with contextlib.suppress(OSError):
                channel.send(conn, Reply(True, returncode=self.returncode))
        # Exec'd processes end with the container (with our PID namespace, if we have one;
        # without, here): killed, as their waiters are told.
        for pid in self.execs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for pid, conns in self.exec_waiters.items():
            for conn in conns:
                with contextlib.suppress(OSError):
                    channel.send(conn, Reply(True, pid=pid, returncode=-signal.SIGKILL))
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.plan.control_socket)
        code = self.returncode if self.returncode >= 0 else 128 - self.returncode
        os._exit(code)


def _run_supervisor(
    plan: SandboxPlan,
    bootstrap: socket.socket,
    stdio: list[int],
    gate: int | None,
    *,
    prepared: bool = False,
    ahead: RootAhead | None = None,
) -> NoReturn:
    supervisor = Supervisor(plan, bootstrap, stdio, gate, prepared=prepared)
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
        created = supervisor.relay_creation()
    except BaseException as exc:
        with contextlib.suppress(OSError):
            supervisor.report(error_progress(exc))
        os._exit(1)
    if not created:
        os._exit(1)
    supervisor.serve()


def main(bootstrap_fd: int) -> NoReturn:
    """Entry point of the launched process; ``bootstrap_fd`` is its bootstrap socket."""
    bootstrap = socket.socket(fileno=bootstrap_fd)
    os.set_inheritable(bootstrap_fd, False)
    try:
        plan, stdio = channel.receive(bootstrap, SandboxPlan)
        _enter_namespaces(plan.namespaces)
        gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
    except BaseException as exc:
        with contextlib.suppress(OSError):
            channel.send(bootstrap, error_progress(exc))
        os._exit(1)
    if pid == 0:
        os.close(gate_w)
        _run_supervisor(plan, bootstrap, stdio, gate_r)
    channel.send(bootstrap, _launched(pid))
    os.close(gate_w)
    os._exit(0)


def _launched(pid: int) -> Launched:
    """Name our child ``pid`` for the library; as its parent we read its start time safely."""
    info = procfs.read_stat(pid)
    return Launched(pid, info.start_ticks if info is not None else 0)


class RootAhead:
    """An init building, in a warm sandbox, the root of the plan the fork server saw
    last (see :func:`sandboxrt._proc.init.speculate`): a run of containers from one
    bundle then finds its root built."""

    def __init__(self, hint: InitPlan, close: Sequence[int]) -> None:
        ours, theirs = channel.socket_pair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            channel.close_fds(close)
            speculate(hint, theirs)
        theirs.close()
        self.hint, self.pid, self.sync = hint, pid, ours
        self.outcome: Progress | None = None
        #: An fd on the upper directory of the overlay root it built (an overlay plan), or -1.
        self.upper = -1

    @classmethod
    def start(cls, hint: bytes | None, close: Sequence[int]) -> RootAhead | None:
        """Build ahead for ``hint`` (an encoded :class:`SandboxPlan`), if it suits."""
        if not hint:
            return None
        try:
            plan = decode(hint, SandboxPlan)
        except ValueError:
            return None
        if not is_warm_shape(plan.namespaces) or plan.init.pause_for_hooks:
            return None  # hooks see the root being built: never ahead
        return cls(plan.init, close)

    def serves(self, plan: InitPlan) -> bool:
        """Whether the root built ahead is the one ``plan`` asks for, from the same host
        files (compared with what this mount namespace, made just now, sees)."""
        if plan.root_key() != self.hint.root_key():
            return False
        ready = self.finish()
        return ready.step == "ready" and ready.details.get("identities") == root_identities(plan)

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


def warm(link: socket.socket, hint: bytes | None = None) -> NoReturn:
    """Make a sandbox ahead of its plan, for the fork server to hand a launch to.

    Runs in a fresh child of the fork server: enters the namespaces of
    :data:`WARM_NAMESPACES`, forks the future supervisor (PID 1), sends its
    host pid on ``link`` and exits. The supervisor starts building the root
    of ``hint`` (:class:`RootAhead`), and waits on ``link`` for a launch
    request carrying the bootstrap socket and log fd; end of stream (the fork
    server went away) makes it exit. After the request it waits for ``link``
    to close, the sign that the library was told its pid. The root built
    ahead serves if the request says the host's mounts did not change
    meanwhile and :meth:`RootAhead.serves` the plan; else it is dropped.
    """
    try:
        # Not the mount namespace yet: made at claim time, it sees the host's mounts as
        # they are then (a rootfs mounted after the warm-up, say), not a stale copy.
        syscalls.unshare(sum(abi.NAMESPACE_FLAGS[k] for k in WARM_NAMESPACES - {"mount"}))
        pid = os.fork()
    except BaseException:
        os._exit(1)
    if pid != 0:
        channel.send(link, _launched(pid))
        os._exit(0)
    syscalls.set_process_name("sandboxrt-warm")
    ahead: RootAhead | None = None
    try:
        _prepare_namespaces({"network"})
        ahead = RootAhead.start(hint, [link.fileno()])
        request, fds = channel.receive(link, Request)
        link.recv(1)  # end of stream: the fork server told the library our pid
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
        _unshare_private(0)
        _prepare_namespaces({"pid"})
        if ahead is not None and not (request.speculation and ahead.serves(plan.init)):
            ahead.discard()
            ahead = None
    except BaseException as exc:
        with contextlib.suppress(OSError):
            channel.send(bootstrap, error_progress(exc))
        os._exit(1)
    _run_supervisor(plan, bootstrap, stdio, None, prepared=True, ahead=ahead)
