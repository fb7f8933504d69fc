"""An overlay's upper layer as an OCI image-layer tar stream (``Container.export_changes``).

The upper directory comes as an fd from the sandbox's supervisor: only the
container's mount namespace shows it at a path. It is walked from that fd
only downward: every entry is opened by its single name relative to its
parent's fd with ``O_NOFOLLOW`` (``..`` is never looked up, symlinks are read,
never followed), and checked to still be what ``lstat`` saw, so a container
that keeps changing its files cannot lead the walk elsewhere. File contents
stream in chunks: memory use does not grow with file sizes.

overlayfs records a deletion as a character device 0:0 and a directory that
replaces a lower one as ``trusted.overlay.opaque=y``; in the tar they become
the OCI whiteouts ``.wh.<name>`` and ``<dir>/.wh..wh..opq``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import SupportsRead

from sandboxrt._os import beneath

__all__ = [
    "OPAQUE_WHITEOUT",
    "WHITEOUT_PREFIX",
    "LayerTooLargeError",
    "UnrepresentableError",
    "write_layer",
]

#: The prefix of an OCI whiteout entry: ``dir/.wh.name`` deletes ``dir/name``.
WHITEOUT_PREFIX = ".wh."
#: The OCI entry that makes its directory opaque (hides the lower layers' entries).
OPAQUE_WHITEOUT = ".wh..wh..opq"

_CHUNK = 1 << 20
#: overlayfs's own attributes: ``trusted.`` ones, as the overlay is mounted without
#: ``userxattr``; a ``user.overlay.*`` attribute is the container's, kept as any other.
#: In a user namespace of the container's own it is mounted with ``userxattr``: then
#: the ``user.`` ones are overlayfs's (see :class:`_LayerTar`).
_OVERLAY_XATTRS = "trusted.overlay."
_OVERLAY_USER_XATTRS = "user.overlay."
#: A file is first opened as a path only (no device's or FIFO's open runs), checked, then
#: reopened for reading.
_O_FILE = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Exact:
    """Exactly ``size`` bytes of an open file, in chunks: zeros pad a file that shrank
    while it was read, and what it grew by is left out (the header is written first)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._left = size

    def read(self, n: int = _CHUNK) -> bytes:
        n = min(n, self._left)
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = os.read(self._fd, min(n - got, _CHUNK))
            if not chunk:
                parts.append(bytes(n - got))
                got = n
                break
            parts.append(chunk)
            got += len(chunk)
        self._left -= got
        return b"".join(parts)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, stat.S_IFMT(a.st_mode)) == (
        b.st_dev,
        b.st_ino,
        stat.S_IFMT(b.st_mode),
    )


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class UnrepresentableError(Exception):
    """The file at ``path`` (relative to the layer) has a name a layer cannot hold (one
    of a whiteout: ``.wh.``)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class LayerTooLargeError(Exception):
    """The file at ``path`` (relative to the layer) would take the layer past its bound."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class _LayerTar(tarfile.TarFile):
    """The tar stream of a layer: which attributes are overlayfs's (``overlay_xattrs``,
    their prefix), and the owners as the container sees them (``owners``: host ids to
    the container's, through its user namespace), and how many bytes of file content
    may still go in (``bytes_left``; ``None``: no bound)."""

    overlay_xattrs = _OVERLAY_XATTRS
    owners: Callable[[int, int], tuple[int, int]] | None = None
    bytes_left: int | None = None

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: SupportsRead[bytes] | None = None) -> None:
        if self.owners is not None:
            tarinfo.uid, tarinfo.gid = self.owners(tarinfo.uid, tarinfo.gid)
        super().addfile(tarinfo, fileobj)


def _is_opaque(tar: _LayerTar, fd: int) -> bool:
    with contextlib.suppress(OSError):
        return os.getxattr(fd, tar.overlay_xattrs + "opaque") == b"y"
    return False


def _xattrs(tar: _LayerTar, fd: int) -> dict[str, str]:
    """The file's extended attributes, overlayfs's own left out, as PAX records."""
    records: dict[str, str] = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return records
    for name in names:
        if name.startswith(tar.overlay_xattrs):
            continue
        with contextlib.suppress(OSError):
            value = os.getxattr(fd, name)
            records["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return records


def _info(path: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = st.st_mtime
    return info


def _whiteout(path: str, st: os.stat_result) -> tarfile.TarInfo:
    info = _info(path, st, tarfile.REGTYPE)
    info.mode = 0o644
    info.size = 0
    return info


def _entries(dir_fd: int) -> Iterator[tuple[str, os.stat_result]]:
    """The directory's entries, sorted by name, each with its ``lstat``."""
    for name in sorted(os.listdir(dir_fd)):
        try:
            yield name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:  # removed meanwhile
            continue


def _walk_dir(tar: _LayerTar, dir_fd: int, prefix: str, links: dict[tuple[int, int], str]) -> None:
    stack: list[tuple[int, str, Iterator[tuple[str, os.stat_result]]]] = [
        (dir_fd, prefix, _entries(dir_fd))
    ]
    try:
        while stack:
            fd, base, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                if fd != dir_fd:
                    os.close(fd)
                continue
            name, st = entry
            path = base + name
            if name.startswith(WHITEOUT_PREFIX) and not _is_whiteout(st):
                # A layer has no way to say it: applied, it would delete (or make opaque)
                # what the container still has (the OCI image spec names no escape).
                raise UnrepresentableError(path)
            if _is_whiteout(st):
                dirname, _, leaf = path.rpartition("/")
                where = dirname + "/" if dirname else ""
                tar.addfile(_whiteout(where + WHITEOUT_PREFIX + leaf, st))
            elif stat.S_ISDIR(st.st_mode):
                child = _open_checked(fd, name, st, _O_DIR)
                if child is None:
                    continue
                try:
                    info = _info(path, st, tarfile.DIRTYPE)
                    info.pax_headers = _xattrs(tar, child)
                    tar.addfile(info)
                    if _is_opaque(tar, child):
                        tar.addfile(_whiteout(path + "/" + OPAQUE_WHITEOUT, st))
                except BaseException:
                    os.close(child)
                    raise
                stack.append((child, path + "/", _entries(child)))
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(name, dir_fd=fd)
                except OSError:
                    continue
                info = _info(path, st, tarfile.SYMTYPE)
                info.linkname = target
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                _add_file(tar, fd, name, path=path, st=st, links=links)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                kind = (
                    tarfile.CHRTYPE
                    if stat.S_ISCHR(st.st_mode)
                    else tarfile.BLKTYPE
                    if stat.S_ISBLK(st.st_mode)
                    else tarfile.FIFOTYPE
                )
                info = _info(path, st, kind)
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)
            # Sockets have no tar form: left out.
    finally:
        for fd, _, _ in stack:
            if fd != dir_fd:
                os.close(fd)


def _open_checked(dir_fd: int, name: str, st: os.stat_result, flags: int) -> int | None:
    """Open ``name`` beneath ``dir_fd`` without following it; None if it is no longer
    the file ``st`` describes (replaced or removed meanwhile).

    A directory's open (``O_DIRECTORY``) fails on anything else before opening it;
    a regular file is opened as a path first (``_O_FILE``), and reopened for reading
    only once it is known to be that file: a device node or FIFO the container swaps
    in after our ``lstat`` is never opened from this (the host's) side.
    """
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            return None
        raise
    if not _same(os.fstat(fd), st):
        os.close(fd)
        return None
    if not flags & os.O_PATH:
        return fd
    try:
        return beneath.reopen(fd, os.O_RDONLY | os.O_NONBLOCK)
    finally:
        os.close(fd)


def _add_file(
    tar: _LayerTar,
    dir_fd: int,
    name: str,
    *,
    path: str,
    st: os.stat_result,
    links: dict[tuple[int, int], str],
) -> None:
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in links:
        info = _info(path, st, tarfile.LNKTYPE)
        info.linkname = links[key]
        tar.addfile(info)
        return
    fd = _open_checked(dir_fd, name, st, _O_FILE)
    if fd is None:
        return
    try:
        st = os.fstat(fd)
        if tar.bytes_left is not None:
            if st.st_size > tar.bytes_left:  # (a sparse file counts whole: so it is written)
                raise LayerTooLargeError(path)
            tar.bytes_left -= st.st_size
        info = _info(path, st, tarfile.REGTYPE)
        info.size = st.st_size
        info.pax_headers = _xattrs(tar, fd)
        tar.addfile(info, _Exact(fd, st.st_size))
    finally:
        os.close(fd)
    if st.st_nlink > 1:
        links[key] = path


def write_layer(
    upper_fd: int,
    dest: IO[bytes],
    *,
    owners: Callable[[int, int], tuple[int, int]] | None = None,
    max_bytes: int | None = None,
) -> None:
    """Write the tree under ``upper_fd`` to ``dest`` as an uncompressed tar stream (PAX).

    Entries are relative paths (``etc/passwd``), parents before children,
    siblings by name; the top directory itself is left out. Modes, numeric
    owners, mtimes, symlinks, hard links (within the layer), device nodes,
    FIFOs and extended attributes are kept; overlayfs's whiteouts become OCI
    whiteouts. ``owners``, for a container in a user namespace of its own (whose
    overlay keeps its own attributes as ``user.overlay.*``): host ids to the
    container's. :class:`LayerTooLargeError` before a file's content would take the
    file data written past ``max_bytes``.
    """
    # An open file description of our own: a received fd shares its read position
    # with the supervisor's and any other exporter's.
    top = os.open(".", _O_DIR, dir_fd=upper_fd)
    try:
        with _LayerTar.open(fileobj=dest, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            assert isinstance(tar, _LayerTar)
            if owners is not None:
                tar.owners, tar.overlay_xattrs = owners, _OVERLAY_USER_XATTRS
            tar.bytes_left = max_bytes
            _walk_dir(tar, top, "", {})
    finally:
        os.close(top)
