"""Building a container's root filesystem inside its own mount namespace.

Runs in the container's init, after it entered a fresh mount namespace whose
mounts are all private, so nothing here can reach the host's mount table.
Paths inside the rootfs are resolved beneath it: a symlink in a (possibly
hostile) bundle never leads a mount or a write outside. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable

from sandboxrt._core import abi
from sandboxrt._core.protocol import DevicePlan, MountPlan
from sandboxrt._os import syscalls

__all__ = [
    "DEFAULT_DEVICES",
    "bind_rootfs",
    "create_devices",
    "default_dev_symlinks",
    "make_mount",
    "mask_paths",
    "pivot_into",
    "readonly_paths",
    "remount_root_readonly",
    "resolve_in_root",
]

_MAX_SYMLINKS = 255

#: The device nodes every container gets (OCI "default devices").
DEFAULT_DEVICES = (
    DevicePlan("/dev/null", "c", 1, 3),
    DevicePlan("/dev/zero", "c", 1, 5),
    DevicePlan("/dev/full", "c", 1, 7),
    DevicePlan("/dev/random", "c", 1, 8),
    DevicePlan("/dev/urandom", "c", 1, 9),
    DevicePlan("/dev/tty", "c", 5, 0),
)

# statvfs f_flag bits that a bind remount must keep (they match the MS_ bits).
_LOCKED_FLAGS = (
    abi.MS_RDONLY
    | abi.MS_NOSUID
    | abi.MS_NODEV
    | abi.MS_NOEXEC
    | abi.MS_NOATIME
    | abi.MS_NODIRATIME
    | abi.MS_RELATIME
)


def resolve_in_root(root: str, path: str) -> str:
    """The host path of ``path`` as seen from a container whose root is ``root``.

    Every symlink met on the way is followed as the container would follow it
    (absolute targets restart at ``root``), and ``..`` never climbs above
    ``root``. Components that do not exist yet are kept as they are.
    """
    root = os.path.realpath(root)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"too many symlinks resolving {path}", path)
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return os.path.join(root, *resolved)


def _ensure_target(target: str, *, directory: bool, root: str) -> None:
    """Create the mount point ``target`` (a directory or an empty file)."""
    if os.path.lexists(target):
        return
    parent = os.path.dirname(target)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    if resolve_in_root(root, parent[len(root) :] or "/") != parent:
        raise OSError(errno.EXDEV, f"mount point parent escaped the rootfs: {parent}", parent)
    if directory:
        os.mkdir(target, 0o755)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644))


def _kept_flags(path: str) -> int:
    return os.statvfs(path).f_flag & _LOCKED_FLAGS


def _bind(source: str, target: str, flags: int) -> None:
    """Bind ``source`` on ``target``, then apply the other flags with a remount."""
    syscalls.mount(source, target, None, abi.MS_BIND | (flags & abi.MS_REC))
    extra = flags & ~(abi.MS_BIND | abi.MS_REC | abi.MS_REMOUNT)
    if extra:
        syscalls.mount(
            None, target, None, abi.MS_REMOUNT | abi.MS_BIND | extra | _kept_flags(target)
        )


def make_mount(root: str, plan: MountPlan) -> None:
    """Perform one spec mount beneath ``root``."""
    target = resolve_in_root(root, plan.destination)
    if plan.bind:
        source_is_dir = os.path.isdir(plan.source)
        if not os.path.exists(plan.source):
            raise FileNotFoundError(
                errno.ENOENT, f"bind source of {plan.destination} does not exist", plan.source
            )
        _ensure_target(target, directory=source_is_dir, root=root)
        _bind(plan.source, target, plan.flags)
    elif plan.type == "cgroup":
        # A read-only placeholder: the container sees no host cgroup tree.
        _ensure_target(target, directory=True, root=root)
        syscalls.mount("tmpfs", target, "tmpfs", plan.flags | abi.MS_RDONLY, "mode=755,size=4k")
    else:
        _ensure_target(target, directory=True, root=root)
        syscalls.mount(plan.source or plan.type, target, plan.type, plan.flags, plan.data or None)
    for propagation in plan.propagation:
        syscalls.mount(None, target, None, propagation)


def bind_rootfs(rootfs: str) -> None:
    """Make ``rootfs`` a mount point of its own (``pivot_root`` needs one)."""
    syscalls.mount(rootfs, rootfs, None, abi.MS_BIND | abi.MS_REC)


def create_devices(root: str, devices: Iterable[DevicePlan]) -> None:
    """Create device nodes beneath ``root``; bind the host's node where mknod is denied."""
    kinds = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    for dev in devices:
        target = resolve_in_root(root, dev.path)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        try:
            os.mknod(
                target, kinds[dev.type] | (dev.mode & 0o7777), os.makedev(dev.major, dev.minor)
            )
            os.chmod(target, dev.mode & 0o7777)  # mknod's mode went through the umask
            os.chown(target, dev.uid, dev.gid)
        except PermissionError:
            _ensure_target(target, directory=False, root=root)
            syscalls.mount(dev.path, target, None, abi.MS_BIND)


def default_dev_symlinks(root: str, *, has_devpts: bool) -> None:
    """The /dev symlinks every container gets (/dev/fd, stdio, ptmx)."""
    links = [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ]
    if os.path.exists("/proc/kcore"):
        links.append(("/proc/kcore", "/dev/core"))
    if has_devpts:
        links.append(("pts/ptmx", "/dev/ptmx"))
    for source, link in links:
        target = resolve_in_root(root, link)
        if os.path.lexists(target):
            if link != "/dev/ptmx":
                continue
            os.unlink(target)
        os.symlink(source, target)


def pivot_into(rootfs: str) -> None:
    """Make ``rootfs`` the root and detach the old one."""
    os.chdir(rootfs)
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", abi.MNT_DETACH)
    os.chdir("/")


def remount_root_readonly() -> None:
    """Make ``/`` read-only (after :func:`pivot_into`)."""
    syscalls.mount(None, "/", None, abi.MS_REMOUNT | abi.MS_BIND | abi.MS_RDONLY | _kept_flags("/"))


def mask_paths(paths: Iterable[str]) -> None:
    """Hide ``paths`` (after pivot): /dev/null over files, an empty read-only tmpfs over dirs."""
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            syscalls.mount("tmpfs", path, "tmpfs", abi.MS_RDONLY, "size=0,mode=755")
        elif not stat.S_ISLNK(st.st_mode):
            syscalls.mount("/dev/null", path, None, abi.MS_BIND)


def readonly_paths(paths: Iterable[str]) -> None:
    """Make ``paths`` read-only (after pivot) with a recursive bind and a remount."""
    for path in paths:
        try:
            if os.path.islink(path):
                continue
            _bind(path, path, abi.MS_REC | abi.MS_RDONLY | abi.MS_NOSUID | abi.MS_NODEV)
        except FileNotFoundError:
            continue
