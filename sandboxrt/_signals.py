"""Relaying the caller's signals to a process of a container (``Container.forward_signals``)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import struct
import termios
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType, TracebackType
from typing import IO, Any

from sandboxrt.errors import InvalidArgumentError, SandboxrtError

__all__ = [
    "DEFAULT_FORWARDED",
    "REFUSED_SIGNALS",
    "SignalForwarder",
    "interrupts_deferred",
    "signal_number",
]

log = logging.getLogger("sandboxrt")

#: What ``forward_signals`` relays unless told otherwise (the supervisor relays the same).
DEFAULT_FORWARDED: tuple[signal.Signals, ...] = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)

#: Never relayed: uncatchable, or what the caller's own machinery needs.
REFUSED_SIGNALS = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD})


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[list[int]]:
    """Hold back the ``KeyboardInterrupt`` of a SIGINT (Ctrl-C) while the block runs, and
    raise it once the block is over: for work that must not stop half-way, such as a
    destroy, whose record would stay with half its resources gone. Only in the main
    thread, where Python's own SIGINT handler is in place; elsewhere a no-op (a handler
    of the caller's is the caller's). The block gets the list of the signals held back
    so far: a wait in it may look, and end itself (see ``_RecordStore.lock``)."""
    caught: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield caught
        return
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def signal_number(sig: int | str, container_id: str) -> int:
    """``sig`` as a signal number: a number (0, the existence probe, included) or a name
    as ``runc kill`` takes it (``SIGTERM``, ``TERM``, ``term``, ``"15"``); anything else
    is an :class:`InvalidArgumentError` naming the container."""
    if isinstance(sig, str):
        name = sig.strip().upper()
        if name.isascii() and name.isdigit() and len(name) < 10:  # ("²" is a digit to str)
            return signal_number(int(name), container_id)
        try:
            return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        except KeyError:
            raise InvalidArgumentError(container_id, f"unknown signal {sig!r}") from None
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise InvalidArgumentError(
            container_id, f"a signal is a number or a name, not {type(sig).__name__}"
        )
    if not 0 <= sig < signal.NSIG:
        raise InvalidArgumentError(
            container_id, f"no signal {sig}: signals go from 1 to {signal.NSIG - 1}"
        )
    return int(sig)


class SignalForwarder:
    """A context manager: while inside, ``signals`` sent to this process go to ``send``.

    Installs a handler for each signal on entry and puts the previous ones back
    on exit. Signal handlers are the main thread's business: entering from
    another thread raises ``RuntimeError``. With a ``console`` (a pty master),
    SIGWINCH copies the caller's terminal size onto it (the kernel then signals
    the terminal's foreground group) when the caller has a terminal, and is
    relayed as a signal otherwise; the size is also copied once on entry.
    A relay that fails (the process is gone) is logged and dropped.
    """

    def __init__(
        self,
        send: Callable[[int], None],
        signals: Iterable[int] = DEFAULT_FORWARDED,
        *,
        console: IO[bytes] | None = None,
        target: str = "",
    ) -> None:
        # (Numbers, not ``signal.Signals``: the real-time ones have no name there.)
        self.signals = tuple(dict.fromkeys(int(s) for s in signals))
        refused = [signal.Signals(s).name for s in self.signals if s in REFUSED_SIGNALS]
        if refused:
            raise ValueError(f"these signals cannot be forwarded: {', '.join(refused)}")
        self._send = send
        self._console = console
        self._target = target
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalForwarder:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "forward_signals works in the main thread only: Python runs signal handlers there"
            )
        if self._previous:
            raise RuntimeError("this forward_signals context is already active")
        try:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except BaseException:
            self._restore()
            raise
        if signal.SIGWINCH in self.signals:
            self._resize()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGWINCH and self._resize():
            return
        try:
            self._send(signum)
        except (SandboxrtError, OSError) as exc:
            log.debug("signal %d not forwarded to %s: %s", signum, self._target, exc)

    def _resize(self) -> bool:
        """Copy the caller's terminal size onto the console; ``False`` if either is missing."""
        console = self._console
        if console is None or console.closed:
            return False
        size = _terminal_size()
        if size is None:
            return False
        try:
            fcntl.ioctl(console.fileno(), termios.TIOCSWINSZ, size)
        except OSError:
            return False
        return True


def _terminal_size() -> bytes | None:
    """The caller's terminal size (a ``struct winsize``), from stdin, stdout, stderr or
    ``/dev/tty``; ``None`` without a terminal."""
    empty = struct.pack("HHHH", 0, 0, 0, 0)
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            return fcntl.ioctl(fd, termios.TIOCGWINSZ, empty)
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, empty)
    except OSError:
        return None
    finally:
        os.close(fd)
