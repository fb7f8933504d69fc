"""OCI mount options → ``mount(2)`` flags, propagation and data. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sandboxrt._core import abi as sc

__all__ = [
    "PROPAGATION",
    "RECURSIVE_OPTIONS",
    "UNSUPPORTED_OPTIONS",
    "ParsedOptions",
    "parse_mount_options",
]

#: option → (flags to set, flags to clear)
_FLAG_OPTIONS: Mapping[str, tuple[int, int]] = {
    "ro": (sc.MS_RDONLY, 0),
    "rw": (0, sc.MS_RDONLY),
    "nosuid": (sc.MS_NOSUID, 0),
    "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0),
    "dev": (0, sc.MS_NODEV),
    "noexec": (sc.MS_NOEXEC, 0),
    "exec": (0, sc.MS_NOEXEC),
    "sync": (sc.MS_SYNCHRONOUS, 0),
    "async": (0, sc.MS_SYNCHRONOUS),
    "dirsync": (sc.MS_DIRSYNC, 0),
    "remount": (sc.MS_REMOUNT, 0),
    "mand": (sc.MS_MANDLOCK, 0),
    "nomand": (0, sc.MS_MANDLOCK),
    "atime": (0, sc.MS_NOATIME),
    "noatime": (sc.MS_NOATIME, 0),
    "diratime": (0, sc.MS_NODIRATIME),
    "nodiratime": (sc.MS_NODIRATIME, 0),
    "relatime": (sc.MS_RELATIME, 0),
    "norelatime": (0, sc.MS_RELATIME),
    "strictatime": (sc.MS_STRICTATIME, 0),
    "nostrictatime": (0, sc.MS_STRICTATIME),
    "lazytime": (sc.MS_LAZYTIME, 0),
    "nolazytime": (0, sc.MS_LAZYTIME),
    "nosymfollow": (sc.MS_NOSYMFOLLOW, 0),
    "symfollow": (0, sc.MS_NOSYMFOLLOW),
    "bind": (sc.MS_BIND, 0),
    "rbind": (sc.MS_BIND | sc.MS_REC, 0),
}

_ATIME = sc.MOUNT_ATTR__ATIME
#: Recursive option → (``MOUNT_ATTR_*`` to set, to clear) on the mount and every mount
#: beneath it (``mount_setattr(2)`` with ``AT_RECURSIVE``), as runc applies them.
RECURSIVE_OPTIONS: Mapping[str, tuple[int, int]] = {
    "rro": (sc.MOUNT_ATTR_RDONLY, 0),
    "rrw": (0, sc.MOUNT_ATTR_RDONLY),
    "rnosuid": (sc.MOUNT_ATTR_NOSUID, 0),
    "rsuid": (0, sc.MOUNT_ATTR_NOSUID),
    "rnodev": (sc.MOUNT_ATTR_NODEV, 0),
    "rdev": (0, sc.MOUNT_ATTR_NODEV),
    "rnoexec": (sc.MOUNT_ATTR_NOEXEC, 0),
    "rexec": (0, sc.MOUNT_ATTR_NOEXEC),
    "rnodiratime": (sc.MOUNT_ATTR_NODIRATIME, 0),
    "rdiratime": (0, sc.MOUNT_ATTR_NODIRATIME),
    "rrelatime": (sc.MOUNT_ATTR_RELATIME, _ATIME),
    "rnorelatime": (sc.MOUNT_ATTR_STRICTATIME, _ATIME),
    "rnoatime": (sc.MOUNT_ATTR_NOATIME, _ATIME),
    "ratime": (sc.MOUNT_ATTR_RELATIME, _ATIME),
    "rstrictatime": (sc.MOUNT_ATTR_STRICTATIME, _ATIME),
    "rnostrictatime": (sc.MOUNT_ATTR_RELATIME, _ATIME),
    "rnosymfollow": (sc.MOUNT_ATTR_NOSYMFOLLOW, 0),
    "rsymfollow": (0, sc.MOUNT_ATTR_NOSYMFOLLOW),
}

#: Options of mounts sandboxrt does not do yet: a container given one would run without
#: what it asked for, so they are refused (``MissingFeatureError``).
UNSUPPORTED_OPTIONS = frozenset({"idmap", "ridmap", "tmpcopyup"})

#: Propagation option → the flags ``mount(2)`` takes to apply it.
PROPAGATION: Mapping[str, int] = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}

#: Options runtimes understand themselves; they never reach the kernel.
_RUNTIME_ONLY = frozenset({"defaults"})


class ParsedOptions(tuple[int, str, tuple[int, ...], int, int]):
    """``(flags, data, propagation, attr_set, attr_clr)`` for one mount."""

    __slots__ = ()

    @property
    def flags(self) -> int:
        return self[0]

    @property
    def data(self) -> str:
        return self[1]

    @property
    def propagation(self) -> tuple[int, ...]:
        return self[2]

    @property
    def attr_set(self) -> int:
        """``MOUNT_ATTR_*`` the recursive options set (beneath the mount too)."""
        return self[3]

    @property
    def attr_clr(self) -> int:
        """``MOUNT_ATTR_*`` the recursive options clear."""
        return self[4]

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & sc.MS_BIND)


def parse_mount_options(options: Iterable[str], mount_type: str = "") -> ParsedOptions:
    """Split OCI mount options into flags, filesystem data and propagation steps.

    A ``bind`` or ``rbind`` mount type counts as the option of that name.
    """
    flags = attr_set = attr_clr = 0
    data: list[str] = []
    propagation: list[int] = []
    if mount_type in ("bind", "rbind"):
        flags |= _FLAG_OPTIONS[mount_type][0]
    for option in options:
        if option in _FLAG_OPTIONS:
            set_bits, clear_bits = _FLAG_OPTIONS[option]
            flags = (flags | set_bits) & ~clear_bits
        elif option in RECURSIVE_OPTIONS:
            set_bits, clear_bits = RECURSIVE_OPTIONS[option]
            if clear_bits == _ATIME:  # one atime mode replaces the others
                attr_set = (attr_set & ~_ATIME) | set_bits
                attr_clr |= _ATIME
            else:  # the later of two opposite options wins
                attr_set = (attr_set & ~clear_bits) | set_bits
                attr_clr = (attr_clr & ~set_bits) | clear_bits
        elif option in PROPAGATION:
            propagation.append(PROPAGATION[option])
        elif option in _RUNTIME_ONLY or option.startswith("x-"):
            continue
        else:
            data.append(option)
    return ParsedOptions((flags, ",".join(data), tuple(propagation), attr_set, attr_clr))
