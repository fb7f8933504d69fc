"""Message sockets: one JSON message a datagram, file descriptors alongside.

Carries the messages of :mod:`sandboxrt._core.protocol` over
``SOCK_SEQPACKET`` Unix sockets, whose datagrams keep their boundaries and
can carry ``SCM_RIGHTS``. Standard library only.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from sandboxrt._core import protocol

__all__ = [
    "MAX_FDS",
    "ChannelClosedError",
    "bind_listener",
    "close_fds",
    "connect",
    "listening",
    "open_all",
    "peek",
    "peer_pid",
    "receive",
    "receive_bytes",
    "receive_one_of",
    "receive_rest",
    "send",
    "send_bytes",
    "send_many",
    "send_rest",
    "set_timeout",
    "socket_pair",
]

M = TypeVar("M", bound=protocol._Message)
T_Item = TypeVar("T_Item")
T_Read = TypeVar("T_Read")

#: The most fds one message carries (more go with :func:`send_many`).
MAX_FDS = 16
_SUN_PATH_MAX = 107


class ChannelClosedError(ConnectionError):
    """The peer closed the channel before a whole message arrived."""


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of message sockets (close-on-exec)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    return _off_stdio(ours), _off_stdio(theirs)


def _message_socket() -> socket.socket:
    return _off_stdio(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC))


def _off_stdio(sock: socket.socket) -> socket.socket:
    """``sock``, moved above fd 2 if it took the number of a closed standard fd (a
    daemon's, closed after the library filled them: ``_stdio.reserve_standard_fds``),
    where a container told to inherit that stream would get it."""
    if sock.fileno() > 2:
        return sock
    try:
        return socket.socket(fileno=fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 3))
    finally:
        sock.close()


_SO_SNDBUFFORCE = 32


def _make_room(sock: socket.socket, size: int) -> None:
    """Grow the send buffer for a large datagram (a seqpacket must fit in it whole)."""
    if size + 4096 <= sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2:
        return
    wanted = 2 * size + 65536
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, wanted)  # past wmem_max, as root
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wanted)


def send(sock: socket.socket, message: protocol._Message, fds: Sequence[int] = ()) -> None:
    """Send one message, with ``fds`` passed alongside."""
    data = protocol.encode(message)
    if len(data) > protocol.MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes is over {protocol.MAX_MESSAGE}")
    _make_room(sock, len(data))
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def send_bytes(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` (not empty: that reads as end of stream) as one raw datagram."""
    if not data or len(data) > protocol.MAX_MESSAGE:
        raise ValueError(f"a raw datagram of {len(data)} bytes")
    _make_room(sock, len(data))
    sock.sendall(data)


def receive_bytes(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Receive one raw datagram and the fds alongside (close-on-exec)."""
    return _receive_raw(sock)


def peek(fd: int) -> bytes | None:
    """The datagram waiting on socket ``fd``, left there (its fds too) for its reader;
    ``None`` if there is none."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        try:
            flags = socket.MSG_PEEK | socket.MSG_DONTWAIT
            size = sock.recv_into(bytearray(1), 1, flags | socket.MSG_TRUNC)
            return sock.recv(size, flags) or None
        except OSError:
            return None


def send_many(sock: socket.socket, message: protocol._Message, fds: Sequence[int]) -> None:
    """:func:`send`, with more fds than one datagram carries: the first go with the
    message, the rest follow in ``Progress("fds")`` messages (:func:`receive_rest`)."""
    send(sock, message, fds[:MAX_FDS])
    send_rest(sock, fds)


def send_rest(sock: socket.socket, fds: Sequence[int]) -> None:
    """The ``Progress("fds")`` messages of :func:`send_many`: ``fds`` past the first
    :data:`MAX_FDS`, which went with the message."""
    for start in range(MAX_FDS, len(fds), MAX_FDS):
        send(sock, protocol.Progress("fds"), fds[start : start + MAX_FDS])


def receive_rest(sock: socket.socket, fds: list[int], total: int) -> None:
    """Receive into ``fds`` the ``Progress("fds")`` messages of :func:`send_many` until
    it holds ``total`` fds; on a failure every fd in it is closed."""
    try:
        while len(fds) < total:
            step, more = receive(sock, protocol.Progress)
            fds.extend(more)
            if step.step != "fds" or not more:
                raise ValueError(f"expected {total - len(fds)} more fds, got {step.step!r}")
    except BaseException:
        close_fds(fds)
        fds.clear()
        raise


def receive_one_of(
    sock: socket.socket, *expected: type[protocol._Message]
) -> tuple[protocol._Message, list[int]]:
    """Receive one message that may be of any of the ``expected`` types."""
    data, fds = _receive_raw(sock)
    for kind in expected:
        try:
            return protocol.decode(data, kind), fds
        except ValueError:
            continue
    close_fds(fds)
    raise ValueError(f"expected one of {[k.kind for k in expected]}")


def _past_reset(read: Callable[[], T_Read]) -> T_Read:
    """``read()``, once more if it met ``ECONNRESET``: the peer closed with a message of
    ours unread. The kernel reports that once, ahead of what the peer sent before
    closing (at the peek, or at the read when the peer closed between the two): reading
    on gets that (or EOF)."""
    try:
        return read()
    except ConnectionResetError:
        return read()


def _receive_raw(sock: socket.socket) -> tuple[bytes, list[int]]:
    # Not socket.recv_fds: on Python 3.11 it drops its flags, so the fds would not be
    # close-on-exec, and every exec'd program would inherit them.
    # Peek at the datagram's size first: a buffer of MAX_MESSAGE for every message
    # would cost a 4 MiB allocation, and its page faults, each time.
    size = _past_reset(lambda: sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC))
    fd_size = array.array("i").itemsize
    data, ancillary, flags, _ = _past_reset(
        lambda: sock.recvmsg(
            max(1, min(size, protocol.MAX_MESSAGE)),
            socket.CMSG_SPACE(MAX_FDS * fd_size),
            socket.MSG_CMSG_CLOEXEC,
        )
    )
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % fd_size])
            fds.extend(received)
    if not data and not fds:
        raise ChannelClosedError("the peer closed the channel")
    if flags & socket.MSG_CTRUNC:
        close_fds(fds)
        raise ValueError("its file descriptors were cut off (too many open here, say)")
    if flags & socket.MSG_TRUNC:
        close_fds(fds)
        raise ValueError("message truncated")
    return data, fds


def receive(sock: socket.socket, expected: type[M]) -> tuple[M, list[int]]:
    """Receive one message of type ``expected`` and the fds that came with it.

    Raises :class:`ChannelClosedError` at end of stream and ``ValueError`` for
    a message that is not an ``expected``; received fds are close-on-exec.
    """
    data, fds = _receive_raw(sock)
    try:
        return protocol.decode(data, expected), fds
    except ValueError:
        close_fds(fds)
        raise


def close_fds(fds: Sequence[int]) -> None:
    """Close every fd in ``fds``, ignoring those already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def open_all(items: Iterable[T_Item], open_one: Callable[[T_Item], int]) -> list[int]:
    """``open_one`` of each of ``items``: every fd, or none (what was opened is closed
    when one fails, and the error raised)."""
    fds: list[int] = []
    try:
        for item in items:
            fds.append(open_one(item))
    except BaseException:
        close_fds(fds)
        raise
    return fds


def _short_address(path: str) -> tuple[str, int | None]:
    """A path ``bind``/``connect`` accept, through the parent's fd if ``path`` is long."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path, None
    parent, name = os.path.split(path)
    dirfd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dirfd}/{name}", dirfd


def bind_listener(path: str, backlog: int = 64, *, listen: bool = True) -> socket.socket:
    """A listening message socket bound at ``path`` with mode 0600; ``FileExistsError``
    if ``path`` exists. Without ``listen`` it is only bound: the process that calls
    ``listen(backlog)`` is the one its connections see as their peer (``SO_PEERCRED``).

    Bound under a temporary name beside it, made 0600, then linked into place: nobody
    can connect before the mode is set, and the process's umask, which its threads
    share, is never changed (a umask set for a moment is another thread's file's mode).
    """
    parent, name = os.path.split(path)
    dirfd = os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    temporary = f".bind-{os.getpid()}-{os.urandom(4).hex()}"
    sock = _message_socket()
    try:
        address = os.path.join(parent, temporary)
        if len(os.fsencode(address)) > _SUN_PATH_MAX:
            address = f"/proc/self/fd/{dirfd}/{temporary}"  # short, however long ``path`` is
        sock.bind(address)
        try:
            os.chmod(temporary, 0o600, dir_fd=dirfd)
            os.link(temporary, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        finally:
            os.unlink(temporary, dir_fd=dirfd)
        if listen:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dirfd)
    return sock


#: The timeout a socket gets for a deadline already past: the shortest that still makes
#: a read that would block raise ``TimeoutError`` (0 would make it ``BlockingIOError``).
_EXPIRED = 1e-6


def set_timeout(sock: socket.socket, timeout: float | None) -> None:
    """``sock.settimeout(timeout)``, where a timeout of 0 or less means one already past
    (``TimeoutError`` rather than ``BlockingIOError`` or ``ValueError``), as
    ``subprocess`` takes it."""
    sock.settimeout(None if timeout is None else max(timeout, _EXPIRED))


def peer_pid(sock: socket.socket) -> int:
    """The pid (as our PID namespace numbers it; 0 if it cannot) of the process that
    made the listener ``sock`` is connected to (``SO_PEERCRED``: fixed at ``listen``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def listening(path: str, timeout: float = 1.0) -> bool:
    """Whether something accepts connections on the Unix socket at ``path`` (within
    ``timeout`` seconds: a full backlog is not waited out for ever)."""
    try:
        connect(path, timeout=timeout).close()
    except OSError:
        return False
    return True


def connect(path: str, timeout: float | None = None) -> socket.socket:
    """A message socket connected to the listener at ``path``.

    With a ``timeout``, a full listen backlog (which a blocking connect would
    wait out) is retried until the timeout passes.
    """
    sock = _message_socket()
    set_timeout(sock, timeout)
    address, dirfd = _short_address(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.0005
    try:
        while True:
            try:
                sock.connect(address)
                break
            except BlockingIOError:  # EAGAIN: the backlog is full
                if deadline is None or time.monotonic() + delay > deadline:
                    raise TimeoutError(f"{path}: the listener's backlog stayed full") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
    except OSError:
        sock.close()
        raise
    finally:
        if dirfd is not None:
            os.close(dirfd)
    return sock
