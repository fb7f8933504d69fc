"""A pre-started, single-threaded process that forks sandboxes on request.

A fresh interpreter costs milliseconds and the supervisor's imports as many
again; forking this already-warm process costs a fraction of one. It is a
child subreaper, so supervisors whose launched parent exited become its
children and are reaped the moment they exit. It ends when the library's end
of its socket closes. Standard library only.
"""

from __future__ import annotations

import contextlib
import gc
import os
import selectors
import signal
import socket
from collections.abc import Callable
from typing import NoReturn

from sandboxrt._core import abi
from sandboxrt._core.protocol import Launched, Request
from sandboxrt._os import capabilities, channel, mounts, procfs, syscalls
from sandboxrt._proc import gofer, supervisor, warm
from sandboxrt._proc.entry import reset_inherited_signals

__all__ = ["serve"]


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child() -> None:
    """Reset a freshly forked child: its own session, default signals, stdio on /dev/null."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


class _Server:
    """The fork server's state: its socket, and at most one warm sandbox.

    A warm sandbox is given to the library as soon as it is forked (see
    :meth:`prewarm`), which hands it a launch itself; the library's ``prewarm``
    request says it took one, and carries the plan for the next one to build
    the root of ahead (``warm.RootAhead``).
    """

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.selector = selectors.DefaultSelector()
        #: The pipe our signal handlers wake the selector through.
        self.wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        #: A warm sandbox was given to the library, which has not said it used it.
        self.given = False
        #: A warm gofer was given to the library, which has not said it took it.
        self.given_gofer = False
        #: Where warm gofers go (the library's ``gofers`` request brings it).
        self.gofer_channel: socket.socket | None = None
        self.warm_flags = sum(abi.NAMESPACE_FLAGS[k] for k in warm.WARM_UNSHARED)
        #: Our own namespaces of those kinds (and our PID namespace as our children's).
        self.own_namespaces = [
            (
                os.open(f"/proc/self/ns/{_NS_FILES[kind]}", os.O_RDONLY | os.O_CLOEXEC),
                abi.NAMESPACE_FLAGS[kind],
            )
            for kind in sorted(warm.WARM_UNSHARED)
        ]
        #: The encoded plan of the last warm launch.
        self.hint: bytes | None = None

    def forget(self) -> None:
        """In a forked child: close the fork server's sockets (its peers watch them)."""
        _child()  # first: it drops the signal wakeup fd
        self.control.close()
        if self.gofer_channel is not None:
            self.gofer_channel.close()
        self.selector.close()
        channel.close_fds([*self.wake, *(fd for fd, _ in self.own_namespaces)])

    def launch(self, fds: list[int], entry: Callable[[int], NoReturn] = supervisor.main) -> None:
        """Fork a process that runs ``entry``: by default it enters a new sandbox's
        namespaces (the cold path); :func:`gofer.serve_here` becomes a container's gofer."""
        bootstrap_fd, log_fd = fds
        if os.fork() == 0:
            try:
                self.forget()
                os.dup2(log_fd, 2)
                os.close(log_fd)
                entry(bootstrap_fd)
            finally:
                os._exit(1)

    def prewarm(self) -> None:
        """Fork a warm sandbox (see :func:`supervisor.warm`) and give the library its
        link, a mount watch and its pid (a :class:`Launched`), unless the library holds
        one it has not used. The link is then the library's alone. It gets the detached
        mounts of the last plan's rootfs and binds, opened here (on the host side), to
        build its root ahead from."""
        if self.given:
            return
        # From now on, a change of the mount table makes the root it builds ahead stale.
        watch = mount_watch()
        hint = warm.ahead_plan(self.hint)
        trees: list[int] = []
        if hint is not None:
            try:
                trees = mounts.open_host_trees(hint.init.tree_sources())
            except OSError:
                hint = None
        ours, theirs = channel.socket_pair()
        try:
            pid = self.fork_into_new_namespaces()
        except OSError:
            ours.close()
            theirs.close()
            channel.close_fds([watch, *trees])
            _none_coming(self.control)
            return
        if pid == 0:
            try:
                ours.close()
                channel.close_fds([watch])
                self.forget()
                supervisor.warm(theirs, hint, trees)
            finally:
                os._exit(1)
        channel.close_fds(trees)
        theirs.close()
        with ours, contextlib.suppress(OSError):
            fds = [ours.fileno(), *([watch] if watch >= 0 else [])]
            channel.send(self.control, Launched(pid, _start_ticks(pid)), fds)
            self.given = True
        channel.close_fds([watch])

    def prewarm_gofer(self) -> None:
        """Fork a gofer ahead (it waits for its ``GoferPrepare``) and give the library its
        bootstrap socket (a :class:`Launched` with ``gofer``), unless it holds one."""
        if self.given_gofer or self.gofer_channel is None:
            return
        ours, theirs = channel.socket_pair()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            _none_coming(self.gofer_channel)
            return
        if pid == 0:
            try:
                ours.close()
                self.forget()
                gofer.serve_here(theirs.fileno(), warm=True)
            finally:
                os._exit(1)
        theirs.close()
        with ours, contextlib.suppress(OSError):
            launched = Launched(pid, _start_ticks(pid), gofer=True)
            channel.send(self.gofer_channel, launched, [ours.fileno()])
            self.given_gofer = True

    def fork_into_new_namespaces(self) -> int:
        """``fork()`` a child into new namespaces (:data:`warm.WARM_UNSHARED`): PID 1
        of a new PID namespace. We unshare them, fork, and go back to our own (whose fds
        we opened at start): one fork, not two (a child unsharing, then forking)."""
        syscalls.unshare(self.warm_flags)
        try:
            pid = os.fork()
        except BaseException:
            self.return_home()
            raise
        if pid != 0:
            self.return_home()
        return pid

    def return_home(self) -> None:
        """Back to our own namespaces (and our PID namespace for our next children)."""
        for fd, flag in self.own_namespaces:
            syscalls.setns(fd, flag)

    def handle(self) -> None:
        try:
            request, fds = channel.receive(self.control, Request)
        except (channel.ChannelClosedError, ConnectionError):
            os._exit(0)
        except ValueError:
            return  # nothing to answer: a failed launch shows as a silent bootstrap socket
        if request.op == "gofer" and len(fds) == 2:
            with contextlib.suppress(OSError):
                self.launch(fds, gofer.serve_here)
        elif request.op == "launch" and len(fds) == 2:
            if request.all:  # a warm shape, launched cold: its plan is the next hint
                self.hint = channel.peek(fds[0]) if request.speculation else None
            with contextlib.suppress(OSError):
                self.launch(fds)
            if request.all:
                self.prewarm()
        elif request.op == "gofers" and len(fds) == 1:  # where warm gofers go
            self.gofer_channel = socket.socket(fileno=fds.pop())
            self.prewarm_gofer()
        elif request.op == "prewarm-gofer":  # the library took the warm gofer
            self.given_gofer = False
            self.prewarm_gofer()
        elif request.op == "prewarm":
            # The library used (or dropped) the warm sandbox we gave it. With
            # ``speculation``, the plan it launched there follows, as raw bytes.
            self.hint = None
            if request.speculation:
                with contextlib.suppress(OSError, ValueError):
                    self.hint, extra = channel.receive_bytes(self.control)
                    channel.close_fds(extra)
            self.given = False
            self.prewarm()
        channel.close_fds(fds)


#: The file under ``/proc/PID/ns`` of each namespace type.
_NS_FILES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts"}


def _none_coming(sock: socket.socket) -> None:
    """Tell the library, which waits for the warm process it asked for, that none comes
    (a ``Launched`` without fds): it launches another way."""
    with contextlib.suppress(OSError):
        channel.send(sock, Launched(0, 0))


def _start_ticks(pid: int) -> int:
    """Our child ``pid``'s start time (``/proc/PID/stat`` field 22): it cannot have been
    reaped, so the pid is still its."""
    info = procfs.read_stat(pid)
    return info.start_ticks if info is not None else 0


def mount_watch() -> int:
    """An fd on ``/proc/self/mountinfo`` whose ``poll`` reports ``POLLPRI`` once the
    mount table changed after this call (-1 if it cannot be opened)."""
    try:
        return os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def serve(control_fd: int) -> NoReturn:
    """Serve launch requests on ``control_fd`` until its peer goes away.

    Launches are not answered: the launched process reports on its bootstrap
    socket, and one that could not be forked shows there as end of stream. A
    warm sandbox (namespaces entered, supervisor forked: for plans with exactly
    :data:`warm.WARM_NAMESPACES`) is made ahead and, once ready, sent to
    the library unasked (a :class:`Launched` with its link and a mount watch);
    the library launches there itself, then asks for the next (``prewarm``).
    """
    reset_inherited_signals()
    control = socket.socket(fileno=control_fd)
    os.set_inheritable(control_fd, False)
    syscalls.prctl(abi.PR_SET_CHILD_SUBREAPER, 1)
    syscalls.set_process_name("sandboxrt-fork")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    server = _Server(control)
    wake_r, wake_w = server.wake
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    server.selector.register(wake_r, selectors.EVENT_READ, "wake")
    server.selector.register(control, selectors.EVENT_READ, "control")
    capabilities.last_cap()  # probed once here, for every init forked from us
    # Everything imported so far lives as long as we do: keep it out of the collector, so
    # that children do not touch (and copy) every page of the heap when they collect.
    gc.freeze()
    server.prewarm()
    while True:
        for key, _ in server.selector.select():
            if key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap()
            else:
                server.handle()
