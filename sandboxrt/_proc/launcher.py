"""How a sandbox's first process is started: the ``Launcher`` seam.

The default launcher starts a fresh interpreter (never a fork of the
caller, which may be multi-threaded) that runs only the standard library and
sandboxrt's stdlib-only modules. A host application may pass its own.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import resource
import select
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import sandboxrt
from sandboxrt._core.protocol import Launched, Request
from sandboxrt._forksafe import ForkSafeLock
from sandboxrt._os import channel
from sandboxrt.errors import SandboxrtError

__all__ = [
    "ForkServerLauncher",
    "GoferLauncher",
    "LaunchedProcess",
    "Launcher",
    "SubprocessLauncher",
    "default_launcher",
    "python_command",
]


@runtime_checkable
class LaunchedProcess(Protocol):
    """The launched process; it exits as soon as it forked the supervisor."""

    @property
    def pid(self) -> int:
        """Its pid on the host."""
        ...

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to exit (as ``Popen.wait``); its exit status."""
        ...


@runtime_checkable
class Launcher(Protocol):
    """Starts a process that runs ``sandboxrt._proc.supervisor.main(fd)``.

    ``bootstrap_fd`` must reach the process under the same number; ``log_fd``
    becomes its stderr; it gets nothing else from the caller. ``warm`` says
    the sandbox wants exactly the namespaces of a warm sandbox
    (``warm.WARM_NAMESPACES``), so a launcher that keeps one ready may
    use it; others ignore it. A launcher may also have a ``settle()`` method,
    which the library calls once the operation that launched (a ``create``, a
    ``run``) is over: the moment for work done for the next launch (see
    :meth:`ForkServerLauncher.settle`).
    """

    def launch(self, *, bootstrap_fd: int, log_fd: int, warm: bool = False) -> LaunchedProcess:
        """Start the sandbox's process (see the class); it, as started."""
        ...


def python_command(module: str, function: str, fd: int, python: str | None = None) -> list[str]:
    """The argv of a fresh, isolated interpreter (no site, no environment) that
    runs ``module.function(fd)`` from this copy of sandboxrt."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(sandboxrt.__file__)))
    code = (
        f"import sys; sys.path.insert(0, {package_parent!r}); "
        f"from {module} import {function}; {function}(int(sys.argv[1]))"
    )
    return [python or sys.executable, "-I", "-S", "-c", code, str(fd)]


class SubprocessLauncher:
    """Launches with :class:`subprocess.Popen` (safe from threaded callers): ``python``
    (default: this interpreter), after ``prefix``, a command that runs the rest of its
    argv (a wrapper such as ``taskset -c 1``, ``systemd-run --scope`` or ``unshare``)."""

    def __init__(
        self, python: str | os.PathLike[str] | None = None, *, prefix: Sequence[str] = ()
    ) -> None:
        self.python = None if python is None else os.fspath(python)
        self.prefix = list(prefix)

    def launch(self, *, bootstrap_fd: int, log_fd: int, warm: bool = False) -> LaunchedProcess:
        """Start a process that runs ``sandboxrt._proc.supervisor.main(bootstrap_fd)``."""
        return self._start("sandboxrt._proc.supervisor", bootstrap_fd, log_fd)

    def launch_gofer(self, *, bootstrap_fd: int, log_fd: int) -> LaunchedProcess:
        """Start a process that runs ``sandboxrt._proc.gofer.main(bootstrap_fd)``."""
        return self._start("sandboxrt._proc.gofer", bootstrap_fd, log_fd)

    def _start(self, module: str, bootstrap_fd: int, log_fd: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*self.prefix, *python_command(module, "main", bootstrap_fd, self.python)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_fd,
            pass_fds=(bootstrap_fd,),
            close_fds=True,
            start_new_session=True,
        )


def _mounts_changed(watch: int) -> bool:
    """Whether the mount table changed since ``watch`` (an fd on ``mountinfo``) was
    opened or last polled (the kernel reports a change once, as ``POLLPRI``)."""
    poll = select.poll()
    poll.register(watch, select.POLLPRI | select.POLLERR)
    return any(event & (select.POLLPRI | select.POLLERR) for _, event in poll.poll(0))


class _ForkedProcess:
    """A process the fork server started; the fork server reaps it (pid unknown here)."""

    pid = 0

    def wait(self, timeout: float | None = None) -> int:
        return 0


class ForkServerLauncher:
    """Launches by asking a pre-started, single-threaded fork server to fork.

    The server is started on first use (a fresh interpreter, so this is safe
    from threaded callers) and serves this process until it exits. A launch
    costs a fork instead of an interpreter start. With ``build_ahead`` its warm
    sandbox also builds the root of the last plan ahead of the next launch (see
    docs/decisions.md, 17 and 63): about 2 ms off each of a run of containers
    from one bundle, for a bundle nothing changes meanwhile. A root built ahead
    is the rootfs as it was then: a file made since at a masked or read-only
    path, a device node removed, a mount point's mode, an overlay's lower layer
    are not seen again. Off by default.
    """

    def __init__(
        self, python: str | os.PathLike[str] | None = None, *, build_ahead: bool = False
    ) -> None:
        self.python = None if python is None else os.fspath(python)
        self.build_ahead = build_ahead
        self._lock = ForkSafeLock()
        self._sock: socket.socket | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._owner = 0
        #: Where the fork server puts its warm gofers (a ``Launched`` with the gofer's
        #: bootstrap socket each), apart from its warm sandboxes.
        self._gofer_sock: socket.socket | None = None
        #: We took a warm gofer and have not told the fork server yet.
        self._gofer_owed = False
        #: We launched in a warm sandbox and have not told the fork server yet: the
        #: plan it was for (the next one's hint), until :meth:`settle`.
        self._prewarm_owed: tuple[bytes | None] | None = None
        #: The fork server was asked for a warm sandbox (a gofer) that has not come yet:
        #: it sends one, or an empty ``Launched`` if it could not fork.
        self._warm_coming = False
        self._gofer_coming = False
        #: When :meth:`settle` was last called (``time.monotonic()``).
        self._settled_at = -math.inf
        #: Our NOFILE limits when the fork server started (its processes have them).
        self._limits: tuple[int, int] | None = None
        self._closes_at_exit = False
        _LAUNCHERS.add(self)

    def _forget_parent(self) -> None:
        """In a child this process forked: the fork server and its sockets are the
        parent's (the child starts its own, and must not keep the parent's sockets open:
        the parent's fork server would live on, and the parent's exit wait, for it)."""
        for sock in (self._sock, self._gofer_sock):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()  # (our copy: the parent's stays open)
        self._sock = self._gofer_sock = self._server = None
        self._gofer_owed = self._warm_coming = self._gofer_coming = False
        self._prewarm_owed = None

    def _connection(self) -> socket.socket:
        alive = self._server is not None and self._server.poll() is None
        # Its processes have the fd limits we had when it started: limits raised since
        # (after running out, say) need a new fork server, or it stays short of fds.
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        raised = self._limits is not None and (
            limits[0] > self._limits[0] or limits[1] > self._limits[1]
        )
        mine = self._sock is not None and self._owner == os.getpid()
        if mine and alive and not raised:
            assert self._sock is not None
            return self._sock
        self.close()
        self._limits = limits
        try:
            ours, theirs = channel.socket_pair()
        except OSError as exc:  # (out of fds, say)
            raise SandboxrtError(f"cannot start the sandbox fork server: {exc}") from exc
        with theirs:
            try:
                self._server = subprocess.Popen(
                    python_command(
                        "sandboxrt._proc.forkserver", "serve", theirs.fileno(), self.python
                    ),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as exc:
                ours.close()
                raise SandboxrtError(f"cannot start the sandbox fork server: {exc}") from exc
        self._sock, self._owner = ours, os.getpid()
        self._warm_coming = True  # (it makes one as it starts)
        self._gofer_owed = False
        self._prewarm_owed = None
        if not self._closes_at_exit:  # (its sockets and process end with ours, quietly)
            atexit.register(_close_at_exit, weakref.ref(self))
            self._closes_at_exit = True
        gofers, theirs = channel.socket_pair()
        with theirs, contextlib.suppress(OSError):
            channel.send(ours, Request("gofers"), [theirs.fileno()])
            self._gofer_sock = gofers
            self._gofer_coming = True
        return ours

    def launch(self, *, bootstrap_fd: int, log_fd: int, warm: bool = False) -> LaunchedProcess:
        """Have the fork server start the sandbox's process (a warm one when ``warm``
        and one is ready)."""
        with self._lock:
            sock = self._connection()
            self._settle_sandbox(sock)  # (owed by a launch whose caller never settled)
            if warm and self._launch_warm(sock, bootstrap_fd, log_fd):
                return _ForkedProcess()
            launch = Request("launch", all=warm, speculation=self.build_ahead)
            self._send(sock, launch, bootstrap_fd, log_fd)
            # Launched cold, it forks a warm sandbox next, unless it gave us one we did
            # not report used (then it makes none until we do).
            if warm and self._prewarm_owed is None:
                self._warm_coming = True
        return _ForkedProcess()

    def _launch_warm(self, sock: socket.socket, bootstrap_fd: int, log_fd: int) -> bool:
        """Hand the launch to the warm sandbox the fork server sent us, if one came;
        ``False`` if there is none that takes it (then launch cold).

        The plan waits on the bootstrap socket: read by the warm sandbox, and
        peeked here first for the fork server, whose next warm sandbox builds
        its root ahead. The warm sandbox reads its plan once its link closes, so
        that the :class:`Launched` we put on the bootstrap socket comes first.
        """
        warm = self._take_warm(sock)
        if warm is None:
            return False
        launched, link, watch = warm
        hint: bytes | None = None
        try:
            # (all that can fail for want of fds first, before the launch request goes)
            with link, socket.socket(fileno=os.dup(bootstrap_fd)) as bootstrap:
                hint = channel.peek(bootstrap_fd) if self.build_ahead else None
                unchanged = watch >= 0 and not _mounts_changed(watch)
                channel.send(link, Request("launch", speculation=unchanged), [bootstrap_fd, log_fd])
                channel.send(bootstrap, launched)
            return True
        except OSError:
            return False  # it died meanwhile: nothing reached the bootstrap socket
        finally:
            # Owed from the moment it was taken, even on a failure: the fork server makes
            # no other until we report it used.
            channel.close_fds([watch])
            self._prewarm_owed = (hint,)
            if time.monotonic() - self._settled_at < BACK_TO_BACK:
                self._settle(sock)  # launches come in a stream: the next needs it soon

    def _take_warm(self, sock: socket.socket) -> tuple[Launched, socket.socket, int] | None:
        """The warm sandbox the fork server sent on ``sock``; one it is making is waited
        for (it would fork a cold launch only after it anyway)."""
        found = _receive_now(sock, self, WARM_WAIT if self._warm_coming else 0.0)
        self._warm_coming = False
        if found is None:
            return None
        launched, fds = found
        if launched is None:  # one came, lost: until told, the fork server makes no other
            self._prewarm_owed = (None,)
            return None
        if not fds:
            return None  # it could not fork one, and knows it
        link = socket.socket(fileno=fds[0])
        return launched, link, fds[1] if len(fds) > 1 else -1

    def take_gofer(self) -> socket.socket | None:
        """A warm gofer's bootstrap socket (the gofer waits there for
        ``GoferPrepare``), if the fork server sent one (or is making it); it forks the
        next at the :meth:`settle` that ends the operation it was taken for."""
        with self._lock:
            sock = self._connection()
            self._settle_gofer(sock)  # one taken before, and never settled
            if self._gofer_sock is None:
                return None
            found = _receive_now(self._gofer_sock, self, WARM_WAIT if self._gofer_coming else 0.0)
            self._gofer_coming = False
            if found is None:
                return None
            # Asked for another at the next settle, also where none came that works (it
            # could not fork one, or the one that came was lost).
            self._gofer_owed = True
            launched, fds = found
            return socket.socket(fileno=fds[0]) if launched is not None and fds else None

    def settle(self) -> None:
        """The operation that launched (a ``create``, a ``run``) is over: the fork server
        may now make the next warm gofer and sandbox. Put off until now, their work
        would take the CPU from the container being made (decision 53)."""
        with self._lock:
            self._settled_at = time.monotonic()
            if self._sock is not None and self._owner == os.getpid():
                self._settle(self._sock)

    def _settle(self, sock: socket.socket) -> None:
        self._settle_gofer(sock)  # first: a creation wants its gofer first
        self._settle_sandbox(sock)

    def _settle_sandbox(self, sock: socket.socket) -> None:
        if self._prewarm_owed is not None:
            (hint,), self._prewarm_owed = self._prewarm_owed, None
            self._prewarm(sock, hint)

    def _settle_gofer(self, sock: socket.socket) -> None:
        """Tell the fork server we took its warm gofer (it forks the next), if we did."""
        if self._gofer_owed:
            self._gofer_owed = False
            with contextlib.suppress(OSError, ValueError):
                channel.send(sock, Request("prewarm-gofer"))
                self._gofer_coming = True

    def _prewarm(self, sock: socket.socket, hint: bytes | None) -> None:
        """Tell the fork server we used its warm sandbox; ``hint`` is the plan for the
        next one to build the root of ahead."""
        with contextlib.suppress(OSError, ValueError):
            channel.send(sock, Request("prewarm", speculation=hint is not None))
            if hint is not None:
                channel.send_bytes(sock, hint)
            self._warm_coming = True

    def launch_gofer(self, *, bootstrap_fd: int, log_fd: int) -> LaunchedProcess:
        """Have the fork server fork a process that runs ``sandboxrt._proc.gofer.main``."""
        return self._ask(Request("gofer"), bootstrap_fd, log_fd)

    def _ask(self, request: Request, bootstrap_fd: int, log_fd: int) -> LaunchedProcess:
        with self._lock:
            self._send(self._connection(), request, bootstrap_fd, log_fd)
        return _ForkedProcess()

    def _send(self, sock: socket.socket, request: Request, bootstrap_fd: int, log_fd: int) -> None:
        try:
            channel.send(sock, request, [bootstrap_fd, log_fd])
        except OSError as exc:
            self.close()
            raise SandboxrtError(f"the sandbox fork server failed: {exc}") from exc

    def start(self) -> None:
        """Start the fork server now rather than at the first launch (a no-op while it
        runs); its connection stays open until :meth:`close`."""
        with self._lock:
            self._connection()

    def close(self) -> None:
        """Stop the fork server (sandboxes it launched live on)."""
        if self._gofer_sock is not None and self._owner == os.getpid():
            self._gofer_sock.close()
        self._gofer_sock = None
        if self._sock is not None and self._owner == os.getpid():
            self._sock.close()
            if self._server is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._server.wait(timeout=10.0)
        self._sock = None
        self._server = None


def _close_at_exit(launcher: weakref.ref[ForkServerLauncher]) -> None:
    kept = launcher()
    if kept is not None:
        kept.close()


#: How long a launch waits for a warm sandbox or gofer the fork server is making.
WARM_WAIT = 2.0
#: A launch this soon (seconds) after the last operation's :meth:`ForkServerLauncher.settle`
#: is taken for one of a stream: the fork server makes the next warm sandbox at once,
#: as the next launch will want it before a put-off one would be ready (decision 53).
BACK_TO_BACK = 0.025


def _receive_now(
    sock: socket.socket, launcher: ForkServerLauncher, wait: float = 0.0
) -> tuple[Launched | None, list[int]] | None:
    """A ``Launched`` the fork server sent on ``sock``, if one is there now or within
    ``wait`` seconds (without fds: it could not fork the process asked for); ``(None,
    [])`` for one that came unusable (its fds cut off for want of fds of ours, say),
    whose process is lost; a broken fork server is closed and reported."""
    if wait > 0:
        sock.settimeout(wait)
    else:
        sock.setblocking(False)
    try:
        launched: Launched | None
        launched, fds = channel.receive(sock, Launched)
    except (BlockingIOError, TimeoutError):
        launched, fds = None, None
    except ValueError:  # taken all the same: the fork server counts it as ours
        launched, fds = None, []
    except OSError as exc:
        launcher.close()  # (which closes ``sock``)
        raise SandboxrtError(f"the sandbox fork server failed: {exc}") from exc
    finally:
        if sock.fileno() >= 0:
            sock.setblocking(True)
    return None if fds is None else (launched, fds)


_LAUNCHERS: weakref.WeakSet[ForkServerLauncher] = weakref.WeakSet()


def _forget_parents() -> None:
    for launcher in list(_LAUNCHERS):
        launcher._forget_parent()


os.register_at_fork(after_in_child=_forget_parents)

_default: ForkServerLauncher | None = None
_default_lock = ForkSafeLock()


@runtime_checkable
class GoferLauncher(Protocol):
    """A :class:`Launcher` that can also start a container's gofer: a process that runs
    ``sandboxrt._proc.gofer.main(bootstrap_fd)`` (same rules as ``launch``). For a
    launcher without it, gofers start with :class:`SubprocessLauncher`."""

    def launch_gofer(self, *, bootstrap_fd: int, log_fd: int) -> LaunchedProcess: ...


def default_launcher() -> Launcher:
    """The process-wide launcher used when none is given: a fork server."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ForkServerLauncher()
        return _default
