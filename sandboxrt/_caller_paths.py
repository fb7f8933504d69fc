"""The paths a caller gives a container's operations: checked for what no C string
carries; the console socket dialled, the pid file written, a file the library made
there removed only while it is still that file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
from pathlib import Path

from sandboxrt._core.spec_validate import c_string_problem
from sandboxrt.errors import InvalidArgumentError

__all__ = [
    "absolute_path",
    "check_path_argument",
    "dial_console",
    "unlink_if_same",
    "write_pid_file",
]


def absolute_path(
    path: str | os.PathLike[str], what: str, *, resolve: bool = False, container_id: str = ""
) -> Path:
    """``path`` made absolute (``resolve``: its links followed too); an
    :class:`InvalidArgumentError` naming ``what`` (and ``container_id``'s container) if it
    is relative and our working directory was removed (``getcwd`` fails)."""
    try:
        return Path(os.path.realpath(path)) if resolve else Path(path).absolute()
    except FileNotFoundError as exc:
        problem = f"the {what} {os.fspath(path)!r} is relative to a working directory removed"
        raise InvalidArgumentError(container_id, problem) from exc


def check_path_argument(container_id: str, name: str, path: str | os.PathLike[str] | None) -> None:
    """An :class:`InvalidArgumentError` for a path no C string carries (a NUL, where the
    kernel would stop reading it; a lone surrogate)."""
    problem = None if path is None else c_string_problem(os.fsdecode(path))
    if problem is not None:
        raise InvalidArgumentError(container_id, f"{name} {problem}: {path!r}")


def unlink_if_same(path: str | os.PathLike[str], made: os.stat_result) -> None:
    """Remove ``path`` if it is still the regular file ``made`` (never what replaced it)."""
    with contextlib.suppress(OSError):
        now = os.lstat(path)
        if stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
            os.unlink(path)


def dial_console(container_id: str, path: str | os.PathLike[str]) -> socket.socket:
    """A connection to the console socket at ``path``, which will get the terminal.
    Never waits: a listener whose backlog is full refuses it (``EAGAIN``), as runc's
    dial does, rather than holding up the create (and its lock) for ever."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        sock.connect(os.fspath(path))
        sock.setblocking(True)
        sock.settimeout(_CONSOLE_SEND_TIMEOUT)
    except OSError as exc:
        sock.close()
        problem = f"cannot send the console to {os.fspath(path)}: {exc}"
        raise InvalidArgumentError(container_id, problem) from None
    return sock


#: How long the console's fd may wait to be taken by its socket's reader.
_CONSOLE_SEND_TIMEOUT = 30.0


def write_pid_file(container_id: str, path: str | os.PathLike[str], pid: int) -> None:
    """Write the pid (no newline) atomically: readers never see an empty file.

    The temporary file has a name nobody can guess and is made anew
    (``O_EXCL|O_NOFOLLOW``): in a directory others may write to, a symlink or
    file planted there is neither followed nor taken over. Failures are an
    :class:`InvalidArgumentError` naming the container, and leave no temporary file.
    """
    target = os.fspath(path)
    tmp = f"{target}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o644)
        try:
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise InvalidArgumentError(container_id, f"cannot write pid file {target}: {exc}") from None
