"""Turning subprocess-style stdio arguments into fds for a container's init, and the
text mode (``text``, ``encoding``, ``errors``) that encodes and decodes what goes through
them."""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import errno
import fcntl
import io
import locale
import os
import subprocess
from typing import IO, Any

from sandboxrt.errors import InvalidArgumentError

__all__ = [
    "PtyMaster",
    "StdioArg",
    "StdioPlan",
    "TextMode",
    "close_streams",
    "is_pipe",
    "reserve_standard_fds",
]

#: What ``stdin``/``stdout``/``stderr`` accept: ``None`` (inherit), ``PIPE``,
#: ``DEVNULL``, ``STDOUT`` (stderr only), an fd, or an object with ``fileno()``.
StdioArg = int | IO[Any] | None


class PtyMaster(io.FileIO):
    """A pty's master end (``console``), unbuffered. Once every process of the terminal
    has closed it, reading gives what is left, then end of file, as a pipe does (Linux
    answers ``EIO`` there, which ``read()`` would raise, losing what it had read)."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, "r+b")

    def readinto(self, buffer: Any) -> int | None:
        try:
            return super().readinto(buffer)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return 0
            raise

    def readall(self) -> bytes | None:  # type: ignore[override]
        chunks = []
        while chunk := self.read(65536):
            chunks.append(chunk)
        if chunk is None and not chunks:
            return None  # (non-blocking, nothing yet: as FileIO's)
        return b"".join(chunks)

    def read(self, size: int | None = -1) -> bytes | None:  # type: ignore[override]
        # (None, as FileIO's: nothing to read yet, non-blocking)
        if size is None or size < 0:
            return self.readall()
        buffer = bytearray(size)
        count = self.readinto(buffer)  # (where EIO is end of file)
        return None if count is None else bytes(buffer[:count])


def reserve_standard_fds() -> None:
    """Open ``/dev/null`` on whichever of fds 0, 1 and 2 is closed (a daemon's), as Go's
    runtime does at start: else the next fd the library opened (a socket to its fork
    server, a lock file) would take the number, and a container told to inherit that
    stream would get it."""
    for fd in (0, 1, 2):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: ``fd``
            if null != fd:  # (another thread took it meanwhile)
                os.close(null)


class StdioPlan:
    """The init's three fds, and the caller's ends of any pipes.

    ``child_fds`` go to the sandbox; call :meth:`close_child_ends` once they
    were sent, and :meth:`close_all` on failure (as leaving a ``with`` block on an
    exception does).
    """

    def __init__(self, stdin: StdioArg, stdout: StdioArg, stderr: StdioArg) -> None:
        reserve_standard_fds()
        self._owned: list[int] = []
        #: The child ends of the pipes this plan made (``PIPE``): the library's own.
        self.made_pipes: list[int] = []
        self.stdin: IO[bytes] | None = None
        self.stdout: IO[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        to_stdout = stderr == subprocess.STDOUT
        try:
            # The caller's fds first: a pipe or /dev/null made for one stream could take
            # the number of a closed one given for another, which would then pass for open.
            given = [self._given(arg) for arg in (stdin, stdout, None if to_stdout else stderr)]
            in_fd = self._fd(stdin, 0, reading=True) if given[0] is None else given[0]
            out_fd = self._fd(stdout, 1, reading=False) if given[1] is None else given[1]
            err_fd = given[2]
            if err_fd is None:
                err_fd = out_fd if to_stdout else self._fd(stderr, 2, reading=False)
        except BaseException:
            self.close_all()
            raise
        self.child_fds = [in_fd, out_fd, err_fd]

    def _given(self, arg: StdioArg) -> int | None:
        """The plan's own duplicate of an fd the caller gave for a stream (never the
        caller's number, which a closed stream would have free for the library's next
        fd); ``None`` for ``None``, ``PIPE``, ``DEVNULL`` and ``STDOUT``."""
        if arg is None or (isinstance(arg, int) and not isinstance(arg, bool) and arg < 0):
            return None
        if isinstance(arg, bool) or not (isinstance(arg, int) or hasattr(arg, "fileno")):
            raise TypeError(
                "a stdio argument must be None, PIPE, DEVNULL, STDOUT (stderr only), an fd "
                f"or an object with fileno(), not {type(arg).__name__}"
            )
        try:
            fd = arg if isinstance(arg, int) else arg.fileno()
        except io.UnsupportedOperation:  # (an io.BytesIO, say: no fd to give a process)
            raise ValueError(
                f"a {type(arg).__name__} has no file descriptor to give a process: pass a "
                "real file, an fd, DEVNULL or PIPE"
            ) from None
        if fd < 0:
            raise ValueError(f"invalid stdio argument {arg!r}")
        copy = self._copy(fd)
        if copy is None:
            raise ValueError(f"stdio file descriptor {fd} is not open")
        return copy

    def _copy(self, fd: int) -> int | None:
        """Our own duplicate of ``fd`` (above the standard three, close-on-exec); ``None``
        if ``fd`` is not open (only ``EBADF`` reads as closed)."""
        try:
            return self._own(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            return None

    def _fd(self, arg: StdioArg, default: int, *, reading: bool) -> int:
        """The plan's own fd for a stream the caller gave no fd for (:meth:`_given`): a
        duplicate of ours when inherited (``/dev/null`` when the caller has closed it), a
        new pipe, ``/dev/null``."""
        if arg is None:
            copy = self._copy(default)
            if copy is not None:
                return copy
            arg = subprocess.DEVNULL  # closed (a daemon's): the container gets /dev/null
        if arg == subprocess.DEVNULL:
            return self._own(
                os.open(os.devnull, (os.O_RDONLY if reading else os.O_WRONLY) | os.O_CLOEXEC)
            )
        if arg == subprocess.PIPE:
            r, w = os.pipe2(os.O_CLOEXEC)
            child, ours = (r, w) if reading else (w, r)
            self.made_pipes.append(self._own(child))
            stream = os.fdopen(ours, "wb" if reading else "rb")
            if default == 0:
                self.stdin = stream
            elif default == 1:
                self.stdout = stream
            else:
                self.stderr = stream
            return child
        raise ValueError(f"invalid stdio argument {arg!r}")  # (STDOUT but for stderr, say)

    def _own(self, fd: int) -> int:
        self._owned.append(fd)
        return fd

    def __enter__(self) -> StdioPlan:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.close_all()

    def close_child_ends(self) -> None:
        """Close the fds this plan holds for the child (after they were sent)."""
        for fd in self._owned:
            os.close(fd)
        self._owned, self.made_pipes = [], []

    def close_all(self) -> None:
        """Close everything, the caller's pipe ends included."""
        self.close_child_ends()
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()


def close_streams(stdin: IO[bytes] | None, *outputs: IO[bytes] | None) -> None:
    """Close the caller's ends of a process's pipes (and console), as ``subprocess.Popen``
    does on leaving a ``with`` block: a program that exited may have left ``stdin``'s
    pipe broken."""
    for stream in outputs:
        if stream is not None:
            stream.close()
    if stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            stdin.close()


@dataclasses.dataclass(frozen=True)
class TextMode:
    """``exec_run``'s text mode, as ``subprocess.run``'s: what encodes its input and decodes
    its output (with universal newlines)."""

    encoding: str
    errors: str

    @classmethod
    def of(
        cls,
        container_id: str,
        text: bool | None,
        encoding: str | None,
        errors: str | None,
        universal_newlines: bool | None,
    ) -> TextMode | None:
        """The text mode those arguments ask for, if any."""
        if text is not None and universal_newlines is not None and text != universal_newlines:
            raise InvalidArgumentError(
                container_id, "text and universal_newlines are given with different values"
            )
        if not (text or universal_newlines or encoding or errors):
            return None
        mode = cls(encoding or locale.getpreferredencoding(False), errors or "strict")
        try:  # (before the program runs, as subprocess.run checks them)
            codecs.lookup(mode.encoding)
            codecs.lookup_error(mode.errors)
        except LookupError as exc:
            raise InvalidArgumentError(container_id, str(exc)) from None
        return mode

    def encode(self, container_id: str, data: bytes | str | None) -> bytes | None:
        if data is None:
            return None
        if not isinstance(data, str):  # (as subprocess's text-mode stdin refuses it)
            raise TypeError(f"input must be str in text mode, not {type(data).__name__}")
        try:
            return data.encode(self.encoding, self.errors)
        except (LookupError, UnicodeError) as exc:
            raise InvalidArgumentError(container_id, f"cannot encode input: {exc}") from exc

    def decode(self, data: bytes | None) -> str | None:
        if data is None:
            return None
        return data.decode(self.encoding, self.errors).replace("\r\n", "\n").replace("\r", "\n")


def is_pipe(arg: object) -> bool:
    """Whether a stdio argument is ``PIPE`` (not ``True``, which equals 1)."""
    return isinstance(arg, int) and not isinstance(arg, bool) and arg == subprocess.PIPE
