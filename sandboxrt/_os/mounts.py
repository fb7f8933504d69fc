"""Building a container's root filesystem inside its own mount namespace.

Runs in the container's init, after it entered a fresh mount namespace whose
mounts are all private, so nothing here can reach the host's mount table.
Standard library only.

A bundle's rootfs may be hostile: it may hold symlinks to host paths
(``proc -> /``, ``data -> /etc``), a fake ``/dev/null`` (a regular file, or a
symlink into ``/proc``), and the supervisor's ``/proc/1/root`` is a magic link
to the host's root. So no path of the container is ever handed to the kernel
to resolve: :mod:`sandboxrt._os.beneath` opens it one component at a time from
an fd on the root (:func:`~sandboxrt._os.beneath.walk`), as the container would
see it, following no magic link. Mounts then go onto the
opened fd itself (``/proc/self/fd/N``, through an fd on the init's own
``/proc/self/fd`` opened while the host's /proc was still there), so swapping
a path component between the check and the mount cannot redirect the mount
(CVE-2025-31133, CVE-2025-52565, CVE-2025-52881). Before ``pivot_root`` every
opened mount point is also checked to be beneath the rootfs by reading its
``/proc/self/fd`` link, or, in a rootfs entered as a detached mount
(:func:`enter_tree`: the host side opened it, no host path is resolved here),
by following its ``..`` chain up to that root.

Masked and read-only paths: one whose last component is a symlink is skipped
(mounting onto it would follow it, and whatever it names is not the path that
was asked for); the mask source, the container's ``/dev/null``, must be the
character device 1:3 before and after the bind, else creation fails.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import posixpath
import stat
from collections.abc import Collection, Iterable, Sequence
from typing import Literal

from sandboxrt._core import abi
from sandboxrt._core.protocol import DevicePlan, MountPlan
from sandboxrt._os import channel, syscalls
from sandboxrt._os.beneath import (
    O_DIR,
    O_PATH,
    check_beneath,
    check_file_beneath,
    create_beneath,
    exists_beneath,
    fd_dir,
    in_fd_table,
    link_text,
    mount_id_of,
    open_root,
    opened_beneath,
    same_file,
    unsafe_path,
    walk,
)
from sandboxrt.errors import MissingFeatureError

__all__ = [
    "DEFAULT_DEVICES",
    "CgroupPlacement",
    "bind_rootfs",
    "confine_to_proc",
    "create_devices",
    "default_dev_symlinks",
    "detach_old_root",
    "dev_kind",
    "enter_host_tree",
    "enter_tree",
    "fill_cgroup_mount",
    "in_user_namespace",
    "leave_tree",
    "make_mount",
    "mask_paths",
    "minimal_root",
    "open_host_tree",
    "open_host_trees",
    "open_pty",
    "overlay_root",
    "overlay_tree",
    "pivot_into",
    "pivot_into_fd",
    "readonly_paths",
    "remount_root_readonly",
    "show_at",
]

_NULL_RDEV = os.makedev(1, 3)

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


def _fd_mount(
    source: str | int | None,
    target_fd: int,
    fstype: str | None,
    flags: int,
    data: str | None = None,
    *,
    what: str,
) -> None:
    """``mount(2)`` onto the file ``target_fd`` (and from ``source`` when it is an fd)."""
    src = str(source) if isinstance(source, int) else source
    try:
        with in_fd_table():
            syscalls.mount(src, str(target_fd), fstype, flags, data)
    except OSError as exc:
        raise OSError(exc.errno, f"mount on {what}: {os.strerror(exc.errno or 0)}") from None


def _kept_flags(fd: int) -> int:
    return os.statvfs(fd).f_flag & _LOCKED_FLAGS


def _bind_fds(
    source_fd: int, target_fd: int, root_fd: int, path: str, flags: int, *, follow: bool
) -> None:
    """Bind ``source_fd`` onto ``target_fd`` (``path`` beneath ``root_fd``), then remount.

    After the bind, ``path`` is walked again for the new mount's root, which must
    be ``source_fd``'s file; the remount with the other flags goes onto that fd.
    """
    _fd_mount(source_fd, target_fd, None, abi.MS_BIND | (flags & abi.MS_REC), what=path)
    _check_bound(source_fd, root_fd, path, flags, follow=follow)


def _check_bound(source_fd: int, root_fd: int, path: str, flags: int, *, follow: bool) -> None:
    """After a bind of ``source_fd`` onto ``path``: the mount there must be that file; then
    remount it with ``flags``' other flags."""
    mounted, _ = walk(root_fd, path, follow=follow)
    try:
        if not same_file(os.fstat(mounted), os.fstat(source_fd)):
            raise unsafe_path(f"{path} changed while it was being mounted", path)
        extra = flags & ~(abi.MS_BIND | abi.MS_REC | abi.MS_REMOUNT)
        if extra:
            flags = abi.MS_REMOUNT | abi.MS_BIND | extra | _kept_flags(mounted)
            _fd_mount(None, mounted, None, flags, what=path)
    finally:
        os.close(mounted)


# -- before pivot_root: spec mounts, devices ------------------------------------------------


#: What a bind mount may cover inside ``/proc``, as with runc: the files lxcfs emulates.
_BINDABLE_IN_PROC = frozenset(
    f"/proc/{name}"
    for name in (
        "cpuinfo",
        "diskstats",
        "meminfo",
        "stat",
        "swaps",
        "uptime",
        "loadavg",
        "slabinfo",
        "net/dev",
        "sys/kernel/ns_last_pid",
    )
)


def _mount_point(
    root_fd: int, root: str, plan: MountPlan, *, directory: bool, source: int | None = None
) -> int:
    """Create and open the mount point of ``plan`` beneath the root; check where it is
    (and, for a bind over ``/proc``, that its ``source`` is a procfs)."""
    if plan.type in ("proc", "sysfs") and not plan.bind:
        # As runc: never mount these through a symlink (``proc -> /``).
        with contextlib.suppress(FileNotFoundError):
            fd, _ = walk(root_fd, plan.destination, follow=False)
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    raise unsafe_path(
                        f"{plan.type} must be mounted on an ordinary directory,"
                        f" {plan.destination} is not one",
                        plan.destination,
                    )
            finally:
                os.close(fd)
    try:
        fd, resolved = walk(root_fd, plan.destination, create="dir" if directory else "file")
    except PermissionError as err:  # (the root of a user namespace, in a rootfs not its own)
        raise PermissionError(
            err.errno,
            f"making the mount point {plan.destination}: {err.strerror} (have the rootfs "
            "hold it, or belong to the container's root)",
            plan.destination,
        ) from None
    try:
        if resolved == "/":
            raise unsafe_path(f"mount destination {plan.destination} is the root itself", root)
        if (
            plan.bind
            and resolved not in _BINDABLE_IN_PROC
            and (
                resolved.startswith("/proc/")
                or (resolved != "/proc" and syscalls.filesystem_type(fd) == abi.PROC_SUPER_MAGIC)
            )
        ):
            # (What the runtime writes there, sysctls and oomScoreAdj, would go to it.)
            raise unsafe_path(
                f"mount destination {plan.destination} is inside /proc ({resolved}):"
                " only the files lxcfs emulates may be bound there",
                plan.destination,
            )
        if (
            plan.bind
            and resolved == "/proc"
            and source is not None
            and syscalls.filesystem_type(source) != abi.PROC_SUPER_MAGIC
        ):
            raise unsafe_path(
                f"mount destination {plan.destination} is /proc: only a procfs may be bound"
                " there, as with runc",
                plan.destination,
            )
        if root == "/" and not stat.S_ISDIR(os.fstat(fd).st_mode):
            check_file_beneath(root_fd, fd, resolved, plan.destination)
        else:
            check_beneath(fd, root, plan.destination)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _attach_tree(tree: int, root_fd: int, root: str, plan: MountPlan) -> None:
    """Attach the detached mount ``tree`` (``open_tree``) at ``plan.destination``, opened
    beneath the root, then check it and apply the plan's flags."""
    directory = stat.S_ISDIR(os.fstat(tree).st_mode)
    target_fd = _mount_point(root_fd, root, plan, directory=directory, source=tree)
    try:
        try:
            syscalls.move_mount(tree, target_fd)
        except OSError as exc:
            raise OSError(exc.errno, f"mount on {plan.destination}: {exc.strerror}") from None
        # A copy of a shared host mount is its peer: before anything is mounted beneath
        # it, it is made private, or a slave when the plan asks for propagation (slave or
        # shared: the host's mounts reach it, nothing goes back; shared then makes it a
        # peer group of its own, shared and slave, as runc has it). The plan's own
        # propagation steps come after.
        wanted = any(step & (abi.MS_SLAVE | abi.MS_SHARED) for step in plan.propagation)
        first = abi.MS_SLAVE if wanted else abi.MS_PRIVATE
        _fd_mount(None, tree, None, abi.MS_REC | first, what=plan.destination)
        _check_bound(tree, root_fd, plan.destination, plan.flags, follow=True)
    finally:
        os.close(target_fd)


def make_mount(root: str, plan: MountPlan, tree: int | None = None) -> None:
    """Perform one spec mount beneath ``root`` (before ``pivot_root``).

    ``tree``: the bind source as a detached mount (``open_tree``), attached
    with ``move_mount`` instead of a bind of ``plan.source`` by path.
    """
    root = os.path.realpath(root)
    root_fd = open_root(root)
    try:
        if plan.bind and tree is not None:
            _attach_tree(tree, root_fd, root, plan)
        elif plan.bind:
            try:
                source_fd = os.open(plan.source, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                raise FileNotFoundError(
                    errno.ENOENT, f"bind source of {plan.destination} does not exist", plan.source
                ) from None
            try:
                directory = stat.S_ISDIR(os.fstat(source_fd).st_mode)
                target_fd = _mount_point(root_fd, root, plan, directory=directory, source=source_fd)
                try:
                    _bind_fds(
                        source_fd, target_fd, root_fd, plan.destination, plan.flags, follow=True
                    )
                finally:
                    os.close(target_fd)
            finally:
                os.close(source_fd)
        else:
            if plan.type == "cgroup":
                # A tmpfs that fill_cgroup_mount fills once the container is in its cgroups
                # (and makes read-only as the plan says): never the host's tree.
                flags, source, fstype = plan.flags & ~abi.MS_RDONLY, "tmpfs", "tmpfs"
                data: str | None = "mode=755,size=64k"
            else:
                flags, source, fstype = plan.flags, plan.source or plan.type, plan.type
                data = plan.data or None
                if fstype == "tmpfs":
                    data = _with_mode_of(root_fd, plan.destination, data)
            target_fd = _mount_point(root_fd, root, plan, directory=True)
            try:
                _fd_mount(source, target_fd, fstype, flags, data, what=plan.destination)
            finally:
                os.close(target_fd)
        # A cgroup mount's tmpfs gets them once filled (fill_cgroup_mount).
        attrs = (plan.attr_set or plan.attr_clr) and (plan.bind or plan.type != "cgroup")
        if plan.propagation or attrs:
            mounted, _ = walk(root_fd, plan.destination)
            try:
                if attrs:  # rro, rnosuid...: the mounts beneath too
                    _set_recursive_options(mounted, plan)
                for propagation in plan.propagation:
                    _fd_mount(None, mounted, None, propagation, what=plan.destination)
            finally:
                os.close(mounted)
    finally:
        os.close(root_fd)


def _with_mode_of(root_fd: int, destination: str, data: str | None) -> str | None:
    """A tmpfs's options, led by the mode of the directory it covers, if there is one (as
    runc: a tmpfs over ``/run`` of mode 0755 is not world-writable); a ``mode=`` of the
    spec's own comes after, so it wins."""
    try:
        fd, _ = walk(root_fd, destination)
    except OSError:
        return data
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISDIR(st.st_mode):
        return data
    mode = f"mode={stat.S_IMODE(st.st_mode):04o}"
    return f"{mode},{data}" if data else mode


def _set_recursive_options(mounted: int, plan: MountPlan) -> None:
    try:
        syscalls.mount_setattr(mounted, plan.attr_set, plan.attr_clr)
    except OSError as exc:
        raise OSError(
            exc.errno, f"recursive options of {plan.destination}: {exc.strerror}"
        ) from None


#: A hierarchy a container was placed in: its controllers as ``/proc/self/cgroup`` names
#: them (``"cpu,cpuacct"``, ``"name=systemd"``, ``""`` for cgroup v2) and the path of the
#: container's cgroup there, as the container's cgroup namespace shows it.
CgroupPlacement = tuple[str, str]


def fill_cgroup_mount(
    plan: MountPlan, mount_id: int | None, placed: Sequence[CgroupPlacement]
) -> None:
    """Fill the tmpfs :func:`make_mount` made for a spec's ``cgroup`` mount (whose id
    ``mount_id`` was), after ``pivot_root`` and once the container is in its cgroups, as
    runc does: a mount of each hierarchy in ``placed`` showing the container's own cgroup
    and what is beneath it, never a cgroup above (a hierarchy the container was not placed
    in is left out: its cgroup there is its supervisor's or above). v1 hierarchies go in
    directories named by their controllers, co-mounted ones also by each controller's name
    (symlinks), v2 beside them as ``unified``; v2 alone is mounted on the tmpfs itself. A
    hierarchy the kernel does not let us mount (in a user namespace, say) is left out, and
    so is one where the container's cgroup is not the root of our cgroup namespace (its
    path ``/``): the caller enters one rooted there first. Then read-only, as the plan
    says. Nothing is done where the destination is no longer that tmpfs (a later spec
    mount covered it)."""
    target = opened_beneath("/", plan.destination)
    if target is None:
        return
    try:
        if mount_id is None or mount_id_of(target) != mount_id:
            return
        _fill_cgroup_tmpfs(target, plan, placed)
        if plan.flags & abi.MS_RDONLY:
            remount = abi.MS_REMOUNT | abi.MS_BIND | (plan.flags & ~abi.MS_REMOUNT)
            _fd_mount(None, target, None, remount, what=plan.destination)
        if plan.attr_set or plan.attr_clr:  # (rro: the hierarchies' mounts too)
            _set_recursive_options(target, plan)
    finally:
        os.close(target)


def _fill_cgroup_tmpfs(target: int, plan: MountPlan, placed: Sequence[CgroupPlacement]) -> None:
    flags = plan.flags & ~abi.MS_REMOUNT
    placed = [(controllers, path) for controllers, path in placed if path == "/"]
    if len(placed) == 1 and not placed[0][0]:  # cgroup v2 alone: on the tmpfs itself
        with contextlib.suppress(OSError):
            _mount_hierarchy(target, "", flags, plan.destination)
            return
    for controllers, _ in placed:
        name = controllers.removeprefix("name=") if controllers else "unified"
        try:
            os.mkdir(name, 0o755, dir_fd=target)
            where = os.open(name, O_DIR | os.O_NOFOLLOW, dir_fd=target)
        except OSError:
            continue
        try:
            _mount_hierarchy(where, controllers, flags, plan.destination)
        except OSError:  # (not ours to mount: in a user namespace, say)
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=target)
            continue
        finally:
            os.close(where)
        for each in controllers.split(",") if "," in controllers else ():
            with contextlib.suppress(OSError):
                os.symlink(name, each, dir_fd=target)


def _mount_hierarchy(where: int, controllers: str, flags: int, what: str) -> None:
    """Mount the cgroup hierarchy of ``controllers`` (``""``: cgroup v2) on ``where``,
    rooted at our cgroup namespace's root (the container's cgroup)."""
    fstype = "cgroup" if controllers else "cgroup2"
    data = (f"none,{controllers}" if controllers.startswith("name=") else controllers) or None
    _fd_mount(fstype, where, fstype, flags, data, what=what)


def open_host_tree(path: str, *, recursive: bool = True) -> int:
    """A detached copy (``open_tree(OPEN_TREE_CLONE)``) of the directory or file at host
    ``path``, symlinks resolved here, on the host side (as runc resolves a rootfs).

    The path is opened first and the copy made of that very file: the tree's root is
    checked to be it (``st_dev``/``st_ino``). Close-on-exec; attached once, with
    :func:`enter_tree` or ``move_mount``, a detached copy changes no mount table.
    """
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        flags = abi.OPEN_TREE_CLONE | abi.OPEN_TREE_CLOEXEC | abi.AT_EMPTY_PATH
        tree = syscalls.open_tree(fd, "", flags | (abi.AT_RECURSIVE if recursive else 0))
        if not same_file(os.fstat(tree), os.fstat(fd)):
            os.close(tree)
            raise unsafe_path(f"the detached copy of {path} is not that file", path)
        return tree
    finally:
        os.close(fd)


def open_host_trees(sources: Iterable[tuple[str, bool]]) -> list[int]:
    """:func:`open_host_tree` of each ``(path, recursive)``; all, or none (raises)."""
    return channel.open_all(sources, lambda source: open_host_tree(source[0], recursive=source[1]))


def enter_tree(tree: int) -> int:
    """Attach the detached rootfs ``tree`` over ``/`` (of this private mount namespace)
    and ``chroot`` into it; an fd on the root left (for :func:`leave_tree`).

    No host path is resolved: the tree came as an fd. Until :func:`leave_tree`,
    ``/`` is the rootfs, so the root is built as beneath any path root (``root``
    ``"/"``); then :func:`pivot_into_fd` makes it the root for good.
    """
    fd_dir()  # the host's /proc/<pid>/fd, opened while it is there
    host = os.open("/", O_DIR)
    try:
        syscalls.move_mount(tree, host)
        os.fchdir(tree)
        os.chroot(".")
        # A copy of a shared host mount is its peer: nothing mounted in the root may
        # reach the host's, so it is made private before any mount.
        syscalls.mount(None, "/", None, abi.MS_REC | abi.MS_PRIVATE)
    except BaseException:
        os.close(host)
        raise
    return host


def leave_tree(host: int) -> None:
    """Back to the root :func:`enter_tree` left (and close ``host``): hooks and cgroups
    are host paths."""
    try:
        os.fchdir(host)
        os.chroot(".")
    finally:
        os.close(host)


def minimal_root() -> int:
    """A detached, small tmpfs holding an empty ``proc`` directory: the root
    :func:`confine_to_proc` pivots into (made ahead where it can be)."""
    fs = syscalls.fsopen("tmpfs")
    try:
        for key, value in (("size", "64k"), ("nr_inodes", "16"), ("mode", "0555")):
            syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, key, value)
        syscalls.fsconfig(fs, syscalls.FSCONFIG_CMD_CREATE)
        top = syscalls.fsmount(fs)
    finally:
        os.close(fs)
    try:
        os.mkdir("proc", 0o555, dir_fd=top)
    except BaseException:
        os.close(top)
        raise
    return top


def confine_to_proc(top: int | None = None, *, sysfs: bool = False) -> None:
    """Make this process's root a minimal one (decision 33): ``top`` (else a new
    :func:`minimal_root`; closed), holding only the ``/proc`` mounted now (moved, not
    copied); ``pivot_root`` into it and make it read-only. The old root, with every
    mount under it, is left stacked on the new one, out of reach of any path (which
    starts at the root, beneath it) until :func:`detach_old_root` detaches it.

    With ``sysfs``, a new read-only sysfs (of our network namespace) goes at
    ``/sys`` too: in a user namespace of its own, the kernel lets a process mount
    sysfs only where one is fully visible already, and the inits we fork later
    start from this root. Not mounted if the kernel refuses it (a network
    namespace that is not ours: then no container of ours may mount one either).

    For a process in a private mount namespace of its own (every mount private):
    what it needs of the host afterwards it holds as fds opened before.
    """
    top = minimal_root() if top is None else top
    proc = sys_tree = -1
    try:
        proc = syscalls.open_tree(abi.AT_FDCWD, "/proc", abi.OPEN_TREE_CLOEXEC)
        if sysfs:
            sys_tree = _read_only_sysfs()
        here = os.open("/", O_DIR)
        try:
            syscalls.move_mount(top, here)
        finally:
            os.close(here)
        syscalls.move_mount(proc, top, "proc")
        if sys_tree >= 0:
            os.mkdir("sys", 0o555, dir_fd=top)
            syscalls.move_mount(sys_tree, top, "sys")
        os.fchdir(top)
    finally:
        channel.close_fds([top, proc, sys_tree])
    syscalls.pivot_root(".", ".")
    flags = abi.MS_REMOUNT | abi.MS_BIND | abi.MS_RDONLY | abi.MS_NOSUID | abi.MS_NODEV
    syscalls.mount(None, "/", None, flags | abi.MS_NOEXEC)


def _read_only_sysfs() -> int:
    """A new sysfs, detached, read-only; -1 if the kernel refuses it (EPERM)."""
    try:
        fs = syscalls.fsopen("sysfs")
    except PermissionError:
        return -1
    try:
        syscalls.fsconfig(fs, syscalls.FSCONFIG_CMD_CREATE)
        flags = abi.MOUNT_ATTR_RDONLY | abi.MOUNT_ATTR_NOSUID | abi.MOUNT_ATTR_NODEV
        return syscalls.fsmount(fs, flags | abi.MOUNT_ATTR_NOEXEC)
    except PermissionError:
        return -1
    finally:
        os.close(fs)


def detach_old_root() -> None:
    """Detach the old root :func:`confine_to_proc` left stacked on the new one (the
    working directory must still be the new root). It may wait for an RCU grace
    period, so the supervisor runs it in a thread of its own."""
    syscalls.umount2(".", abi.MNT_DETACH)


def enter_host_tree(tree: int) -> None:
    """Attach ``tree`` (a detached copy of the host's root, sent by the library) over
    ``/`` of this private mount namespace, ``chroot`` into it and make it private: the
    host view that createContainer hooks (host programs) and a rootfs by path need,
    in a process whose root is minimal (:func:`confine_to_proc`). Closes ``tree``."""
    try:
        here = os.open("/", O_DIR)
        try:
            syscalls.move_mount(tree, here)
        finally:
            os.close(here)
        os.fchdir(tree)
        os.chroot(".")
    finally:
        os.close(tree)
    # A copy of shared mounts stays their peer: nothing mounted here may reach the host.
    syscalls.mount(None, "/", None, abi.MS_REC | abi.MS_PRIVATE)


def show_at(root: int, path: str) -> None:
    """Move the root built in a tree (:func:`enter_tree`; ``root`` an fd on it, mounts
    and all) from over ``/`` onto host ``path``, where createContainer hooks expect it:
    only the mount point is resolved by path, not what is mounted there."""
    syscalls.move_mount(root, abi.AT_FDCWD, path)


def bind_rootfs(rootfs: str) -> None:
    """Make ``rootfs`` a mount point of its own (``pivot_root`` needs one)."""
    fd_dir()  # open the host's /proc/<pid>/fd now, while it is there
    syscalls.mount(rootfs, rootfs, None, abi.MS_BIND | abi.MS_REC)


def _overlay_layer(fs_fd: int, key: str, fd: int) -> None:
    """Give overlayfs a layer by fd (Linux 6.13+), else by its ``/proc/self/fd`` path.

    Either way no path of the bundle is parsed by the kernel: commas, colons
    and backslashes in it cannot split or escape the option.
    """
    try:
        syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_FD, key, fd)
        return
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, key.rstrip("+"), f"/proc/self/fd/{fd}")


#: An overlay's upper tmpfs holds one file (inode) per this many bytes of its size.
_UPPER_BYTES_PER_INODE = 4096


def _owner_in_namespace(st: os.stat_result) -> tuple[int, int]:
    """``st``'s owner, to give the overlay's root: an owner our user namespace does not
    map reads as the overflow ids (65534), a user of the container's own there; the
    upper directory goes to the namespace's root instead (its nobody owned ``/``, and
    could plant what root ran)."""
    uid, gid = st.st_uid, st.st_gid
    try:
        ours = in_user_namespace()
    except OSError:
        ours = False  # (not known: the owner is left as it reads, as before)
    if not ours:  # (the host's namespace: 65534 is its nobody)
        return uid, gid
    if uid == _overflow_id("overflowuid"):
        uid = 0
    if gid == _overflow_id("overflowgid"):
        gid = 0
    return uid, gid


def _overflow_id(name: str) -> int:
    try:
        with open(f"/proc/sys/kernel/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65534


def _tmpfs_upper(size: int, root: os.stat_result) -> tuple[int, int, int]:
    """A detached tmpfs of ``size`` bytes holding ``upper`` (with the root's owner and
    mode: it becomes the overlay's root) and ``work``; ``(tmpfs, upper, work)`` fds.

    The tmpfs's own fd must stay open until the overlay is made: closing it
    dissolves the detached mount, which overlayfs then refuses as its upper.
    """
    fs = syscalls.fsopen("tmpfs")
    try:
        syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, "size", str(size))
        # Files too, as kernel memory (inodes, and since Linux 6.6 extended attributes)
        # is not counted in ``size``: without it a 1 MiB layer held 250 MB of inodes.
        inodes = max(size // _UPPER_BYTES_PER_INODE, 1024)
        syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, "nr_inodes", str(inodes))
        syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, "mode", "0700")
        syscalls.fsconfig(fs, syscalls.FSCONFIG_CMD_CREATE)
        tmpfs = syscalls.fsmount(fs)
    finally:
        os.close(fs)
    opened = [tmpfs]
    try:
        os.mkdir("upper", 0o700, dir_fd=tmpfs)
        os.mkdir("work", 0o700, dir_fd=tmpfs)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        opened.append(os.open("upper", flags, dir_fd=tmpfs))
        os.fchown(opened[1], *_owner_in_namespace(root))
        os.fchmod(opened[1], stat.S_IMODE(root.st_mode))
        opened.append(os.open("work", flags, dir_fd=tmpfs))
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return opened[0], opened[1], opened[2]


def overlay_root(rootfs: str, size: int, *, container_id: str) -> int:
    """Mount an overlay over ``rootfs`` (in this mount namespace): ``rootfs`` the read-only
    lower layer, a private tmpfs of ``size`` bytes the upper; an fd on the upper dir.

    Built detached (:func:`overlay_tree`) and moved onto ``rootfs``, which it then
    hides: no staging directory on a host path.
    """
    fd_dir()  # open the host's /proc/<pid>/fd now, while it is there
    lower = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        overlay, upper = overlay_tree(lower, size, container_id=container_id, what=rootfs)
        try:
            syscalls.move_mount(overlay, lower)
        except BaseException:
            os.close(upper)
            raise
        finally:
            os.close(overlay)
        return upper
    finally:
        os.close(lower)


def overlay_tree(lower: int, size: int, *, container_id: str, what: str) -> tuple[int, int]:
    """A detached overlay of the directory ``lower`` (read-only lower layer; a detached
    rootfs tree, say) and a private tmpfs of ``size`` bytes (upper): ``(the overlay's
    mount fd, an fd on the upper dir)``; ``what`` names ``lower`` in errors.

    Built with the new mount API (``fsopen``/``fsconfig``/``fsmount``, layers
    given by fd). The bundle's files are never written. ``redirect_dir`` and
    ``metacopy`` are off, so the upper dir holds every change whole (what
    ``Container.export_changes`` reads). A kernel that refuses the overlay raises
    :class:`MissingFeatureError`.
    """
    fd_dir()  # the layers' /proc/self/fd paths, where the kernel wants strings
    opened: list[int] = []
    userxattr = in_user_namespace()
    try:
        if userxattr:
            # Overlayfs clones its layers' mounts, which a user namespace's root may do
            # only of mounts in its own mount namespace: the tree the host side opened
            # is attached first, stacked on ``/`` (where no path reaches it), and
            # detached again once the overlay holds its clone (below).
            here = os.open("/", O_DIR)
            try:
                syscalls.move_mount(lower, here)
            finally:
                os.close(here)
        tmpfs, upper, work = _tmpfs_upper(size, os.fstat(lower))
        opened += [tmpfs, upper, work]
        try:
            fs = syscalls.fsopen("overlay")
        except OSError as exc:
            raise MissingFeatureError(
                "kernel overlayfs (the overlay root)",
                f'container "{container_id}": {exc.strerror}; fuse-overlayfs is not supported',
            ) from None
        opened.append(fs)
        try:
            _overlay_layer(fs, "lowerdir+", lower)
            _overlay_layer(fs, "upperdir", upper)
            _overlay_layer(fs, "workdir", work)
            # In a user namespace trusted.* attributes are the host root's alone: user.*
            # ones mark whiteouts, and directories are never redirected (``nofollow``).
            options = {"redirect_dir": "nofollow" if userxattr else "off", "metacopy": "off"}
            for key, value in {**options, "index": "off"}.items():
                syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, key, value)
            if userxattr:
                syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_FLAG, "userxattr")
            syscalls.fsconfig(fs, syscalls.FSCONFIG_CMD_CREATE)
            overlay = syscalls.fsmount(fs)
            if userxattr:  # left stacked, it would stay beneath the container's root
                _detach_mount(lower)
        except OSError as exc:
            raise MissingFeatureError(
                f"an overlay root on {what}",
                f'container "{container_id}": kernel overlayfs refused this rootfs as its'
                f" lower layer ({exc}; is it on a stacked overlay, or a filesystem overlayfs"
                " cannot use?); the fallback, fuse-overlayfs, is not supported",
            ) from None
        opened.remove(upper)
        return overlay, upper
    finally:
        for fd in opened:
            os.close(fd)


def in_user_namespace() -> bool:
    """Whether this process is in a user namespace other than the host's (whose
    ``uid_map`` maps every id to itself)."""
    with open("/proc/self/uid_map") as f:
        return f.read().split() != ["0", "0", "4294967295"]


def _split(path: str) -> tuple[str, str]:
    parent, name = posixpath.split(posixpath.normpath("/" + path))
    if not name:
        raise unsafe_path(f"{path} names no file", path)
    return parent, name


def _host_device(dev: DevicePlan, kind: int, host: int | None) -> int:
    """An ``O_PATH`` fd on the host's node of ``dev`` (beneath ``host``, an fd on the
    host's root, when given), checked to be that device."""
    try:
        if host is None:
            fd = os.open(dev.path, os.O_PATH | os.O_CLOEXEC)
        else:
            fd = os.open(dev.path.lstrip("/"), os.O_PATH | os.O_CLOEXEC, dir_fd=host)
    except OSError as err:  # (as runc: a node it may not make is bound from the host's)
        why = f"device {dev.path} of linux.devices, which could not be made (mknod), "
        raise OSError(
            err.errno, why + f"is bound from the host's {dev.path}: {err.strerror}"
        ) from None
    st = os.fstat(fd)
    if stat.S_IFMT(st.st_mode) != kind or st.st_rdev != os.makedev(dev.major, dev.minor):
        os.close(fd)
        raise unsafe_path(f"the host's {dev.path} is not device {dev.major}:{dev.minor}", dev.path)
    return fd


def _bind_host_device(
    dev: DevicePlan, kind: int, parent: int, name: str, root_fd: int, *, host: int | None
) -> None:
    source = _host_device(dev, kind, host)
    try:
        create_beneath(parent, name, directory=False)
        target = os.open(name, O_PATH, dir_fd=parent)
        try:
            if not stat.S_ISREG(os.fstat(target).st_mode):
                raise unsafe_path(f"{dev.path} changed while it was being created", dev.path)
            _bind_fds(source, target, root_fd, dev.path, 0, follow=False)
        finally:
            os.close(target)
    finally:
        os.close(source)


def create_devices(
    root: str,
    devices: Iterable[DevicePlan],
    *,
    host: int | None = None,
    ours: Collection[int] | None = None,
) -> None:
    """Create device nodes beneath ``root``; bind the host's node where mknod is denied
    (found beneath ``host``, an fd on the host's root, when the root was entered).

    The parent directory is walked beneath the root. As runc, a name that is taken
    already (a file of the bundle's rootfs, a node an earlier container made there, a
    host device a bind brought) is left as it is, never replaced nor followed. Unlike
    runc, a node is made only on one of the mounts ``ours`` (the ids of the rootfs's
    mount and of the spec's mounts that are not binds): a rootfs symlink (``/data ->
    /dev/net``) would have it made in a host volume, or a mount beneath one.
    """
    kinds = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    root = os.path.realpath(root)
    root_fd = open_root(root)
    try:
        for dev in devices:
            parent_path, name = _split(dev.path)
            parent, _ = walk(root_fd, parent_path, create="dir")
            try:
                check_beneath(parent, root, dev.path)
                if exists_beneath(parent, name):
                    continue
                if ours is not None and mount_id_of(parent) not in ours:
                    raise unsafe_path(
                        f"device {dev.path} would be made in a bind mount (a host directory)",
                        dev.path,
                    )
                kind = kinds[dev.type]
                old_umask = os.umask(0)
                try:
                    rdev = os.makedev(dev.major, dev.minor)
                    os.mknod(name, kind | (dev.mode & 0o7777), rdev, dir_fd=parent)
                except FileExistsError:
                    continue
                except PermissionError:
                    if not exists_beneath(parent, name):
                        _bind_host_device(dev, kind, parent, name, root_fd, host=host)
                    continue
                finally:
                    os.umask(old_umask)
                os.chown(name, dev.uid, dev.gid, dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)


def dev_kind(root: str, *, mounted: int | None) -> Literal["ours", "linked", "foreign"]:
    """What ``/dev`` beneath ``root`` is: ``"ours"`` (a directory of the rootfs's own
    mount, or still the root of the tmpfs the spec mounted there, whose id ``mounted`` is,
    as :func:`mount_id_beneath` gave it right after), which gets the default nodes and
    symlinks; ``"linked"``, a symlink to a directory of those, where the spec's nodes go
    but not the defaults; or ``"foreign"``: another mount, which a bind put there (over
    the tmpfs or not) through a symlinked destination, a host directory maybe, where
    nothing is made."""
    root_fd = open_root(os.path.realpath(root))
    try:
        rootfs_mount = mount_id_of(root_fd)
        try:
            dev, _ = walk(root_fd, "/dev", follow=False)
        except FileNotFoundError:
            return "ours"  # made as a directory of the rootfs
        try:
            if not stat.S_ISLNK(os.fstat(dev).st_mode):
                expected = rootfs_mount if mounted is None else mounted
                return "ours" if mount_id_of(dev) == expected else "foreign"
        finally:
            os.close(dev)
        try:
            target, _ = walk(root_fd, "/dev")
        except FileNotFoundError:
            return "linked"
        try:
            return "linked" if mount_id_of(target) in (rootfs_mount, mounted) else "foreign"
        finally:
            os.close(target)
    finally:
        os.close(root_fd)


def default_dev_symlinks(root: str, *, has_devpts: bool) -> None:
    """The /dev symlinks every container gets (/dev/fd, stdio, ptmx)."""
    links = [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ]
    if os.path.exists("/proc/kcore"):
        links.append(("/proc/kcore", "core"))
    if has_devpts:
        links.append(("pts/ptmx", "ptmx"))
    root = os.path.realpath(root)
    root_fd = open_root(root)
    try:
        dev, _ = walk(root_fd, "/dev", create="dir")
    finally:
        os.close(root_fd)
    try:
        check_beneath(dev, root, "/dev")
        for source, name in links:
            try:
                os.lstat(name, dir_fd=dev)
            except FileNotFoundError:
                # (Another container building the same rootfs's /dev may make it meanwhile.)
                with contextlib.suppress(FileExistsError):
                    os.symlink(source, name, dir_fd=dev)
                continue
            if name != "ptmx" or link_text(dev, name) == source:
                continue
            # ptmx replaced, never missing meanwhile (for a container sharing this /dev).
            temporary = f".{name}.sandboxrt-{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=dev)
            os.symlink(source, temporary, dir_fd=dev)
            os.rename(temporary, name, src_dir_fd=dev, dst_dir_fd=dev)
    finally:
        os.close(dev)


def pivot_into(rootfs: str) -> None:
    """Make ``rootfs`` the root and detach the old one."""
    fd_dir()  # the masks after the pivot mount through it
    os.chdir(rootfs)
    _pivot_here()


def pivot_into_fd(root: int) -> None:
    """:func:`pivot_into` the directory ``root`` (an fd on a mount's root; closed)."""
    fd_dir()
    try:
        os.fchdir(root)
    finally:
        os.close(root)
    _pivot_here()


def _detach_mount(mount: int) -> None:
    """Detach the attached mount whose root ``mount`` is an fd of (``MNT_DETACH``)."""
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(mount)
        syscalls.umount2(".", abi.MNT_DETACH)
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def _pivot_here() -> None:
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", abi.MNT_DETACH)
    os.chdir("/")
    # Nothing may be left stacked beneath the new root: ``..`` of the root would step
    # into it (the old root's mounts). Fail closed if anything is.
    root, parent = os.stat("/"), os.stat("/..")
    if (root.st_dev, root.st_ino) != (parent.st_dev, parent.st_ino):
        raise unsafe_path("a mount is left beneath the container's root after pivot_root", "/")


# -- after pivot_root: masks, read-only paths, the process's cwd -------------------------


def remount_root_readonly() -> None:
    """Make ``/`` read-only (after :func:`pivot_into`)."""
    flags = abi.MS_REMOUNT | abi.MS_BIND | abi.MS_RDONLY | os.statvfs("/").f_flag & _LOCKED_FLAGS
    syscalls.mount(None, "/", None, flags)


def _is_null(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == _NULL_RDEV


def _open_null(root_fd: int, masked: str) -> int:
    """An ``O_PATH`` fd on the container's /dev/null, which must be the null device."""
    try:
        fd, _ = walk(root_fd, "/dev/null", follow=False)
    except OSError as exc:
        raise unsafe_path(
            f"cannot mask {masked}: the container has no /dev/null ({exc.strerror})", "/dev/null"
        ) from None
    st = os.fstat(fd)
    if not _is_null(st):
        os.close(fd)
        found = "a symlink" if stat.S_ISLNK(st.st_mode) else f"mode {st.st_mode:o}"
        raise unsafe_path(
            f"cannot mask {masked}: /dev/null is not the null device 1:3 ({found})", "/dev/null"
        )
    return fd


def _skippable(root_fd: int, path: str) -> tuple[int, str] | None:
    """``path``'s fd and its resolved path (a symlink followed beneath the root, as the
    container sees it: what it names is what gets masked), or None when it is missing."""
    try:
        return walk(root_fd, path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def mask_paths(paths: Iterable[str]) -> None:
    """Hide ``paths`` (after pivot): /dev/null over files, an empty read-only tmpfs over dirs.

    Missing paths are skipped; a symlink's target (beneath the root) is masked.
    Files are masked with the container's /dev/null only if it is the null device
    before and after the bind; anything else fails the creation.
    """
    root_fd = open_root("/")
    null_fd: int | None = None
    try:
        for asked in paths:
            found = _skippable(root_fd, asked)
            if found is None:
                continue
            fd, path = found
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    _fd_mount("tmpfs", fd, "tmpfs", abi.MS_RDONLY, "size=0,mode=755", what=path)
                    continue
                if null_fd is None:
                    null_fd = _open_null(root_fd, path)
                _bind_fds(null_fd, fd, root_fd, path, 0, follow=False)
                masked, _ = walk(root_fd, path, follow=False)
                try:
                    if not (_is_null(os.fstat(masked)) and _is_null(os.fstat(null_fd))):
                        raise unsafe_path(f"{path} is not the null device after masking", path)
                finally:
                    os.close(masked)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
        if null_fd is not None:
            os.close(null_fd)


def readonly_paths(paths: Iterable[str]) -> None:
    """Make ``paths`` read-only (after pivot) with a recursive bind and a remount, their
    other flags kept as they were (as runc: ``/dev`` read-only still reaches its devices).

    Missing paths are skipped; a symlink's target (beneath the root) is made read-only.
    """
    flags = abi.MS_REC | abi.MS_RDONLY
    root_fd = open_root("/")
    try:
        for asked in paths:
            found = _skippable(root_fd, asked)
            if found is None:
                continue
            fd, path = found
            try:
                _bind_fds(fd, fd, root_fd, path, flags, follow=False)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


_PTMX_RDEV = os.makedev(5, 2)
_TIOCSPTLCK = 0x40045431
_TIOCGPTPEER = 0x5441


def open_pty() -> tuple[int, int]:
    """A pty pair of the container's own devpts, as ``(master, slave)`` (after pivot).

    ``/dev/ptmx`` is resolved beneath ``/`` (a symlink planted by the container
    cannot lead to a host file through ``/proc/1/root``) and must be the
    devpts multiplexer (char 5:2); the slave comes from the master itself
    (``TIOCGPTPEER``), never from a path.
    """
    root_fd = open_root("/")
    try:
        path_fd, _ = walk(root_fd, "/dev/ptmx")
    finally:
        os.close(root_fd)
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != _PTMX_RDEV:
            raise unsafe_path("is not the devpts multiplexer (char 5:2)", "/dev/ptmx")
        flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC
        master = os.open(str(path_fd), flags, dir_fd=fd_dir())
    finally:
        os.close(path_fd)
    try:
        if os.fstat(master).st_rdev != _PTMX_RDEV:
            raise unsafe_path("changed while it was opened", "/dev/ptmx")
        fcntl.ioctl(master, _TIOCSPTLCK, b"\0\0\0\0")
        slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except BaseException:
        os.close(master)
        raise
    return master, slave
