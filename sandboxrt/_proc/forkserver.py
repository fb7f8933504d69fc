"""A pre-started, single-threaded process that forks sandboxes on request.

A fresh interpreter costs milliseconds and the supervisor's imports as many
again; forking this already-warm process costs a fraction of one. It is a
child subreaper, so supervisors whose launched parent exited become its
children and are reaped the moment they exit. It ends when the library's end
of its socket closes. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
from typing import NoReturn

from sandboxrt._core import abi
from sandboxrt._core.protocol import Launched, Reply, Request
from sandboxrt._os import channel, syscalls
from sandboxrt._proc import supervisor

__all__ = ["serve"]


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _launch(control: socket.socket, fds: list[int]) -> int:
    bootstrap_fd, log_fd = fds
    pid = os.fork()
    if pid == 0:
        try:
            control.close()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(log_fd, 2)
            os.close(null)
            os.close(log_fd)
            supervisor.main(bootstrap_fd)
        finally:
            os._exit(1)
    channel.close_fds(fds)
    return pid


def serve(control_fd: int) -> NoReturn:
    """Serve launch requests on ``control_fd`` until its peer goes away."""
    control = socket.socket(fileno=control_fd)
    os.set_inheritable(control_fd, False)
    syscalls.prctl(abi.PR_SET_CHILD_SUBREAPER, 1)
    syscalls.set_process_name("sandboxrt-fork")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    selector.register(control, selectors.EVENT_READ, "control")
    while True:
        for key, _ in selector.select():
            if key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap()
                continue
            try:
                request, fds = channel.receive(control, Request)
            except (channel.ChannelClosedError, ConnectionError):
                os._exit(0)
            except ValueError as exc:
                channel.send(control, Reply(False, error=str(exc), error_type="ProtocolError"))
                continue
            if request.op != "launch" or len(fds) != 2:
                channel.close_fds(fds)
                channel.send(control, Reply(False, error="expected a launch with 2 fds"))
                continue
            try:
                channel.send(control, Launched(_launch(control, fds)))
            except OSError as exc:
                channel.send(control, Reply(False, error=str(exc), error_type="OSError"))
