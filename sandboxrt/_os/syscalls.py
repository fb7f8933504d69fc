"""The one module that binds system calls missing from the standard library.

Every ctypes binding of sandboxrt lives here; a failed call raises
``OSError`` with the errno at the call site. Standard library only: the
sandbox supervisor imports this module and must start in milliseconds.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

__all__ = [
    "ambient_clear_all",
    "ambient_raise",
    "capbset_drop",
    "capbset_read",
    "capget",
    "capset",
    "mount",
    "move_mount",
    "open_tree",
    "openat2",
    "pivot_root",
    "prctl",
    "seccomp_set_filter",
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
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(ctypes.c_long(number), _b(new_root), _b(put_old)), "pivot_root")


def setdomainname(name: str) -> None:
    """``setdomainname(2)``."""
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)``."""
    args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
    return _check(_libc.prctl(ctypes.c_int(option), *args), f"prctl({option})")


_PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    """Set the calling thread's name (``/proc/PID/comm``, at most 15 bytes)."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(ctypes.c_int(_PR_SET_NAME), buffer, 0, 0, 0), "prctl(PR_SET_NAME)")


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


def move_mount(from_dirfd: int, from_path: str, to_dirfd: int, to_path: str, flags: int) -> None:
    """``move_mount(2)``: attach or move a mount (fd to fd with the ``*_EMPTY_PATH`` flags)."""
    args = (
        ctypes.c_int(from_dirfd),
        os.fsencode(from_path),
        ctypes.c_int(to_dirfd),
        os.fsencode(to_path),
        ctypes.c_uint(flags),
    )
    _check(_libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), *args), "move_mount", to_path)


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
    number = _SYS_SECCOMP.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"seccomp: unknown syscall number on {platform.machine()}")
    args = (ctypes.c_ulong(_SECCOMP_SET_MODE_FILTER), ctypes.c_ulong(flags))
    result = _check(_libc.syscall(ctypes.c_long(number), *args, ctypes.byref(fprog)), "seccomp")
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
