"""``container.files``: a container's files, read and written through its gofer.

Paths are the container's own (on its rootfs, tmpfs and bind mounts alike)
and are resolved by the gofer beneath the container's root, so ``..``,
absolute symlinks and ``/proc/self/root`` never lead out of it. Regular
files come back as fds: data moves between them and the host with
``copy_file_range``/``sendfile`` in chunks (constant memory), never through
the gofer. What the API creates belongs to the container process's user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import posixpath
import socket
import stat
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal, TextIO, overload

from sandboxrt._core.file_protocol import FileReply, FileRequest, FileStat, WalkEntry
from sandboxrt._core.protocol import DEFAULT_UMASK
from sandboxrt._core.spec_validate import c_string_problem
from sandboxrt._os import channel
from sandboxrt.errors import (
    ContainerFileError,
    GoferError,
    InvalidArgumentError,
    arguments_of,
    file_error,
)

if TYPE_CHECKING:
    from sandboxrt.container import Container
    from sandboxrt.gofer import Gofer

__all__ = ["ContainerFiles", "FileStat", "WalkEntry"]

#: Bytes moved per system call when streaming a file in or out.
CHUNK = 8 * 1024 * 1024

HostPath = str | os.PathLike[str]
_TextMode = Literal[
    "r", "w", "a", "x", "r+", "w+", "a+", "x+", "rt", "wt", "at", "xt", "r+t", "w+t", "a+t", "x+t"
]  # fmt: skip
_BinaryMode = Literal[
    "rb", "wb", "ab", "xb", "r+b", "w+b", "a+b", "x+b", "rb+", "wb+", "ab+", "xb+"
]  # fmt: skip

#: A path in a container: a ``str``, or a ``PurePosixPath`` (any ``os.PathLike[str]``).
ContainerPath = str | os.PathLike[str]


def _container_path(path: ContainerPath) -> str:
    if isinstance(path, str):
        return path
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"a path in a container is a str or a PathLike of one, not {path!r}")
    return text


def _replace_symlink(target: str, name: str, parent_fd: int) -> None:
    """Make host entry ``name`` of ``parent_fd`` a symlink to ``target``, replacing a
    symlink already there (a copy merges into what is there); anything else stays."""
    try:
        os.symlink(target, name, dir_fd=parent_fd)
    except FileExistsError:
        if not stat.S_ISLNK(os.lstat(name, dir_fd=parent_fd).st_mode):
            raise
        os.unlink(name, dir_fd=parent_fd)
        os.symlink(target, name, dir_fd=parent_fd)


def check_max_bytes(container_id: str, max_bytes: object) -> None:
    """Refuse a ``max_bytes`` that is not ``None`` or a count of bytes."""
    if max_bytes is None:
        return
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
    if max_bytes < 0:
        raise InvalidArgumentError(container_id, f"max_bytes must not be negative, not {max_bytes}")


def _check_bits(container_id: str, name: str, value: object) -> None:
    """Refuse what is not permission bits (``TypeError``, :class:`InvalidArgumentError`)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= 0o7777:
        problem = f"{name} must be permission bits, 0 to 0o7777, not {value:#o}"
        raise InvalidArgumentError(container_id, problem)


def _open_flags(mode: str) -> int:
    """``open(2)`` flags for a Python file ``mode`` (``"r"``, ``"wb"``, ``"a+"``...)."""
    kinds = set(mode) & set("rwax")
    if len(kinds) != 1 or len(set(mode)) != len(mode) or set(mode) - set("rwaxbt+"):
        raise ValueError(f"invalid mode: {mode!r}")
    if "b" in mode and "t" in mode:
        raise ValueError(f"invalid mode: {mode!r}")
    kind = kinds.pop()
    flags = {
        "r": 0,
        "w": os.O_CREAT | os.O_TRUNC,
        "a": os.O_CREAT | os.O_APPEND,
        "x": os.O_CREAT | os.O_EXCL,
    }[kind]
    if "+" in mode:
        return flags | os.O_RDWR
    return flags | (os.O_RDONLY if kind == "r" else os.O_WRONLY)


#: How a host directory and a host file are opened by a copy into a container.
_HOST_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_HOST_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: What a host tree entry that vanished or changed kind during a copy raises.
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


#: Write errors that are the destination's (the container's file system is full...).
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def _written(container_id: str, path: str, *, only: frozenset[int] | None = None) -> Iterator[None]:
    """Writing to the container's ``path``: its ``OSError`` (those in ``only``, when the
    block also reads host files) become the :class:`ContainerFileError` naming both."""
    try:
        yield
    except ContainerFileError:
        raise
    except OSError as exc:
        if exc.errno is None or (only is not None and exc.errno not in only):
            raise
        raise file_error(container_id, path, exc.errno) from exc


def _pump(src: int, dst: int, limit: int | None = None) -> int:
    """Copy ``src`` to ``dst`` from their offsets to the end, in chunks; bytes copied.
    With a ``limit``, ``OSError(EFBIG)`` once there is more than that to copy."""
    total = 0

    def chunk() -> int:
        if limit is None:
            return CHUNK
        if total > limit:
            raise OSError(errno.EFBIG, f"more than the {limit} bytes allowed")
        return min(CHUNK, limit - total + 1)  # (one byte past it tells there is more)

    try:
        while n := os.copy_file_range(src, dst, chunk()):
            total += n
        chunk()
        return total
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    try:
        while n := os.sendfile(dst, src, None, chunk()):
            total += n
        chunk()
        return total
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
    buffer = bytearray(1024 * 1024)
    view = memoryview(buffer)
    while n := os.readv(src, [view[: min(len(buffer), chunk())]]):
        written = 0
        while written < n:
            written += os.write(dst, view[written:n])
        total += n
    chunk()
    return total


_O_HOST_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class _Session:
    """One connection to the gofer, for one verb (a tree copy makes many requests)."""

    def __init__(
        self, gofer: Gofer, conn: socket.socket, check_state: Callable[[], object]
    ) -> None:
        self.gofer = gofer
        self.conn = conn
        #: Raises :class:`InvalidStateError` once the container stopped
        #: (:class:`ContainerNotFoundError` once destroyed).
        self.check_state = check_state

    def call(self, request: FileRequest) -> tuple[FileReply, list[int]]:
        for text in (request.path, request.target or ""):
            problem = c_string_problem(text)
            if problem is not None:
                cid = self.gofer.container_id
                raise InvalidArgumentError(cid, f"a path in a container {problem}: {text!r}")
        try:
            reply, fds = self.gofer.ask(self.conn, request)
        except GoferError:  # (a destroy ends the gofer first: the container's state says)
            self.check_state()
            raise
        if not reply.ok:
            channel.close_fds(fds)
            cid = self.gofer.container_id
            if reply.no_root:  # its supervisor is gone: stopped, or its sandbox ending
                self.check_state()
                raise GoferError(cid, reply.error)
            if reply.errno:
                raise file_error(cid, request.path, reply.errno, reply.error)
            raise ContainerFileError(cid, request.path, errno.EIO, reply.error)
        return reply, fds

    def open_fd(self, path: str, flags: int, mode: int = 0o644) -> int:
        _, fds = self.call(FileRequest("open", path, flags=flags, mode=mode))
        if len(fds) != 1:
            channel.close_fds(fds)
            raise ContainerFileError(self.gofer.container_id, path, errno.EIO, "no fd came back")
        return fds[0]

    def stat(self, path: str, *, follow: bool = True) -> FileStat:
        reply, _ = self.call(FileRequest("stat", path, follow=follow))
        assert reply.stat is not None
        return reply.stat

    def is_dir(self, path: str) -> bool:
        try:
            return self.stat(path).is_dir
        except FileNotFoundError:
            return False

    def symlink(self, path: str, target: str) -> None:
        """Make ``path`` a symlink to ``target``; one already there is replaced (copies
        merge into what is there), anything else stays (``FileExistsError``)."""
        request = FileRequest("symlink", path, target=target)
        try:
            self.call(request)
        except FileExistsError:
            if not self.stat(path, follow=False).is_symlink:
                raise
            self.call(FileRequest("remove", path))
            self.call(request)

    def mkdir(
        self, path: str, mode: int, *, parents: bool, exist_ok: bool, parent_mode: int = 0o755
    ) -> None:
        request = FileRequest("mkdir", path, mode=mode, parents=parents, parent_mode=parent_mode)
        try:
            self.call(request)
        except FileExistsError:
            if not (exist_ok and self.is_dir(path)):
                raise


class ContainerFiles:
    """The files of a created, running or paused container (``container.files``).

    Verbs raise :class:`InvalidStateError` on a stopped container,
    :class:`GoferError` when its gofer is gone, and for a failed operation a
    :class:`ContainerFileError` that is also the matching builtin
    (``FileNotFoundError``, ``IsADirectoryError``, ``PermissionError``...),
    naming the container and the path.
    """

    def __init__(self, container: Container) -> None:
        self._container = container

    def __repr__(self) -> str:
        return f"ContainerFiles({self._container.id!r})"

    def _umask(self) -> int:
        """The umask of the container's process (``process.user.umask``; 022 unset)."""
        user = (self._container._record.spec.get("process") or {}).get("user") or {}
        umask = user.get("umask")
        return int(umask) if umask is not None else DEFAULT_UMASK

    @contextlib.contextmanager
    def _session(self) -> Iterator[_Session]:
        gofer = self._container._file_server()
        try:
            conn = gofer.connect()
        except GoferError:
            self._container._file_server()  # InvalidStateError if it stopped meanwhile
            raise
        try:
            yield _Session(gofer, conn, self._container._file_server)
        finally:
            conn.close()

    # -- single files ------------------------------------------------------------------

    @overload
    def open(
        self,
        path: ContainerPath,
        mode: _TextMode = "r",
        *,
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        permissions: int | None = None,
    ) -> TextIO: ...
    @overload
    def open(
        self,
        path: ContainerPath,
        mode: _BinaryMode,
        *,
        buffering: int = -1,
        encoding: None = None,
        errors: None = None,
        newline: None = None,
        permissions: int | None = None,
    ) -> BinaryIO: ...
    @overload
    def open(
        self,
        path: ContainerPath,
        mode: str,
        *,
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        permissions: int | None = None,
    ) -> IO[Any]: ...
    def open(
        self,
        path: ContainerPath,
        mode: str = "r",
        *,
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        permissions: int | None = None,
    ) -> IO[Any]:
        """Open a regular file of the container, as the builtin ``open`` does.

        ``mode`` is ``r``, ``w``, ``a`` or ``x`` with ``b``/``t`` and ``+``; a
        file it creates is the container user's, with ``permissions`` (exactly),
        else 0666 less the user's umask (``process.user.umask``, 022 if unset), as
        the container's own process would make it. Reading and writing go straight
        to the file (the gofer is not in the way), so streams of any size use little
        memory.
        """
        path = _container_path(path)
        with arguments_of(self._container.id):
            flags = _open_flags(mode)
        if permissions is None:
            permissions = 0o666 & ~self._umask()
        _check_bits(self._container.id, "permissions", permissions)
        with self._session() as session:
            fd = session.open_fd(path, flags, permissions)
        try:
            return open(fd, mode, buffering, encoding, errors, newline)
        except BaseException:
            os.close(fd)
            raise

    def read_bytes(self, path: ContainerPath) -> bytes:
        """The whole content of a file."""
        path = _container_path(path)
        with self.open(path, "rb") as f:
            data: bytes = f.read()
        return data

    def read_text(
        self, path: ContainerPath, encoding: str | None = None, errors: str | None = None
    ) -> str:
        """A file's content as text (as :meth:`pathlib.Path.read_text`)."""
        path = _container_path(path)
        with self.open(path, "r", encoding=encoding, errors=errors) as f:
            text: str = f.read()
        return text

    def write_bytes(
        self, path: ContainerPath, data: bytes, *, permissions: int | None = None
    ) -> int:
        """Replace a file's content with ``data`` (creating it, as :meth:`open` does);
        bytes written."""
        path = _container_path(path)
        with (
            _written(self._container.id, path),
            self.open(path, "wb", permissions=permissions) as f,
        ):
            return f.write(data)

    def write_text(
        self,
        path: ContainerPath,
        data: str,
        encoding: str | None = None,
        errors: str | None = None,
        *,
        permissions: int | None = None,
    ) -> int:
        """Replace a file's content with ``data`` as text (creating it, as :meth:`open`
        does); characters written."""
        path = _container_path(path)
        with (
            _written(self._container.id, path),
            self.open(path, "w", encoding=encoding, errors=errors, permissions=permissions) as f,
        ):
            return f.write(data)

    # -- directories and metadata ------------------------------------------------------

    def stat(self, path: ContainerPath, *, follow_symlinks: bool = True) -> FileStat:
        """What ``stat`` says of ``path``, its owner as the container sees it (through
        its user namespace, if it has one of its own)."""
        path = _container_path(path)
        with self._session() as session:
            found = session.stat(path, follow=follow_symlinks)
        owners = self._container._owners_inside()
        if owners is None:
            return found
        uid, gid = owners(found.uid, found.gid)
        return dataclasses.replace(found, uid=uid, gid=gid)

    def exists(self, path: ContainerPath) -> bool:
        """Whether ``path`` names a file (``False`` where ``Path.exists`` says so: nothing
        there, a file in the way of a directory, a symlink loop)."""
        path = _container_path(path)
        try:
            self.stat(path)
        except ContainerFileError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return False
            raise
        return True

    def listdir(self, path: ContainerPath = "/") -> list[str]:
        """The names in a directory, sorted."""
        path = _container_path(path)
        with self._session() as session:
            reply, _ = session.call(FileRequest("listdir", path))
            return reply.names

    def mkdir(
        self,
        path: ContainerPath,
        mode: int | None = None,
        *,
        parents: bool = False,
        exist_ok: bool = False,
    ) -> None:
        """Make a directory, the container user's, with ``mode`` (exactly), else 0777
        less the user's umask (as :meth:`open`); with ``parents`` its missing parents too
        (and then an existing directory is fine, as with ``mkdir -p``)."""
        path = _container_path(path)
        created = 0o777 & ~self._umask()  # (what mkdir -p gives the parents it makes)
        mode = created if mode is None else mode
        _check_bits(self._container.id, "mode", mode)
        with self._session() as session:
            session.mkdir(
                path, mode, parents=parents, exist_ok=exist_ok or parents, parent_mode=created
            )

    def remove(self, path: ContainerPath, *, recursive: bool = False) -> None:
        """Remove a file, symlink or empty directory; with ``recursive`` a whole tree.

        A symlink is removed itself, never what it points to.
        """
        path = _container_path(path)
        with self._session() as session:
            session.call(FileRequest("remove", path, recursive=recursive))

    def symlink(self, path: ContainerPath, target: ContainerPath) -> None:
        """Make ``path`` a symlink to ``target`` (as the container will read it)."""
        path = _container_path(path)
        target = _container_path(target)
        with self._session() as session:
            session.call(FileRequest("symlink", path, target=target))

    def walk(self, path: ContainerPath) -> list[WalkEntry]:
        """Every entry below a directory, parents first; symlinks are not followed."""
        path = _container_path(path)
        with self._session() as session:
            reply, _ = session.call(FileRequest("walk", path))
            return reply.entries

    # -- copies between the host and the container -----------------------------------

    def copy_in(self, host_src: HostPath, dst: ContainerPath) -> None:
        """Copy a host file or directory tree into the container at ``dst``.

        A file goes to ``dst``, or into it if ``dst`` is a directory; a tree's
        content goes beneath ``dst`` (made if missing, merged if present).
        Permission bits are kept, owners become the container's user, host
        symlinks are copied as symlinks. Below ``host_src`` the tree is walked
        through fds: a symlink is never followed and nothing but a regular file is
        read, however the host tree changes meanwhile.
        """
        dst = _container_path(dst)
        src = os.fspath(host_src)
        st = os.stat(src)
        with self._session() as session:
            if not stat.S_ISDIR(st.st_mode):
                if not stat.S_ISREG(st.st_mode):  # (a FIFO or a device: never read)
                    raise OSError(errno.EINVAL, "not a regular file or a directory", src)
                if session.is_dir(dst):
                    dst = posixpath.join(dst, os.path.basename(src))
                self._file_in(session, os.open(src, _HOST_FILE & ~os.O_NOFOLLOW), dst)
                return
            parents_mode = 0o777 & ~self._umask()
            mode = stat.S_IMODE(st.st_mode) & 0o777
            session.mkdir(dst, mode, parents=True, exist_ok=True, parent_mode=parents_mode)
            made = session.stat(dst)
            todo = [(dst, os.open(src, _HOST_DIR & ~os.O_NOFOLLOW))]
            try:
                while todo:
                    base, fd = todo.pop()
                    try:
                        here = os.fstat(fd)
                        if (here.st_dev, here.st_ino) == (made.dev, made.ino):
                            # (The rootfs is a host tree: a copy of it beneath itself
                            # would grow as it is walked, for ever.)
                            raise file_error(
                                self._container.id,
                                src,
                                errno.EINVAL,
                                f"cannot copy a directory into itself: {dst} is beneath {src}",
                            )
                        self._directory_in(session, fd, base, todo)
                    finally:
                        os.close(fd)
            finally:
                channel.close_fds([fd for _, fd in todo])

    def _directory_in(
        self, session: _Session, fd: int, base: str, todo: list[tuple[str, int]]
    ) -> None:
        """Copy the entries of host directory ``fd`` to ``base``; its subdirectories are
        made and put on ``todo`` (opened) for their own entries."""
        with os.scandir(fd) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            target = posixpath.join(base, name)
            try:
                st = os.lstat(name, dir_fd=fd)
                if stat.S_ISLNK(st.st_mode):
                    session.symlink(target, os.readlink(name, dir_fd=fd))
                elif stat.S_ISDIR(st.st_mode):
                    sub = os.open(name, _HOST_DIR, dir_fd=fd)
                    todo.append((target, sub))
                    session.mkdir(target, stat.S_IMODE(st.st_mode), parents=False, exist_ok=True)
                elif stat.S_ISREG(st.st_mode):
                    self._file_in(session, os.open(name, _HOST_FILE, dir_fd=fd), target)
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise  # (what vanished or changed kind meanwhile is skipped, as os.walk)

    @staticmethod
    def _file_in(session: _Session, source: int, dst: str) -> None:
        """Copy host file ``source`` (an fd, closed here) to ``dst``, if it is a regular
        file (a FIFO or device swapped in is never read)."""
        try:
            st = os.fstat(source)
            if not stat.S_ISREG(st.st_mode):
                return
            os.set_blocking(source, True)
            flags = os.O_WRONLY | os.O_CREAT  # (truncated once known not to be the source)
            out = session.open_fd(dst, flags, stat.S_IMODE(st.st_mode) & 0o777)
            try:
                there = os.fstat(out)
                if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
                    cid = session.gofer.container_id
                    raise file_error(cid, dst, errno.EINVAL, f"{dst} is the file copied in")
                os.ftruncate(out, 0)
                with _written(session.gofer.container_id, dst, only=_FULL):
                    _pump(source, out)
            finally:
                os.close(out)
        finally:
            os.close(source)

    def copy_out(
        self, src: ContainerPath, host_dst: HostPath, *, max_bytes: int | None = None
    ) -> None:
        """Copy a container file or directory tree to ``host_dst`` on the host.

        A file goes to ``host_dst``, or into it if that is a directory; a
        tree's content goes beneath ``host_dst`` (made if missing). Symlinks
        are copied as symlinks and never followed on the host: every host
        directory is opened with ``O_NOFOLLOW`` from ``host_dst`` down, and
        files are created with ``O_NOFOLLOW``. Devices, fifos and sockets are
        skipped.

        ``max_bytes`` bounds the data copied, over all files (the container's
        files may be larger than its owner should let onto the host: a sparse
        file of a terabyte is cheap to make): past it, the file being copied
        is removed and a :class:`ContainerFileError` (``EFBIG``) raised; the
        files copied before it stay.
        """
        src = _container_path(src)
        check_max_bytes(self._container.id, max_bytes)
        dst = os.fspath(host_dst)
        budget = _Budget(max_bytes)
        with self._session() as session:
            st = session.stat(src)
            if not st.is_dir:
                if os.path.isdir(dst):
                    dst = os.path.join(dst, posixpath.basename(posixpath.normpath("/" + src)))
                parent, name = os.path.split(os.path.abspath(dst))
                parent_fd = os.open(parent, _O_HOST_DIR)
                try:
                    self._file_out(session, src, parent_fd, name, st.mode, budget=budget)
                finally:
                    os.close(parent_fd)
                return
            with contextlib.suppress(FileExistsError):
                os.mkdir(dst, st.permissions & 0o777)
            reply, _ = session.call(FileRequest("walk", src))
            top = os.open(dst, _O_HOST_DIR)
            try:
                links: list[WalkEntry] = []
                for entry in reply.entries:
                    if entry.type == "symlink":
                        links.append(entry)  # last: nothing is ever written through one
                        continue
                    parent_fd, name = _host_parent(top, entry.path)
                    try:
                        if entry.type == "dir":
                            with contextlib.suppress(FileExistsError):
                                os.mkdir(name, stat.S_IMODE(entry.mode) & 0o777, dir_fd=parent_fd)
                        elif entry.type == "file":
                            path = posixpath.join(src, entry.path)
                            self._file_out(
                                session, path, parent_fd, name, entry.mode, budget=budget
                            )
                    finally:
                        os.close(parent_fd)
                for entry in links:
                    parent_fd, name = _host_parent(top, entry.path)
                    try:
                        _replace_symlink(entry.target, name, parent_fd)
                    finally:
                        os.close(parent_fd)
            finally:
                os.close(top)

    @staticmethod
    def _file_out(
        session: _Session, src: str, parent_fd: int, name: str, mode: int, *, budget: _Budget
    ) -> None:
        source = session.open_fd(src, os.O_RDONLY)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            out = os.open(name, flags, stat.S_IMODE(mode) & 0o777, dir_fd=parent_fd)
            try:
                budget.spend(_pump(source, out, budget.left))
            except OSError as exc:
                if exc.errno != errno.EFBIG:
                    raise
                os.unlink(name, dir_fd=parent_fd)  # (ours: made above, without following)
                reason = f"copy_out stopped past max_bytes ({budget.limit})"
                raise file_error(session.gofer.container_id, src, errno.EFBIG, reason) from None
            finally:
                os.close(out)
        finally:
            os.close(source)


class _Budget:
    """How many bytes :meth:`ContainerFiles.copy_out` may still copy (None: no bound)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, copied: int) -> None:
        if self.left is not None:
            self.left -= copied


def _host_parent(top: int, rel: str) -> tuple[int, str]:
    """An fd on the host directory that holds ``rel`` beneath ``top``, opened one
    component at a time with ``O_NOFOLLOW``, and the last component's name."""
    *dirs, name = rel.split("/")
    fd = os.dup(top)
    try:
        for part in dirs:
            if part in ("", ".", ".."):
                raise OSError(errno.EINVAL, "unexpected path component", rel)
            nxt = os.open(part, _O_HOST_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    if name in ("", ".", ".."):
        os.close(fd)
        raise OSError(errno.EINVAL, "unexpected path component", rel)
    return fd, name
