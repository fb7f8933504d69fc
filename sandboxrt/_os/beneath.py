"""Paths of a container resolved beneath its root, one component at a time.

A bundle's rootfs may be hostile: it may hold symlinks to host paths
(``proc -> /``, ``data -> /etc``), a fake ``/dev/null`` (a regular file, or a
symlink into ``/proc``), and the supervisor's ``/proc/1/root`` is a magic link
to the host's root. So no path of the container is ever handed to the kernel
to resolve. Instead :func:`walk` opens it one component at a time from an fd
on the root, with ``O_PATH | O_NOFOLLOW``; a symlink is read and resolved as
the container would see it (absolute targets restart at the root, ``..`` never
climbs above it), so magic links are never followed. What is opened is then
used through the fd itself (``/proc/self/fd/N``, through an fd on the init's own
``/proc/self/fd`` opened while the host's /proc was still there: :func:`fd_dir`),
so swapping a path component between the check and its use cannot redirect it.
:func:`check_beneath` and :func:`check_reaches_root` check that an opened fd is
beneath the rootfs. :mod:`sandboxrt._os.mounts` builds the root with these.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import Iterator
from typing import Literal

from sandboxrt._core import abi
from sandboxrt._os import syscalls

__all__ = [
    "KERNEL_FILESYSTEMS",
    "O_DIR",
    "O_PATH",
    "UnsafePathError",
    "chdir_beneath_root",
    "check_beneath",
    "check_file_beneath",
    "check_reaches_root",
    "create_beneath",
    "exists_beneath",
    "fd_dir",
    "fd_path",
    "in_fd_table",
    "link_text",
    "make_dir_beneath_root",
    "mount_id_beneath",
    "mount_id_of",
    "open_beneath",
    "open_fd_table",
    "open_root",
    "opened_beneath",
    "path_components",
    "read_beneath_root",
    "reopen",
    "resolve_beneath_root",
    "same_file",
    "unsafe_path",
    "walk",
]

_MAX_SYMLINKS = 255


O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


#: (pid, fd) of an ``O_PATH`` fd on ``/proc/<pid>/fd``, opened before ``pivot_root``.
_fd_table: tuple[int, int] | None = None


class UnsafePathError(OSError):
    """A path of the rootfs would lead a mount outside it, or onto the wrong file."""


def unsafe_path(message: str, path: str) -> UnsafePathError:
    return UnsafePathError(errno.EXDEV, message, path)


def path_components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def walk(
    root_fd: int,
    path: str,
    *,
    create: Literal["dir", "file"] | None = None,
    follow: bool = True,
) -> tuple[int, str]:
    """Open ``path`` beneath ``root_fd`` as the container would resolve it.

    Returns an ``O_PATH`` fd (the caller closes it) and the resolved path
    relative to the root, with no symlink left in it. Each component is opened
    with ``O_NOFOLLOW`` relative to its parent's fd; symlinks are read and
    resolved against the root (a magic link of /proc is never followed, only
    its text is), and ``..`` pops back to the parent fd, never above the root.
    With ``create``, missing components are created: directories, and the last
    one as ``create`` says. With ``follow=False`` a symlink as the last
    component is opened itself.
    """
    parts = path_components(path)
    stack: list[tuple[str, int]] = []
    links = 0
    try:
        while parts:
            part = parts.pop(0)
            if part == "..":
                if stack:
                    os.close(stack.pop()[1])
                continue
            parent = stack[-1][1] if stack else root_fd
            last = not parts
            try:
                fd = os.open(part, O_PATH, dir_fd=parent)
            except FileNotFoundError:
                if create is None:
                    raise
                create_beneath(parent, part, directory=not last or create == "dir")
                fd = os.open(part, O_PATH, dir_fd=parent)
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode) and (follow or not last):
                try:
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, f"too many symlinks resolving {path}", path)
                if target.startswith("/"):
                    while stack:
                        os.close(stack.pop()[1])
                parts = path_components(target) + parts
                continue
            stack.append((part, fd))
            if not last and not stat.S_ISDIR(mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        resolved = "/" + "/".join(name for name, _ in stack)
        fd = stack.pop()[1] if stack else os.dup(root_fd)
        return fd, resolved
    finally:
        for _, fd in stack:
            os.close(fd)


#: Whether this kernel has ``openat2(2)`` (cleared at the first ``ENOSYS``).
_have_openat2 = True


_RESOLVE = abi.RESOLVE_IN_ROOT | abi.RESOLVE_NO_MAGICLINKS


def open_beneath(root_fd: int, path: str, *, follow: bool = True) -> int:
    """An ``O_PATH`` fd on ``path`` resolved beneath ``root_fd`` as the container sees it.

    ``openat2`` with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` (retried on
    ``EAGAIN``, which a racing rename causes); where the kernel lacks it, the
    component walk :func:`walk`. Absolute symlinks and ``..`` stay beneath
    the root; magic links are refused (``ELOOP``) or never followed. With
    ``follow=False`` a symlink as the last component is opened itself.
    """
    global _have_openat2
    if _have_openat2:
        flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        for _ in range(64):
            try:
                return syscalls.openat2(root_fd, path, flags, 0, _RESOLVE)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise OSError(exc.errno, os.strerror(exc.errno or 0), path) from None
                _have_openat2 = False
                break
        else:
            raise OSError(errno.EAGAIN, "the path kept changing while it was resolved", path)
    fd, _ = walk(root_fd, path, follow=follow)
    return fd


def create_beneath(parent: int, name: str, *, directory: bool) -> None:
    with contextlib.suppress(FileExistsError):  # lost a race: the open that follows decides
        if directory:
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(name, flags, 0o644, dir_fd=parent))


def open_root(root: str) -> int:
    return os.open(root, O_DIR)


def fd_dir() -> int:
    """An ``O_PATH`` fd on this process's ``/proc/self/fd``.

    Opened on first use, which is before ``pivot_root`` (:func:`bind_rootfs`
    and :func:`pivot_into` make sure of it), so it is the host's procfs and not
    whatever the rootfs has at ``/proc``; it stays usable after the old root is
    detached. ``self``, not our pid: that procfs may be of a parent PID
    namespace, where our pid is another (a root built ahead in a warm sandbox).
    """
    global _fd_table
    pid = os.getpid()
    if _fd_table is None or _fd_table[0] != pid:
        fd = os.open("/proc/self/fd", O_DIR)
        if not os.path.samestat(os.stat(str(fd), dir_fd=fd), os.fstat(fd)):
            os.close(fd)
            raise unsafe_path("/proc is not this process's procfs", "/proc")
        _fd_table = (pid, fd)
    return _fd_table[1]


def reopen(fd: int, flags: int) -> int:
    """A new open file description of ``fd``'s file (an ``O_PATH`` fd, say) with ``flags``.

    Goes through this process's own ``/proc/<pid>/fd``, so it reopens exactly
    that inode, whatever its path names now.
    """
    return os.open(str(fd), flags | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=fd_dir())


def open_fd_table() -> None:
    """Open this process's ``/proc/<pid>/fd`` now, while ``/proc`` is still the runtime's
    (an exec'd process, before it enters the container's root), for the fd-based opens
    that follow (:func:`open_pty`, :func:`read_beneath_root`)."""
    fd_dir()


@contextlib.contextmanager
def in_fd_table() -> Iterator[None]:
    """Work in ``/proc/<pid>/fd``: there the name ``str(fd)`` is a magic link to ``fd``."""
    table = fd_dir()
    saved = os.open(".", O_DIR)
    try:
        os.fchdir(table)
        yield
    finally:
        os.fchdir(saved)
        os.close(saved)


def fd_path(fd: int) -> str:
    """Where ``fd`` is, as the kernel names it (``/proc/self/fd/N``'s link)."""
    return os.readlink(str(fd), dir_fd=fd_dir())


def check_beneath(fd: int, root: str, what: str) -> None:
    """Refuse a mount point that is not ``root`` or beneath it.

    Root ``/`` is the root a process entered (:func:`enter_tree`): there the
    fd's name says nothing (one renamed out of the root is named from the
    filesystem's root), so its ``..`` chain must reach the root instead.
    """
    if root == "/":
        check_reaches_root(fd, what)
        return
    where = fd_path(fd)
    if root not in ("/", where) and not where.startswith(root + "/"):
        raise unsafe_path(f"{what} resolves to {where}, outside the rootfs {root}", what)


def check_file_beneath(root_fd: int, fd: int, resolved: str, what: str) -> None:
    """:func:`check_reaches_root` for a file ``fd`` (no ``..`` from it), found at
    ``resolved``: its parent must reach the root, and hold ``fd``'s file under its name."""
    parent_path, name = posixpath.split(resolved)
    parent, _ = walk(root_fd, parent_path)
    try:
        check_reaches_root(parent, what)
        if not same_file(os.stat(name, dir_fd=parent, follow_symlinks=False), os.fstat(fd)):
            raise unsafe_path(f"{what} changed while it was being mounted", what)
    finally:
        os.close(parent)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_reaches_root(fd: int, what: str) -> None:
    """Refuse ``fd`` unless going up (``..``, across mounts) from it reaches ``/``, the
    root this process entered; the top of the mount namespace comes first otherwise."""
    root = os.stat("/")
    current = os.dup(fd)
    try:
        for _ in range(4096):
            st = os.fstat(current)
            if same_file(st, root):
                return
            parent = os.open("..", O_DIR, dir_fd=current)
            os.close(current)
            current = parent
            if same_file(os.fstat(current), st):
                break  # the top: ".." is itself
    finally:
        os.close(current)
    raise unsafe_path(f"{what} is not beneath the container's root", what)


def link_text(parent: int, name: str) -> str | None:
    """What symlink ``name`` beneath ``parent`` says; None if it is not a symlink."""
    try:
        return os.readlink(name, dir_fd=parent)
    except OSError:
        return None


def exists_beneath(parent: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return False
    return True


def opened_beneath(root: str, path: str) -> int | None:
    """``path`` opened (``O_PATH``) beneath ``root`` as :func:`walk` resolves it; ``None``
    when it is missing."""
    root_fd = open_root(root)
    try:
        fd, _ = walk(root_fd, path)
    except FileNotFoundError:
        return None
    finally:
        os.close(root_fd)
    return fd


def mount_id_beneath(root: str, path: str) -> int | None:
    """The id of the mount ``path`` beneath ``root`` is on (resolved as the container
    would: through symlinks, inside the root); ``None`` when it is missing."""
    fd = opened_beneath(os.path.realpath(root), path)
    if fd is None:
        return None
    try:
        return mount_id_of(fd)
    finally:
        os.close(fd)


def mount_id_of(fd: int) -> int:
    """The id of the mount ``fd`` is on: ``statx``'s, else ``mnt_id`` of
    ``/proc/self/fdinfo`` (which a rootfs entered before pivot may not have)."""
    found = syscalls.mount_id(fd)
    if found is not None:
        return found
    with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
        for line in info:
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.ENOTSUP, "no mnt_id in /proc/self/fdinfo")


def resolve_beneath_root(path: str) -> str:
    """``path`` with its symlinks resolved beneath ``/`` (after pivot), never through /proc's
    magic links (``/proc/1/root`` is the supervisor's root: the host's). Raises if missing."""
    root_fd = open_root("/")
    try:
        fd, resolved = walk(root_fd, path)
    finally:
        os.close(root_fd)
    os.close(fd)
    return resolved


#: ``f_type`` of procfs and sysfs, whose "regular" files are the kernel's.
KERNEL_FILESYSTEMS = frozenset({abi.PROC_SUPER_MAGIC, abi.SYSFS_MAGIC})


def read_beneath_root(path: str, limit: int = 4 << 20) -> bytes | None:
    """The first ``limit`` bytes of the regular file ``path``, resolved beneath ``/`` (after
    pivot or chroot) as :func:`resolve_beneath_root` does; ``None`` when it is missing.

    Anything but a regular file (a FIFO that would block, a device) is refused, and so
    are the files of procfs and sysfs (``/etc/passwd -> /proc/kmsg`` would have a process
    that still holds the runtime's privileges wait for, and drain, the host's kernel log).
    """
    path_fd = opened_beneath("/", path)
    if path_fd is None:
        return None
    try:
        if not stat.S_ISREG(os.fstat(path_fd).st_mode):
            raise unsafe_path("is not a regular file", path)
        if syscalls.filesystem_type(path_fd) in KERNEL_FILESYSTEMS:
            raise unsafe_path("is a file of the kernel's (procfs, sysfs)", path)
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        fd = os.open(str(path_fd), flags, dir_fd=fd_dir())
    finally:
        os.close(path_fd)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def make_dir_beneath_root(path: str) -> None:
    """Make directory ``path`` (and its missing parents) beneath ``/`` (after pivot), as
    :func:`resolve_beneath_root` resolves it; nothing when it exists."""
    root_fd = open_root("/")
    try:
        fd, _ = walk(root_fd, path, create="dir")
    finally:
        os.close(root_fd)
    os.close(fd)


def chdir_beneath_root(path: str) -> None:
    """``chdir`` to ``path`` resolved beneath ``/`` (after pivot); ``FileNotFoundError``
    when it is missing (:func:`make_dir_beneath_root` makes an init's first).

    The search permissions are those of the process's credentials.
    """
    root_fd = open_root("/")
    try:
        fd, _ = walk(root_fd, path)
        try:
            os.fchdir(fd)
        finally:
            os.close(fd)
    except OSError as exc:  # (as runc words it)
        raise OSError(exc.errno, f"chdir to cwd {path!r}: {exc.strerror}") from None
    finally:
        os.close(root_fd)
