"""Process identity from /proc: a PID plus its start time and the boot id.

``psutil``'s create time moves with the wall clock; the start time in clock
ticks since boot (field 22 of ``/proc/PID/stat``) does not, and with the
boot id it names one process for the machine's lifetime. Standard library only.
"""

from __future__ import annotations

import functools

__all__ = ["StatInfo", "boot_id", "is_alive", "read_stat"]

_DEAD_STATES = frozenset("ZXx")


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


def read_stat(pid: int, proc: str = "/proc") -> StatInfo | None:
    """Parse ``/proc/PID/stat``; ``None`` when the process does not exist."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return StatInfo((fields[0].decode(), int(fields[1]), int(fields[19])))


def is_alive(pid: int, start_ticks: int, boot: str) -> bool:
    """Whether the very process identified by ``(pid, start_ticks, boot)`` still runs.

    A zombie counts as dead; a PID reused by another process does not match.
    """
    if boot != boot_id():
        return False
    info = read_stat(pid)
    return info is not None and info.start_ticks == start_ticks and info.state not in _DEAD_STATES
