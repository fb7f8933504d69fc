"""The one module that binds system calls missing from the standard library.

Every ctypes binding of sandboxrt lives here; a failed call raises
``OSError`` with the errno at the call site. Standard library only: the
sandbox supervisor imports this module and must start in milliseconds.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import re
import sys
from collections.abc import Sequence

from sandboxrt._core import abi

__all__ = [
    "ambient_clear_all",
    "ambient_raise",
    "bpf_prog_attach",
    "bpf_prog_detach",
    "bpf_prog_get_fd_by_id",
    "bpf_prog_load",
    "bpf_prog_query",
    "capbset_drop",
    "capbset_read",
    "capget",
    "capset",
    "chown_fd",
    "filesystem_type",
    "fsconfig",
    "fsmount",
    "fsopen",
    "ioprio_get",
    "ioprio_set",
    "join_new_session_keyring",
    "mount",
    "mount_id",
    "mount_setattr",
    "move_mount",
    "note_argument_area",
    "open_tree",
    "openat2",
    "pivot_root",
    "prctl",
    "rename_exchange",
    "sched_setattr",
    "seccomp_set_filter",
    "set_fs_ids",
    "set_keepcaps",
    "set_process_name",
    "setdomainname",
    "setns",
    "umount2",
    "unshare",
]

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
#: open_tree, move_mount and openat2 have one number on every architecture (5.2, 5.6).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_OPENAT2 = 437
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277, "riscv64": 277, "ppc64le": 358, "s390x": 348}
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 280, "s390x": 280}
_KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "riscv64": 274, "ppc64le": 355, "s390x": 345}
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "riscv64": 30, "ppc64le": 273, "s390x": 282}
_SYS_IOPRIO_GET = {"x86_64": 252, "aarch64": 31, "riscv64": 31, "ppc64le": 274, "s390x": 283}
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        if path is not None:
            raise OSError(err, f"{what}: {os.strerror(err)}", path)
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _number(table: dict[str, int], name: str) -> ctypes.c_long:
    """The number of system call ``name`` on this machine, from ``table`` (libc wraps none
    of those); ``ENOSYS`` where it has none."""
    number = table.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"{name}: unknown syscall number on {platform.machine()}")
    return ctypes.c_long(number)


def filesystem_type(fd: int) -> int:
    """The magic number of the filesystem ``fd`` is on (``fstatfs(2)``'s ``f_type``)."""
    buf = ctypes.create_string_buffer(256)  # (struct statfs: 120 bytes on 64-bit)
    _check(_libc.fstatfs(ctypes.c_int(fd), buf), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value


_STATX_MNT_ID = 0x1000
_AT_EMPTY_PATH = 0x1000


def mount_id(fd: int) -> int | None:
    """The id of the mount ``fd`` is on (``statx(2)``'s ``stx_mnt_id``), whatever ``/proc``
    is; ``None`` where the kernel does not tell it (before 5.8)."""
    buf = ctypes.create_string_buffer(256)  # struct statx
    flags = _AT_EMPTY_PATH | 0x100  # AT_SYMLINK_NOFOLLOW
    _check(_libc.statx(ctypes.c_int(fd), b"", ctypes.c_int(flags), _STATX_MNT_ID, buf), "statx")
    if not ctypes.c_uint32.from_buffer(buf).value & _STATX_MNT_ID:
        return None
    return ctypes.c_uint64.from_buffer(buf, 0x90).value


def chown_fd(fd: int, uid: int, gid: int) -> None:
    """Change the owner of what ``fd`` is (an ``O_PATH`` fd of a symlink too:
    ``fchownat(fd, "", AT_EMPTY_PATH)``), never of what a name leads to now."""
    _check(
        _libc.fchownat(ctypes.c_int(fd), b"", ctypes.c_uint(uid), ctypes.c_uint(gid),
                       ctypes.c_int(_AT_EMPTY_PATH)),
        "fchownat",
    )  # fmt: skip


def join_new_session_keyring() -> None:
    """Leave the session keyring we inherited for a new, anonymous one (as runc gives each
    container one): keys the caller holds, or another container added, are not ours to
    read. A kernel without keys (``ENOSYS``) is left as it is."""
    number = _SYS_KEYCTL.get(platform.machine())
    if number is None:
        return
    result = _libc.syscall(
        ctypes.c_long(number), ctypes.c_int(_KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_void_p(None)
    )
    if result < 0 and ctypes.get_errno() != errno.ENOSYS:
        _check(result, "joining a new session keyring")


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``unshare(2)``)."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that ``fd`` refers to (``setns(2)``)."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    """``mount(2)``."""
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
        f"mount {source or fstype or ''} on {target}",
        target,
    )


def umount2(target: str, flags: int = 0) -> None:
    """``umount2(2)``."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)``, which libc does not wrap."""
    number = _number(_SYS_PIVOT_ROOT, "pivot_root")
    _check(_libc.syscall(number, _b(new_root), _b(put_old)), "pivot_root")


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def rename_exchange(first: str, second: str) -> None:
    """Swap two paths atomically (``renameat2`` with ``RENAME_EXCHANGE``); both must exist.

    Replacing a file this way (then removing the old one under the temporary
    name) spares ext4 the flush it makes when a rename replaces a file.
    """
    _check(
        _libc.renameat2(
            ctypes.c_int(_AT_FDCWD),
            _b(first),
            ctypes.c_int(_AT_FDCWD),
            _b(second),
            ctypes.c_uint(_RENAME_EXCHANGE),
        ),
        "renameat2",
        second,
    )


def setdomainname(name: str) -> None:
    """``setdomainname(2)``; ``surrogateescape``'s characters are the bytes they stand for
    (as ``socket.sethostname`` takes them)."""
    raw = os.fsencode(name)
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")


#: ``prctl`` with its integer arguments declared (a function object of its own, so that
#: callers passing pointers through ``_libc.prctl`` are unaffected): cheaper calls.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_prctl.restype = ctypes.c_int


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)``."""
    return _check(_prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


_PR_SET_NAME = 15


_IOPRIO_WHO_PROCESS = 1


def ioprio_get() -> int:
    """This process's I/O priority (``ioprio_get(2)``)."""
    args = (ctypes.c_int(_IOPRIO_WHO_PROCESS), ctypes.c_int(0))
    return _check(_libc.syscall(_number(_SYS_IOPRIO_GET, "ioprio_get"), *args), "ioprio_get")


def ioprio_set(value: int) -> None:
    """Set this process's I/O priority (``ioprio_set(2)``: class << 13 | priority)."""
    args = (ctypes.c_int(_IOPRIO_WHO_PROCESS), ctypes.c_int(0), ctypes.c_int(value))
    _check(_libc.syscall(_number(_SYS_IOPRIO_SET, "ioprio_set"), *args), "ioprio_set")


class _SchedAttr(ctypes.Structure):
    """``struct sched_attr`` of ``sched_setattr(2)`` (its first, 48-byte version)."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("policy", ctypes.c_uint32),
        ("flags", ctypes.c_uint64),
        ("nice", ctypes.c_int32),
        ("priority", ctypes.c_uint32),
        ("runtime", ctypes.c_uint64),
        ("deadline", ctypes.c_uint64),
        ("period", ctypes.c_uint64),
    ]


def sched_setattr(attributes: Sequence[int]) -> None:
    """Set this process's scheduling policy (``sched_setattr(2)``): ``attributes`` are the
    policy, flags, nice, priority, runtime, deadline and period, in that order."""
    attr = _SchedAttr(ctypes.sizeof(_SchedAttr), *attributes)
    args = (ctypes.c_int(0), ctypes.byref(attr), ctypes.c_uint(0))
    _check(_libc.syscall(_number(_SYS_SCHED_SETATTR, "sched_setattr"), *args), "sched_setattr")


def set_process_name(name: str) -> None:
    """Set the calling thread's name (``/proc/PID/comm``, at most 15 bytes) and make it
    the process's whole command line (``/proc/PID/cmdline``, which anyone in its PID
    namespace may read: the interpreter's and the library's host paths are not theirs
    to see)."""
    encoded = name.encode()
    buffer = ctypes.create_string_buffer(encoded[:15])
    _check(_libc.prctl(ctypes.c_int(_PR_SET_NAME), buffer, 0, 0, 0), "prctl(PR_SET_NAME)")
    area = _argument_area()
    if area is not None:
        start, end = area
        size = end - start
        # Its last byte not NUL: the kernel reads the area as a title, up to the first
        # NUL (as setproctitle(3) leaves it), so the name is the one argument shown.
        title = encoded.replace(b"\0", b"")[: size - 2] + b"\0"
        ctypes.memmove(start, title.ljust(size, b" "), size)


@functools.cache
def _argument_area() -> tuple[int, int] | None:
    """Where this process's arguments are in its memory (``/proc/self/stat`` fields 48
    and 49), the same in a forked child; ``None`` if it cannot be read, or does not hold
    exactly ``sys.orig_argv``. Read once, by :func:`note_argument_area` as a process of
    ours starts: a ``/proc`` seen later may be a container's, and would choose where
    :func:`set_process_name` writes."""
    try:
        fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            if filesystem_type(fd) != abi.PROC_SUPER_MAGIC:
                return None
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        fields = data[data.rindex(b")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])
    except (OSError, ValueError, IndexError):
        return None
    size = sum(len(os.fsencode(arg)) + 1 for arg in sys.orig_argv)
    return (start, end) if start > 0 and end - start == size >= 2 else None


def note_argument_area() -> None:
    """Find where our arguments are now (see :func:`set_process_name`), while ``/proc`` is
    still the one we started with."""
    _argument_area()


class _OpenHow(ctypes.Structure):
    """``struct open_how`` of ``openat2(2)``."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """``openat2(2)``: a new fd (pass ``O_CLOEXEC`` in ``flags``); ``OSError`` as the kernel says.

    ``ENOSYS`` where the kernel lacks it; ``EAGAIN`` when a rename raced a
    ``RESOLVE_IN_ROOT`` lookup (the caller retries).
    """
    how = _OpenHow(flags, mode, resolve)
    args = (ctypes.c_int(dirfd), os.fsencode(path), ctypes.byref(how), ctypes.c_size_t(24))
    return _check(_libc.syscall(ctypes.c_long(_SYS_OPENAT2), *args), "openat2", path)


def open_tree(dirfd: int, path: str, flags: int) -> int:
    """``open_tree(2)``: with ``OPEN_TREE_CLONE``, a detached copy of the mount at ``path``."""
    args = (ctypes.c_int(dirfd), os.fsencode(path), ctypes.c_uint(flags))
    return _check(_libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), *args), "open_tree", path)


# -- seccomp -------------------------------------------------------------------------------

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_BPF_MAXINSNS = 4096


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog``: the length and address of a ``struct sock_filter`` array."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(program: bytes, flags: int = 0) -> None:
    """Install a classic BPF seccomp filter into the calling thread.

    ``program`` is ``struct sock_filter[]`` (8 bytes each, as libseccomp's
    ``seccomp_export_bpf`` writes it); ``flags`` are ``SECCOMP_FILTER_FLAG_*``
    bits for ``seccomp(2)``. Without flags this is ``prctl(PR_SET_SECCOMP)``.
    Needs ``no_new_privs`` or ``CAP_SYS_ADMIN``.
    """
    count, rest = divmod(len(program), 8)
    if not count or rest or count > _BPF_MAXINSNS:
        raise ValueError(f"not a seccomp BPF program: {len(program)} bytes")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.addressof(buffer))
    if not flags:
        prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
        return
    args = (ctypes.c_ulong(_SECCOMP_SET_MODE_FILTER), ctypes.c_ulong(flags))
    number = _number(_SYS_SECCOMP, "seccomp")
    result = _check(_libc.syscall(number, *args, ctypes.byref(fprog)), "seccomp")
    if result and flags & _SECCOMP_FILTER_FLAG_TSYNC:
        # TSYNC's failure: the id of a thread that could not be synchronized.
        raise OSError(errno.ESRCH, f"seccomp: thread {result} could not be synchronized (TSYNC)")


# -- capabilities --------------------------------------------------------------------------

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capget(pid: int = 0) -> tuple[int, int, int]:
    """``(effective, permitted, inheritable)`` of ``pid`` (0: this thread) as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return (
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's effective, permitted and inheritable sets (64-bit masks)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def set_fs_ids(uid: int, gid: int) -> None:
    """Set this thread's filesystem uid and gid (``setfsuid``, ``setfsgid``), which new
    files get as their owner; ``PermissionError`` if the kernel did not take them.
    Leaving 0 drops the file capabilities from the effective set (and coming back
    raises them again): a caller that needs them raises them itself (``capset``)."""
    _libc.setfsgid(ctypes.c_uint(gid))
    _libc.setfsuid(ctypes.c_uint(uid))
    current_uid = _libc.setfsuid(ctypes.c_uint(0xFFFFFFFF))  # (an invalid id: only reads)
    current_gid = _libc.setfsgid(ctypes.c_uint(0xFFFFFFFF))
    if (current_uid, current_gid) != (uid, gid):
        raise PermissionError(errno.EPERM, f"setfsuid({uid})/setfsgid({gid}) not taken")


def capbset_read(cap: int) -> bool:
    """Whether ``cap`` is in the bounding set; ``OSError(EINVAL)`` if the kernel lacks it."""
    return prctl(_PR_CAPBSET_READ, cap) == 1


def capbset_drop(cap: int) -> None:
    """Drop ``cap`` from the bounding set (needs ``CAP_SETPCAP``)."""
    prctl(_PR_CAPBSET_DROP, cap)


def set_keepcaps(keep: bool) -> None:
    """``PR_SET_KEEPCAPS``: keep the permitted set when all uids leave 0."""
    prctl(_PR_SET_KEEPCAPS, int(keep))


def ambient_clear_all() -> None:
    """Empty the ambient set."""
    prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)


def ambient_raise(cap: int) -> None:
    """Add ``cap`` to the ambient set (it must be permitted and inheritable)."""
    prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap)


# -- the new mount API (fsopen, fsconfig, fsmount, move_mount; Linux 5.2) ----------------
# These numbers are the same on every architecture (the unified syscall table).

_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432

FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOVE_MOUNT_BENEATH = 0x200


def _fs_log(fs_fd: int) -> str:
    """The messages the kernel left on a filesystem context (``e overlayfs: ...``)."""
    lines = []
    while True:
        try:
            raw = os.read(fs_fd, 4096)
        except OSError:
            break
        if not raw:
            break
        lines.append(raw.decode(errors="replace").strip())
    return "; ".join(lines)


def fsopen(fstype: str) -> int:
    """A new filesystem context of type ``fstype`` (close-on-exec fd; ``fsopen(2)``)."""
    raw = _b(fstype)
    return _check(
        _libc.syscall(ctypes.c_long(_SYS_FSOPEN), raw, ctypes.c_uint(FSOPEN_CLOEXEC)),
        f"fsopen {fstype}",
    )


def fsconfig(fs_fd: int, cmd: int, key: str | None = None, value: str | int | None = None) -> None:
    """Configure a filesystem context (``fsconfig(2)``): a string, an fd (``aux``) or a command.

    A failure raises ``OSError`` whose message carries the kernel's own log of the context.
    """
    aux = 0
    val: bytes | None = None
    if isinstance(value, int):
        aux = value
    elif value is not None:
        val = os.fsencode(value)
    result = _libc.syscall(
        ctypes.c_long(_SYS_FSCONFIG),
        ctypes.c_int(fs_fd),
        ctypes.c_uint(cmd),
        _b(key),
        val,
        ctypes.c_int(aux),
    )
    if result < 0:
        err = ctypes.get_errno()
        detail = _fs_log(fs_fd)
        name = key or ("create" if cmd == FSCONFIG_CMD_CREATE else str(cmd))
        what = f"fsconfig {name}: {os.strerror(err)}"
        raise OSError(err, f"{what} ({detail})" if detail else what)


def fsmount(fs_fd: int, attr_flags: int = 0) -> int:
    """A detached mount of a created filesystem context (close-on-exec fd; ``fsmount(2)``)."""
    return _check(
        _libc.syscall(
            ctypes.c_long(_SYS_FSMOUNT),
            ctypes.c_int(fs_fd),
            ctypes.c_uint(FSMOUNT_CLOEXEC),
            ctypes.c_uint(attr_flags),
        ),
        "fsmount",
    )


_SYS_MOUNT_SETATTR = 442  # (one number on every architecture, Linux 5.12)


class _MountAttr(ctypes.Structure):
    """``struct mount_attr`` of ``mount_setattr(2)``."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(fd: int, attr_set: int, attr_clr: int, *, recursive: bool = True) -> None:
    """Change the attributes (``MOUNT_ATTR_*``) of the mount ``fd`` is on, and with
    ``recursive`` of every mount beneath it (``mount_setattr(2)``)."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    flags = abi.AT_EMPTY_PATH | (abi.AT_RECURSIVE if recursive else 0)
    _check(
        _libc.syscall(
            ctypes.c_long(_SYS_MOUNT_SETATTR),
            ctypes.c_int(fd),
            b"",
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        "mount_setattr",
    )


def move_mount(from_fd: int, to_fd: int, to_path: str = "", *, beneath: bool = False) -> None:
    """Attach the detached mount ``from_fd`` onto ``to_fd`` (+ ``to_path``; ``move_mount(2)``);
    with ``beneath``, under the mount on top there (``MOVE_MOUNT_BENEATH``, Linux 6.5+)."""
    flags = MOVE_MOUNT_F_EMPTY_PATH | (0 if to_path else MOVE_MOUNT_T_EMPTY_PATH)
    flags |= MOVE_MOUNT_BENEATH if beneath else 0
    _check(
        _libc.syscall(
            ctypes.c_long(_SYS_MOVE_MOUNT),
            ctypes.c_int(from_fd),
            b"",
            ctypes.c_int(to_fd),
            _b(to_path) or b"",
            ctypes.c_uint(flags),
        ),
        "move_mount",
        to_path or None,
    )


# -- bpf -----------------------------------------------------------------------------------

_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_DETACH = 9
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_PROG_QUERY = 16
_BPF_LOG_SIZE = 1 << 16


class _BpfProgLoad(ctypes.Structure):
    """The ``BPF_PROG_LOAD`` part of ``union bpf_attr`` (the kernel zero-fills the rest)."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
    ]


class _BpfProgAttach(ctypes.Structure):
    """The ``BPF_PROG_ATTACH`` / ``BPF_PROG_DETACH`` part of ``union bpf_attr``."""

    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


class _BpfProgQuery(ctypes.Structure):
    """The ``BPF_PROG_QUERY`` part of ``union bpf_attr``."""

    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
    ]


class _BpfGetFdById(ctypes.Structure):
    _fields_ = [("prog_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32)]


def _bpf(command: int, attr: ctypes.Structure, what: str) -> int:
    size = ctypes.c_uint(ctypes.sizeof(attr))
    number = _number(_SYS_BPF, "bpf")
    return _check(_libc.syscall(number, ctypes.c_int(command), ctypes.byref(attr), size), what)


def bpf_prog_load(prog_type: int, program: bytes, license: str, name: str = "") -> int:
    """Load an eBPF ``program`` (``struct bpf_insn[]``); its fd (close-on-exec, as the
    kernel makes every bpf fd). ``name`` shows in ``bpftool`` (15 characters of
    ``[A-Za-z0-9_.]``). A program the verifier refuses raises ``OSError`` with the
    verifier's log in its message."""
    count, rest = divmod(len(program), 8)
    if not count or rest:
        raise ValueError(f"not an eBPF program: {len(program)} bytes")
    insns = ctypes.create_string_buffer(program, len(program))
    license_buf = ctypes.create_string_buffer(license.encode())
    attr = _BpfProgLoad(
        prog_type=prog_type,
        insn_cnt=count,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_buf),
        prog_name=re.sub(r"[^A-Za-z0-9_.]", "_", name).encode()[:15],
    )
    try:
        return _bpf(_BPF_PROG_LOAD, attr, "bpf(BPF_PROG_LOAD)")
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EACCES):
            raise
    log = ctypes.create_string_buffer(_BPF_LOG_SIZE)  # again, for the verifier's reason
    attr.log_level, attr.log_size, attr.log_buf = 1, _BPF_LOG_SIZE, ctypes.addressof(log)
    try:
        return _bpf(_BPF_PROG_LOAD, attr, "bpf(BPF_PROG_LOAD)")
    except OSError as err:
        text = log.value.decode(errors="replace").strip()
        raise OSError(
            err.errno, f"{err.strerror}: {text[-500:]}" if text else err.strerror
        ) from None


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """Attach the program ``prog_fd`` to ``target_fd`` (a cgroup directory's fd)."""
    attr = _BpfProgAttach(target_fd, prog_fd, attach_type, flags)
    _bpf(_BPF_PROG_ATTACH, attr, "bpf(BPF_PROG_ATTACH)")


def bpf_prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    """Detach the program ``prog_fd`` from ``target_fd``."""
    attr = _BpfProgAttach(target_fd, prog_fd, attach_type)
    _bpf(_BPF_PROG_DETACH, attr, "bpf(BPF_PROG_DETACH)")


def bpf_prog_query(target_fd: int, attach_type: int) -> list[int]:
    """The ids of the programs attached to ``target_fd`` itself for ``attach_type``."""
    size = 64
    while True:
        ids = (ctypes.c_uint32 * size)()
        attr = _BpfProgQuery(
            target_fd=target_fd,
            attach_type=attach_type,
            prog_ids=ctypes.addressof(ids),
            prog_cnt=size,
        )
        try:
            _bpf(_BPF_PROG_QUERY, attr, "bpf(BPF_PROG_QUERY)")
        except OSError as err:
            if err.errno == errno.ENOSPC and attr.prog_cnt > size:
                size = attr.prog_cnt
                continue
            raise
        return list(ids[: attr.prog_cnt])


def bpf_prog_get_fd_by_id(prog_id: int) -> int:
    """An fd (close-on-exec) of the loaded program ``prog_id``."""
    return _bpf(_BPF_PROG_GET_FD_BY_ID, _BpfGetFdById(prog_id), "bpf(BPF_PROG_GET_FD_BY_ID)")
