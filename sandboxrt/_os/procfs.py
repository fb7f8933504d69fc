"""Reading processes from /proc: identity, parentage, terminal, and what ``ps`` shows.

Process identity is a PID plus its start time and the boot id: ``psutil``'s
create time moves with the wall clock; the start time in clock ticks since
boot (field 22 of ``/proc/PID/stat``) does not, and with the boot id it names
one process for the machine's lifetime. Standard library only.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os

from sandboxrt._core import abi
from sandboxrt._os import syscalls

__all__ = [
    "ProcEntry",
    "StatInfo",
    "boot_id",
    "descendants",
    "dying_name",
    "foreground_group",
    "id_maps",
    "is_alive",
    "own_cgroups",
    "pidfd_pid",
    "read_process",
    "read_stat",
    "runs_on",
    "set_oom_score_adj",
    "write_proc_file",
]

_DEAD_STATES = frozenset("ZXx")
#: ``PF_EXITING`` in ``/proc/PID/stat``'s flags: set as a process starts to exit.
_PF_EXITING = 0x4


class StatInfo(tuple[str, int, int]):
    """``(state, ppid, start_ticks)`` parsed from ``/proc/PID/stat``."""

    __slots__ = ()

    @property
    def state(self) -> str:
        return self[0]

    @property
    def ppid(self) -> int:
        return self[1]

    @property
    def start_ticks(self) -> int:
        return self[2]


@functools.cache
def boot_id() -> str:
    """The kernel's boot id (changes at every boot)."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _read_stat(pid: int, proc: str = "/proc") -> tuple[str, list[bytes]] | None:
    """``/proc/PID/stat``: the command name (field 2) and the fields from the state on
    (field 3); ``None`` if the process is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    end = raw.rindex(b")")
    return raw[raw.index(b"(") + 1 : end].decode(errors="replace"), raw[end + 2 :].split()


def _stat_fields(pid: int, proc: str = "/proc") -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` from the state on (field 3); ``None`` if gone."""
    stat = _read_stat(pid, proc)
    return None if stat is None else stat[1]


def read_stat(pid: int, proc: str = "/proc") -> StatInfo | None:
    """Parse ``/proc/PID/stat``; ``None`` when the process does not exist."""
    fields = _stat_fields(pid, proc)
    if fields is None:
        return None
    return StatInfo((fields[0].decode(), int(fields[1]), int(fields[19])))


def dying_name(pid: int, proc: str = "/proc") -> str | None:
    """The name (``comm``) of process ``pid`` if it is on its way out (exiting, or a
    zombie); ``None`` if it runs on or is gone."""
    stat = _read_stat(pid, proc)
    if stat is None:
        return None
    name, fields = stat
    return name if _on_its_way_out(fields) else None


def _on_its_way_out(fields: list[bytes]) -> bool:
    """Whether the process of ``/proc/PID/stat``'s ``fields`` (from the state on) is
    exiting (``PF_EXITING``, field 9) or a zombie (the state, field 3)."""
    return fields[0].decode() in _DEAD_STATES or bool(int(fields[6]) & _PF_EXITING)


def foreground_group(pid: int, proc: str = "/proc") -> int | None:
    """The foreground process group of ``pid``'s controlling terminal (``tcgetpgrp``),
    as the PID namespace of ``proc`` numbers it; ``None`` when the process is gone or
    has no terminal (or the group is outside that namespace)."""
    fields = _stat_fields(pid, proc)
    if fields is None:
        return None
    tpgid = int(fields[5])  # field 8
    return tpgid if tpgid > 0 else None


def descendants(root: int, proc: str = "/proc") -> list[int]:
    """Every process below ``root``, found by walking parent links in ``proc``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            fields = _stat_fields(int(name), proc)
        except OSError:
            continue
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class ProcEntry:
    """One process as ``/proc/PID/{stat,status,cmdline}`` show it (``ps``'s columns)."""

    pid: int
    #: Its pid in each PID namespace, from the one of ``proc`` down to its own (``NSpid``).
    nspid: tuple[int, ...]
    ppid: int
    #: The effective uid.
    uid: int
    state: str
    #: User plus system CPU time, in clock ticks (``SC_CLK_TCK`` a second).
    cpu_ticks: int
    #: ``comm``: the name the kernel keeps (15 characters at most).
    name: str
    #: The command line; empty for kernel threads and zombies.
    cmdline: tuple[str, ...]


def read_process(pid: int, proc: str = "/proc") -> ProcEntry | None:
    """Read what ``ps`` shows of ``pid``; ``None`` when it is gone (or went meanwhile)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"{proc}/{pid}/status", "rb") as f:
            status = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    name = stat[stat.index(b"(") + 1 : stat.rindex(b")")]
    nspid = tuple(int(n) for n in status.get(b"NSpid", str(pid).encode()).split())
    return ProcEntry(
        pid=pid,
        nspid=nspid,
        ppid=int(fields[1]),
        uid=int(status[b"Uid"].split()[1]),
        state=fields[0].decode(),
        cpu_ticks=int(fields[11]) + int(fields[12]),  # fields 14 and 15
        name=name.decode(errors="replace"),
        cmdline=_split_cmdline(cmdline),
    )


def _split_cmdline(raw: bytes) -> tuple[str, ...]:
    if not raw:
        return ()
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return tuple(arg.decode(errors="surrogateescape") for arg in raw.split(b"\0"))


def id_maps(pid: int, proc: str = "/proc") -> tuple[str, str] | None:
    """The text of process ``pid``'s ``uid_map`` and ``gid_map`` (its user namespace's, as
    ours sees them: ``0 0 4294967295`` when it is ours), or None if it is gone."""
    try:
        with open(f"{proc}/{pid}/uid_map") as uids, open(f"{proc}/{pid}/gid_map") as gids:
            return uids.read(), gids.read()
    except (FileNotFoundError, ProcessLookupError):
        return None


def pidfd_pid(pidfd: int) -> int:
    """The pid (in our PID namespace) of the process a pidfd of ours refers to; -1 once it
    has exited, 0 if our PID namespace does not see it."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise OSError(errno.EBADF, f"fd {pidfd} is not a pidfd")


def own_cgroups(proc_self: int | None = None) -> dict[str, tuple[str, str]] | None:
    """This process's cgroups from ``/proc/self/cgroup`` (or ``cgroup`` beneath
    ``proc_self``, an fd of our ``/proc/PID`` opened while ``/proc`` was the runtime's):
    hierarchy id to its controllers (``""`` for cgroup v2) and the path there; ``None``
    when it cannot be read."""
    try:
        if proc_self is None:
            fd = os.open("/proc/self/cgroup", os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = os.open("cgroup", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=proc_self)
        try:
            text = os.read(fd, 65536).decode()
        finally:
            os.close(fd)
        found = {}
        for line in text.splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            found[hierarchy] = (controllers, path)
    except (OSError, ValueError):
        return None
    return found


def write_proc_file(path: str, data: bytes) -> None:
    """Write ``data`` to the procfs file at ``path``: never to a file of another
    filesystem that a mount or a symlink put there (a host file bound into a
    container's ``/proc``), which is ``EXDEV``."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if syscalls.filesystem_type(fd) != abi.PROC_SUPER_MAGIC:
            raise OSError(errno.EXDEV, f"{path} is not a file of procfs", path)
        os.write(fd, data)
    finally:
        os.close(fd)


def set_oom_score_adj(value: int, pid: int | None = None, proc: str = "/proc") -> None:
    """Set process ``pid``'s (default: ours) ``oom_score_adj`` to ``value``, unless it is
    that already (then nothing is written: a write that would change nothing can be
    refused, in a user namespace)."""
    path = f"{proc}/{'self' if pid is None else pid}/oom_score_adj"
    with open(path, "rb", buffering=0) as f:
        if int(f.read()) == value:
            return
    write_proc_file(path, str(value).encode())


def is_alive(pid: int, start_ticks: int, boot: str) -> bool:
    """Whether the very process identified by ``(pid, start_ticks, boot)`` still runs.

    A zombie counts as dead; a PID reused by another process does not match.
    """
    fields = _fields_of(pid, start_ticks, boot)
    return fields is not None and fields[0].decode() not in _DEAD_STATES


def runs_on(pid: int, start_ticks: int, boot: str) -> bool:
    """:func:`is_alive`, and not on its way out (``PF_EXITING``): a PID namespace's init
    killed while processes of its namespace are frozen waits for them, for as long as
    they stay frozen, yet will never run again."""
    fields = _fields_of(pid, start_ticks, boot)
    return fields is not None and not _on_its_way_out(fields)


def _fields_of(pid: int, start_ticks: int, boot: str) -> list[bytes] | None:
    """:func:`_stat_fields` of the very process ``(pid, start_ticks, boot)`` names."""
    if boot != boot_id():
        return None
    fields = _stat_fields(pid)
    return fields if fields is not None and int(fields[19]) == start_ticks else None
