"""``Popen.communicate``'s way with one process's streams, for an exec'd
:class:`~sandboxrt.Process` and a container's init alike: the input written and
stdout (or the terminal) and stderr read together, through one selector, so
that neither side can fill up and block the other, whatever the size; across
calls, after a time-out.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import termios
import time
from collections.abc import Callable
from typing import IO

from sandboxrt._seconds import seconds_left
from sandboxrt.errors import InvalidArgumentError, ProcessTimeoutError

__all__ = ["Communication"]

_READ_SIZE = 64 * 1024
_WRITE_SIZE = 64 * 1024


def _end_of_input(console: IO[bytes], data: bytes) -> bytes:
    """What a terminal's user types to end ``data``: the end-of-file character (``^D``),
    twice after a line not ended (the first only hands that line over)."""
    try:
        eof = termios.tcgetattr(console.fileno())[6][termios.VEOF]
    except termios.error:
        eof = b"\x04"
    if isinstance(eof, int):  # (the form of a non-canonical terminal's entries)
        eof = bytes([eof])
    return bytes(eof) if data.endswith(b"\n") else bytes(eof) * 2


class Communication:
    """The streams of one process (``None`` where it has none), served until their end.

    :meth:`begin` takes the input, once; :meth:`pump` serves the streams until the
    outputs end, and raises ``TimeoutError`` at its deadline (call it again to go
    on); :meth:`collected` is what was read so far.
    """

    def __init__(
        self,
        container_id: str,
        *,
        stdin: IO[bytes] | None,
        stdout: IO[bytes] | None,
        stderr: IO[bytes] | None,
        console: IO[bytes] | None,
    ) -> None:
        self.container_id = container_id
        self.stdin, self.stderr, self.console = stdin, stderr, console
        #: What is read as stdout: the pipe, else the terminal (``tty=True``).
        self.stdout = stdout if stdout is not None else console
        #: :meth:`begin` was called.
        self.started = False
        self._input = memoryview(b"")
        self._offset = 0
        self._output: dict[int, list[bytes]] = {}

    def communicate(
        self,
        input: bytes | None,
        deadline: float | None,
        *,
        wait: Callable[[float | None], object],
        timed_out: Callable[[], ProcessTimeoutError],
        given_up: Callable[[], bool] | None = None,
        poll: float = 0.05,
    ) -> tuple[bytes | None, bytes | None]:
        """``Popen.communicate``: :meth:`begin`, :meth:`pump`, then ``wait`` for the
        process with what is left of the time; ``(stdout, stderr)``. The outputs' time
        out raises ``timed_out()``; either time-out carries the output so far."""
        self.begin(input)
        try:
            try:
                self.pump(deadline, given_up=given_up, poll=poll)
            except TimeoutError:
                raise timed_out() from None
            wait(seconds_left(deadline))
        except ProcessTimeoutError as error:
            error.output, error.stderr = self.collected()
            raise
        return self.collected()

    def begin(self, input: bytes | None) -> None:
        """Take ``input`` (the first call only: input after that is refused). On a
        terminal it ends as its user ends it, with the end-of-file character."""
        if self.started:
            if input:
                raise InvalidArgumentError(
                    self.container_id, "cannot send input after starting communication"
                )
            return
        self.started = True
        if input and self.stdin is None and self.console is not None:
            # (A new object: the caller's bytearray is the caller's.)
            input = bytes(input) + _end_of_input(self.console, bytes(input))
        self._input = memoryview(input or b"")
        if self.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.stdin.flush()
            if not input:
                with contextlib.suppress(BrokenPipeError):
                    self.stdin.close()
        elif input and self.console is None:
            raise InvalidArgumentError(self.container_id, "input needs stdin=PIPE (or tty=True)")

    def collected(self) -> tuple[bytes | None, bytes | None]:
        """``(stdout, stderr)`` read so far; ``None`` for a stream the process lacks."""
        return self._collected(self.stdout), self._collected(self.stderr)

    def _collected(self, stream: IO[bytes] | None) -> bytes | None:
        if stream is None:
            return None
        return b"".join(self._output.get(id(stream), []))

    def pump(
        self,
        deadline: float | None,
        *,
        given_up: Callable[[], bool] | None = None,
        poll: float = 0.05,
    ) -> None:
        """Serve the streams until the outputs end, or ``given_up()`` (asked every
        ``poll`` seconds) says there is no point; ``TimeoutError`` at ``deadline``."""
        with selectors.DefaultSelector() as selector:
            wanted: dict[int, tuple[int, IO[bytes]]] = {}
            writing = self.stdin if self.stdin is not None else self.console
            pending = self._offset < len(self._input)
            if writing is not None and not writing.closed and pending:
                os.set_blocking(writing.fileno(), False)  # (blocking again on the way out)
                wanted[writing.fileno()] = (selectors.EVENT_WRITE, writing)
            for stream in (self.stdout, self.stderr):
                if stream is not None and not stream.closed:
                    self._output.setdefault(id(stream), [])
                    events, _ = wanted.get(stream.fileno(), (0, stream))
                    wanted[stream.fileno()] = (events | selectors.EVENT_READ, stream)
            for fd, (events, stream) in wanted.items():
                selector.register(fd, events, stream)
            try:
                self._serve(selector, deadline, given_up, poll)
            finally:  # (a time-out leaves input unwritten: the caller's stream is as it was)
                if writing is not None and not writing.closed and pending:
                    os.set_blocking(writing.fileno(), True)

    def _serve(
        self,
        selector: selectors.BaseSelector,
        deadline: float | None,
        given_up: Callable[[], bool] | None,
        poll: float,
    ) -> None:
        while selector.get_map():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            if given_up is not None:
                if given_up():
                    return
                remaining = poll if remaining is None else min(remaining, poll)
            for key, events in selector.select(remaining):
                stream = key.data
                if events & selectors.EVENT_WRITE:
                    self._write_input(selector, stream)
                if events & selectors.EVENT_READ:
                    self._read_output(selector, stream)

    def _write_input(self, selector: selectors.BaseSelector, stream: IO[bytes]) -> None:
        chunk = self._input[self._offset : self._offset + _WRITE_SIZE]
        try:
            self._offset += os.write(stream.fileno(), chunk)
        except BlockingIOError:
            return
        except BrokenPipeError:
            self._offset = len(self._input)
        if self._offset < len(self._input):
            return
        if stream is self.console:  # keep reading it
            os.set_blocking(stream.fileno(), True)
            selector.modify(stream.fileno(), selectors.EVENT_READ, stream)
            return
        selector.unregister(stream.fileno())
        with contextlib.suppress(BrokenPipeError):
            stream.close()

    def _read_output(self, selector: selectors.BaseSelector, stream: IO[bytes]) -> None:
        try:
            data = os.read(stream.fileno(), _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # EIO: a pty whose slave side is closed everywhere
            data = b""
        if data:
            self._output[id(stream)].append(data)
            return
        selector.unregister(stream.fileno())
        stream.close()
