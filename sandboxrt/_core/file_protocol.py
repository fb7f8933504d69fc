"""The messages between the library's file API and a container's gofer.

One :class:`FileRequest` a datagram on ``<runtime dir>/gofer-<id hash>.sock``, one
:class:`FileReply` each; an opened regular file comes back alongside as an
fd (``SCM_RIGHTS``), never a directory. Paths are the container's paths.
Standard library only: the gofer imports it.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Any, ClassVar

from sandboxrt._core.protocol import _Message, register

__all__ = [
    "OPEN_FLAGS",
    "FileReply",
    "FileRequest",
    "FileStat",
    "GoferPrepare",
    "GoferStart",
    "WalkEntry",
]

#: The ``open(2)`` flags a request may carry; the gofer drops any other.
OPEN_FLAGS = os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND


@dataclasses.dataclass(frozen=True)
class FileStat:
    """What ``stat`` says about a file in a container (times in nanoseconds)."""

    mode: int
    size: int
    uid: int
    gid: int
    nlink: int
    ino: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    #: The device of the filesystem it is on (as the host numbers it).
    dev: int = 0

    @classmethod
    def from_os(cls, st: os.stat_result) -> FileStat:
        """The fields of an ``os.stat_result``."""
        return cls(
            mode=st.st_mode,
            size=st.st_size,
            uid=st.st_uid,
            gid=st.st_gid,
            nlink=st.st_nlink,
            ino=st.st_ino,
            atime_ns=st.st_atime_ns,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            dev=st.st_dev,
        )

    @property
    def is_dir(self) -> bool:
        """Whether it is a directory (``stat.S_ISDIR``)."""
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        """Whether it is a regular file (``stat.S_ISREG``)."""
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        """Whether it is a symbolic link (``stat.S_ISLNK``)."""
        return stat.S_ISLNK(self.mode)

    @property
    def permissions(self) -> int:
        """The mode's permission bits (``0o7777``)."""
        return stat.S_IMODE(self.mode)


@dataclasses.dataclass(frozen=True)
class WalkEntry:
    """One entry below a walked directory: its path relative to it, and what it is."""

    path: str
    #: ``"dir"``, ``"file"``, ``"symlink"`` or ``"other"`` (devices, fifos, sockets).
    type: str
    mode: int = 0
    #: A symlink's target, as written.
    target: str = ""


@dataclasses.dataclass(frozen=True)
class GoferPrepare(_Message):
    """Library → gofer, first, as the container is created: open each host path of
    ``sources`` (``[path, recursive]``: the rootfs, then the bind sources) as a detached
    mount and send them back (a :class:`FileReply`, the trees alongside); the gofer then
    confines itself."""

    kind: ClassVar[str] = "gofer-prepare"

    sources: list[list[Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class GoferStart(_Message):
    """Library → gofer, once the container exists: with it come a pidfd of the sandbox's
    supervisor, the listening socket, the log file and an ``O_PATH`` fd of the runtime
    directory. The gofer asks the supervisor for the container's root (``O_PATH``) on
    ``control_socket`` (its name in that directory) itself."""

    kind: ClassVar[str] = "gofer-start"

    container_id: str
    #: Owner of what the file API creates: the container process's user.
    uid: int = 0
    gid: int = 0
    #: The sandbox's control socket (a ``root`` request there gives the container's root,
    #: and a pidfd of its init).
    control_socket: str = ""
    #: Fetch the root at once and exit when the container's init does (a subcontainer's:
    #: its supervisor, whose exit ends the gofer of a root container, outlives it).
    watch_init: bool = False
    #: The sandbox has a user namespace of its own, whose filesystems refuse files the
    #: host's root would own: the gofer may then create as ``uid``:``gid``.
    mapped: bool = False


@dataclasses.dataclass(frozen=True)
class FileRequest(_Message):
    """A file operation. ``op`` is one of :attr:`OPS`."""

    kind: ClassVar[str] = "file-request"
    OPS: ClassVar[frozenset[str]] = frozenset(
        {"open", "stat", "listdir", "mkdir", "remove", "symlink", "walk"}
    )

    op: str
    path: str = ""
    #: ``open``: flags within :data:`OPEN_FLAGS`.
    flags: int = 0
    #: ``open`` (with ``O_CREAT``), ``mkdir``: permission bits of what is created.
    mode: int = 0o644
    #: ``mkdir``: create missing parents; with them an existing directory is fine.
    parents: bool = False
    #: ``mkdir`` with ``parents``: permission bits of the parents it creates.
    parent_mode: int = 0o755
    #: ``remove``: a directory with everything in it.
    recursive: bool = False
    #: ``stat``: follow a symlink as the last component.
    follow: bool = True
    #: ``symlink``: the link's target.
    target: str = ""

    def __post_init__(self) -> None:
        if self.op not in self.OPS:
            raise ValueError(f"unknown file request {self.op!r}")


@dataclasses.dataclass(frozen=True)
class FileReply(_Message):
    """The answer to one :class:`FileRequest`; ``errno`` names a failure's cause."""

    kind: ClassVar[str] = "file-reply"

    ok: bool
    error: str = ""
    errno: int = 0
    #: The gofer could not have the container's root from its supervisor (gone, or
    #: going): the container stopped, or its sandbox is ending.
    no_root: bool = False
    stat: FileStat | None = None
    names: list[str] = dataclasses.field(default_factory=list)
    entries: list[WalkEntry] = dataclasses.field(default_factory=list)


register(GoferPrepare, GoferStart, FileRequest, FileReply)
