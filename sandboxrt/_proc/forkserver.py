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
import select
import selectors
import signal
import socket
from collections.abc import Callable
from typing import NoReturn

from sandboxrt._core import abi
from sandboxrt._core.protocol import Launched, Request
from sandboxrt._os import channel, mounts, syscalls
from sandboxrt._proc import gofer, supervisor

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


def _peek(fd: int) -> bytes | None:
    """The message waiting on socket ``fd``, left there (its fds too) for its reader."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        try:
            flags = socket.MSG_PEEK | socket.MSG_DONTWAIT
            size = sock.recv_into(bytearray(1), 1, flags | socket.MSG_TRUNC)
            return sock.recv(size, flags)
        except OSError:
            return None


class _MountWatch:
    """Tells whether this mount namespace's mount table changed since the last look
    (``poll`` on ``/proc/self/mountinfo`` reports each change once, as ``POLLPRI``)."""

    def __init__(self) -> None:
        self.poll = select.poll()
        try:
            self.fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = -1
        else:
            self.poll.register(self.fd, select.POLLPRI | select.POLLERR)

    def changed(self) -> bool:
        if self.fd < 0:
            return True
        return any(event & (select.POLLPRI | select.POLLERR) for _, event in self.poll.poll(0))


class _Server:
    """The fork server's state: its socket, and at most one warm sandbox.

    The warm sandbox builds ahead the root of the last plan a warm launch
    carried (``supervisor.RootAhead``), which serves the next launch if it
    asks for the same root and the mount table did not change meanwhile.
    """

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.selector = selectors.DefaultSelector()
        self.warm_link: socket.socket | None = None
        self.warm_pid = 0
        self.warm_ticks = 0
        #: The encoded plan of the last warm launch.
        self.hint: bytes | None = None
        self.mounts = _MountWatch()

    def forget(self) -> None:
        """In a forked child: close the fork server's sockets (its peers watch them)."""
        self.control.close()
        if self.warm_link is not None:
            self.warm_link.close()
        if self.mounts.fd >= 0:
            os.close(self.mounts.fd)
        _child()

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
        """Fork a warm sandbox (see :func:`supervisor.warm`) for the next launch, with the
        detached mounts of the last plan's rootfs and binds, opened here (on the host
        side), to build its root ahead from."""
        self.mounts.changed()  # from now on, a change makes the root built ahead stale
        hint = supervisor.ahead_plan(self.hint)
        trees: list[int] = []
        if hint is not None:
            try:
                trees = mounts.open_host_trees(hint.init.tree_sources())
            except OSError:
                hint = None
        ours, theirs = channel.socket_pair()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            channel.close_fds(trees)
            return
        if pid == 0:
            try:
                ours.close()
                self.forget()
                supervisor.warm(theirs, hint, trees)
            finally:
                os._exit(1)
        channel.close_fds(trees)
        theirs.close()
        self.warm_link, self.warm_pid = ours, 0
        self.selector.register(ours, selectors.EVENT_READ, "warm")

    def drop_warm(self) -> None:
        if self.warm_link is not None:
            self.selector.unregister(self.warm_link)
            self.warm_link.close()
        self.warm_link, self.warm_pid = None, 0

    def warm_ready(self) -> None:
        assert self.warm_link is not None
        try:
            launched, _ = channel.receive(self.warm_link, Launched)
        except (channel.ChannelClosedError, OSError, ValueError):
            self.drop_warm()
            return
        self.warm_pid, self.warm_ticks = launched.pid, launched.start_ticks

    def hand_over(self, fds: list[int]) -> bool:
        """Give a launch to the warm sandbox; ``False`` if there is none that takes it."""
        if self.warm_link is None or not self.warm_pid:
            return False
        launch = Request("launch", speculation=not self.mounts.changed())
        try:
            channel.send(self.warm_link, launch, fds)
        except OSError:
            self.drop_warm()
            return False
        bootstrap = socket.socket(fileno=os.dup(fds[0]))
        with contextlib.suppress(OSError), bootstrap:
            channel.send(bootstrap, Launched(self.warm_pid, self.warm_ticks))
        self.drop_warm()  # closing the link lets the warm sandbox go on
        return True

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
            if request.all:  # peeked before the plan is read: for the next warm sandbox
                self.hint = _peek(fds[0]) if request.speculation else None
            if request.all and self.hand_over(fds):
                self.prewarm()
            else:
                with contextlib.suppress(OSError):
                    self.launch(fds)
        channel.close_fds(fds)


def serve(control_fd: int) -> NoReturn:
    """Serve launch requests on ``control_fd`` until its peer goes away.

    Launches are not answered: the launched process reports on its bootstrap
    socket, and one that could not be forked shows there as end of stream. A
    launch whose request has ``all`` set may be served by a warm sandbox:
    one made ahead (namespaces entered, supervisor forked) for plans with
    exactly :data:`supervisor.WARM_NAMESPACES`; then the fork server itself
    tells the library the supervisor's pid.
    """
    control = socket.socket(fileno=control_fd)
    os.set_inheritable(control_fd, False)
    syscalls.prctl(abi.PR_SET_CHILD_SUBREAPER, 1)
    syscalls.set_process_name("sandboxrt-fork")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    server = _Server(control)
    server.selector.register(wake_r, selectors.EVENT_READ, "wake")
    server.selector.register(control, selectors.EVENT_READ, "control")
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
            elif key.data == "warm":
                server.warm_ready()
            else:
                server.handle()
