"""``Process``: a process exec'd into a container, used like ``subprocess.Popen``;
``ProcessInfo``: a process of a container as ``runc ps`` lists it.

Made by :meth:`sandboxrt.Container.exec`. Everything goes through the
sandbox's control socket, so any process that can load the container can
exec into it; a :class:`Process` waits for and signals its own process only.

Pids are those of the sandbox's PID namespace (where the supervisor is 1),
as ``runsc`` numbers them: ``Process.pid``, ``Container.wait_pid``,
``Container.signal_process`` and ``ProcessInfo.pid`` agree;
``ProcessInfo.host_pid`` is the same process on the host.
"""

from __future__ import annotations

import os
import signal as _signal
import socket
import threading
import warnings
import weakref
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import IO, Any

import attrs

from sandboxrt._communicate import Communication
from sandboxrt._os import procfs
from sandboxrt._seconds import deadline_after, wait_seconds
from sandboxrt._signals import signal_number
from sandboxrt._stdio import close_streams
from sandboxrt.errors import (
    ContainerNotFoundError,
    ProcessNotFoundError,
    ProcessTimeoutError,
    SandboxDiedError,
    SandboxrtError,
)
from sandboxrt.sandbox import ANSWER_TIMEOUT, Sandbox

__all__ = ["Process", "ProcessInfo", "process_infos"]

#: How often :meth:`Process.communicate` looks whether the exec's deadline killed it.
_DEADLINE_POLL = 0.05


class Process:
    """A process running in a container, exec'd by :meth:`sandboxrt.Container.exec`.

    Like :class:`subprocess.Popen`: ``pid`` (in the container's PID namespace),
    ``args``, ``returncode``, :meth:`poll`, :meth:`wait`, :meth:`communicate`,
    :meth:`send_signal`, :meth:`terminate`, :meth:`kill`, the ``stdin``,
    ``stdout`` and ``stderr`` streams asked for with ``PIPE``, and use as a
    context manager (closes the streams, then waits). With a terminal,
    ``console`` is the pty master (read and write), and :meth:`communicate`
    reads it as stdout.

    Timeouts raise :class:`sandboxrt.ProcessTimeoutError`, which is also a
    :class:`subprocess.TimeoutExpired`. A ``wait(timeout)`` or
    ``communicate(timeout=...)`` that runs out leaves the process running, as
    with ``Popen``. The exec's own ``timeout`` is a deadline: if the process
    has not been seen to exit by then, it and its process group (what it
    forked, unless that left the group) are SIGKILLed, whether anyone waits
    or not, and :meth:`wait` and :meth:`communicate` raise the error with
    ``killed`` set (``timed_out`` is ``True``, ``returncode`` usually ``-9``;
    :meth:`communicate` then returns what it read so far, without waiting for
    the end of output a process out of the group holds open). The deadline is
    kept by the calling process: a ``Process`` dropped (garbage-collected)
    before it drops it, and a caller that dies takes it along (the process runs
    on, as a container outlives a caller that dies, but ``Container.run``'s).
    """

    def __init__(
        self,
        *,
        container_id: str,
        sandbox: Sandbox,
        pid: int,
        args: Sequence[str],
        stdin: IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
        stderr: IO[bytes] | None = None,
        console: IO[bytes] | None = None,
        timeout: float | None = None,
        connection: socket.socket | None = None,
        serial: int = 0,
    ) -> None:
        self.container_id = container_id
        self.pid = pid
        #: The exec's serial: the supervisor tells it from a later exec given its pid.
        self._serial = serial
        self.args = list(args)
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        #: The pty master, when the process was exec'd with ``tty=True``.
        self.console = console
        self.returncode: int | None = None
        #: The exec's ``timeout``: the deadline of the process and its process group.
        self.timeout = timeout
        #: The exec's ``timeout`` expired and the process group was killed.
        self.timed_out = False
        self._sandbox = sandbox
        self._communication = Communication(
            container_id, stdin=stdin, stdout=stdout, stderr=stderr, console=console
        )
        self._timer: threading.Timer | None = None
        #: Held by the deadline while it kills, so a wait sees ``timed_out`` settled.
        self._expiring = threading.Lock()
        #: The fd of the connection the exec went on, for waits (one at a time:
        #: ``_connection_lock``). An fd, not a socket: closed by ``__del__`` whatever the
        #: order in which a garbage cycle is finalized.
        self._connection = connection.detach() if connection is not None else -1
        self._connection_lock = threading.Lock()
        #: The process whose connection and locks these are (see :meth:`_forked`).
        self._owner = os.getpid()
        if timeout is not None:
            # Through a weak reference: a Process dropped before its deadline is freed (its
            # fd closed), and its deadline dropped, as a dropped Popen leaves its child be.
            self._timer = threading.Timer(timeout, _expire_if_kept, [weakref.ref(self)])
            self._timer.daemon = True
            self._timer.start()

    def __repr__(self) -> str:
        return (
            f"Process(container={self.container_id!r}, pid={self.pid}, args={self.args!r}, "
            f"returncode={self.returncode})"
        )

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        close_streams(self.stdin, self.stdout, self.stderr, self.console)
        try:
            self.wait()
        except ProcessTimeoutError as error:
            if not error.killed:
                raise

    # -- status ------------------------------------------------------------------------

    def __del__(self, _warn: Any = warnings.warn) -> None:
        self._close_connection()
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()  # (its thread ends now, not at the deadline)
        if getattr(self, "returncode", 0) is None:  # (as Popen: never waited for)
            _warn(f"process {self.pid} of container {self.container_id!r} is still running",
                  ResourceWarning, source=self)  # fmt: skip

    def _close_connection(self) -> None:
        fd, self._connection = getattr(self, "_connection", -1), -1
        if fd >= 0:
            os.close(fd)

    def _wait_status(self, timeout: float | None = None, *, nohang: bool = False) -> int | None:
        """The exit status, from the supervisor; a container destroyed meanwhile (a pod's
        container: its sandbox lives on) took its processes with it: ``-SIGKILL``."""
        if self._owner != os.getpid():
            self._forked()
        try:
            return self._ask_status(timeout, nohang=nohang)
        except ContainerNotFoundError:
            return -_signal.SIGKILL

    def _forked(self) -> None:
        """Used in a child the caller forked: the exec's connection is the parent's (a
        question asked on it would take the parent's answer), and a lock another thread
        held at the fork stays held here for ever. Ask on new connections, with new
        locks."""
        fd, self._connection = self._connection, -1
        if fd >= 0:
            os.close(fd)  # (this process's copy: the parent's stays open)
        self._connection_lock = threading.Lock()
        self._expiring = threading.Lock()
        self._owner = os.getpid()

    def _ask_status(self, timeout: float | None = None, *, nohang: bool = False) -> int | None:
        """Ask the supervisor for the exit status, on the exec's connection when it is free
        (a timed-out wait leaves it unusable: closed), else on a new one."""
        if self._connection < 0 or not self._connection_lock.acquire(blocking=False):
            return self._sandbox.wait_process(
                self.container_id, self.pid, timeout, nohang=nohang, serial=self._serial
            )
        try:
            connection = None
            if self._connection >= 0:
                kind = socket.SOCK_SEQPACKET
                connection = socket.socket(socket.AF_UNIX, kind, 0, self._connection)
            try:
                code = self._sandbox.wait_process(
                    self.container_id,
                    self.pid,
                    timeout,
                    nohang=nohang,
                    connection=connection,
                    serial=self._serial,
                )
            except BaseException:
                if connection is not None:
                    connection.detach()
                self._close_connection()
                raise
            if connection is not None:
                connection.detach()
            if code is not None:
                self._close_connection()  # nothing more to ask about
            return code
        finally:
            self._connection_lock.release()

    def poll(self) -> int | None:
        """The exit status if the process has exited, else ``None``."""
        return self._polled()

    def _polled(self, answer_timeout: float | None = None) -> int | None:
        """:meth:`poll`, the supervisor's answer waited for ``answer_timeout`` at most."""
        if self.returncode is None:
            code = self._wait_status(answer_timeout, nohang=True)
            if code is not None:
                self._exited(code)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; its exit status (``-N``: killed by signal N).

        Raises :class:`ProcessTimeoutError` after ``timeout`` seconds (the
        process keeps running), or once the exec's own timeout killed it.
        """
        timeout = wait_seconds(self.container_id, timeout)
        if self.returncode is None:
            try:
                code = self._wait_status(timeout)
            except TimeoutError:
                raise ProcessTimeoutError(
                    self.container_id, self.args, timeout or 0.0, pid=self.pid
                ) from None
            assert code is not None
            self._exited(code)
        assert self.returncode is not None
        if self.timed_out:
            raise self._killed_error()
        return self.returncode

    def _exit_status_if_known(self) -> int | None:
        """:meth:`poll` with a bound on the answer; ``None`` when the sandbox cannot say."""
        try:
            return self._polled(ANSWER_TIMEOUT)
        except (SandboxrtError, OSError):  # (a TimeoutError too)
            return None

    def _exited(self, returncode: int) -> None:
        with self._expiring:
            self.returncode = returncode
        if self._timer is not None:
            self._timer.cancel()  # its group is left alone once it has exited

    def _killed_error(
        self, output: bytes | None = None, stderr: bytes | None = None
    ) -> ProcessTimeoutError:
        return ProcessTimeoutError(
            self.container_id,
            self.args,
            self.timeout or 0.0,
            pid=self.pid,
            output=output,
            stderr=stderr,
            killed=True,
        )

    def _expire(self) -> None:
        """The exec's deadline: SIGKILL the process's group (the process and its forks)."""
        with self._expiring:
            if self.returncode is not None:
                return
            try:  # exited in time, unseen by anyone: nothing to kill, no time-out
                code = self._wait_status(nohang=True)
            except (SandboxrtError, OSError):
                code = None
            if code is not None:
                self.returncode = code
                return
            try:
                self._sandbox.signal_process(
                    self.container_id, self.pid, _signal.SIGKILL, group=True, serial=self._serial
                )
            except (SandboxrtError, OSError):
                return  # it had exited, or the sandbox is gone and the process with it
            self.timed_out = True

    # -- signals -----------------------------------------------------------------------

    def send_signal(self, sig: int | str, *, group: bool = False, foreground: bool = False) -> None:
        """Send ``sig`` to the process, or with ``group`` to its whole process group, or
        with ``foreground`` to the foreground process group of its terminal (``tty=True``;
        like ``runsc kill --fg``: a shell's running job, not the shell).

        Does nothing once the process is known to have exited (a group may
        outlive its leader: ``group=True`` still reaches it then).
        """
        number = signal_number(sig, self.container_id)
        if self.returncode is not None and not group:
            return
        try:
            self._sandbox.signal_process(
                self.container_id,
                self.pid,
                number,
                group=group,
                foreground=foreground,
                serial=self._serial,
            )
        except ProcessNotFoundError as error:
            if not error.exited:
                raise
        except (SandboxDiedError, ContainerNotFoundError):
            pass  # gone with its sandbox, or with its container (destroyed)

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.send_signal(_signal.SIGTERM)

    def kill(self, *, group: bool = False) -> None:
        """Send SIGKILL (to the process group too with ``group``)."""
        self.send_signal(_signal.SIGKILL, group=group)

    # -- communicating -----------------------------------------------------------------

    def communicate(
        self, input: bytes | None = None, timeout: float | None = None
    ) -> tuple[bytes | None, bytes | None]:
        """Send ``input``, read stdout and stderr to their end, wait; ``(stdout, stderr)``.

        Like ``Popen.communicate``: the pipes are served together (one
        selector), so neither side can fill up and block the other, whatever
        the size. Each output is ``None`` unless it is a pipe (the console
        counts as stdout). After a :class:`ProcessTimeoutError` (which carries
        the output so far) it may be called again to go on. On a terminal
        (``tty=True``) the input ends as its user ends it: with the end-of-file
        character (``^D``).
        """
        timeout = wait_seconds(self.container_id, timeout)
        deadline = deadline_after(timeout)

        def timed_out() -> ProcessTimeoutError:
            if self.timed_out:  # (its own deadline killed it meanwhile)
                return self._killed_error()
            return ProcessTimeoutError(
                self.container_id,
                self.args,
                timeout or 0.0,
                pid=self.pid,
                returncode=self._exit_status_if_known(),
            )

        # Killed at its deadline, what a process out of its group holds may never end.
        given_up = (lambda: self.timed_out) if self._timer is not None else None
        return self._communication.communicate(
            input,
            deadline,
            wait=self.wait,
            timed_out=timed_out,
            given_up=given_up,
            poll=_DEADLINE_POLL,
        )


def _expire_if_kept(process: weakref.ref[Process]) -> None:
    kept = process()
    if kept is not None:
        kept._expire()


@attrs.frozen
class ProcessInfo:
    """One process of a container, as ``runc ps`` lists it (:meth:`Container.processes`)."""

    #: Its pid in the sandbox's PID namespace (what ``Process.pid`` and ``wait_pid`` use).
    pid: int
    #: Its pid on the host (in the caller's PID namespace).
    host_pid: int
    #: Its parent's pid in the sandbox's PID namespace: 1 is the supervisor; 0 a parent
    #: outside the namespace.
    ppid: int
    #: Its effective uid.
    uid: int
    #: The kernel's state letter: ``R`` running, ``S`` sleeping, ``Z`` zombie...
    state: str
    #: User plus system CPU time, in seconds.
    cpu_time: float
    #: Its command line (empty for a zombie).
    command: tuple[str, ...]
    #: Its name as the kernel keeps it (``comm``, 15 characters at most).
    name: str


def process_infos(host_pids: Iterable[int], supervisor_pid: int | None) -> list[ProcessInfo]:
    """The processes ``host_pids`` (host pids) as seen from the sandbox of the supervisor
    ``supervisor_pid`` (left out; ``None`` when gone), sorted by pid. Vanished ones are skipped."""
    level = 0  # the index of the sandbox's PID namespace in NSpid lists
    supervisor = procfs.read_process(supervisor_pid) if supervisor_pid is not None else None
    if supervisor is not None:
        level = len(supervisor.nspid) - 1
    entries = {
        pid: entry
        for pid in set(host_pids) - {supervisor_pid, 0}
        if (entry := procfs.read_process(pid)) is not None and len(entry.nspid) > level
    }

    def in_sandbox(host_pid: int) -> int:
        parent = entries.get(host_pid) or procfs.read_process(host_pid)
        return parent.nspid[level] if parent is not None and len(parent.nspid) > level else 0

    ticks = os.sysconf("SC_CLK_TCK")
    found = [
        ProcessInfo(
            pid=entry.nspid[level],
            host_pid=pid,
            ppid=in_sandbox(entry.ppid),
            uid=entry.uid,
            state=entry.state,
            cpu_time=entry.cpu_ticks / ticks,
            command=entry.cmdline,
            name=entry.name,
        )
        for pid, entry in entries.items()
    ]
    return sorted(found, key=lambda info: info.pid)
