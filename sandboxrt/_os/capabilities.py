"""The container process's five capability sets, applied in the order the kernel needs.

Standard library only. What the program ends up with is what the kernel's
exec rules make of the sets set here (``capabilities(7)``):

* a non-root program gets ambient as permitted and effective (its file has
  no file capabilities), inheritable and bounding unchanged: the spec's sets
  survive exactly when ``effective == permitted == ambient``;
* a root program (uid 0) gets ``bounding | inheritable | ambient`` as both
  permitted and effective (intersected with the permitted set before exec
  when ``no_new_privs`` is on), as with runc.

An absent ``process.capabilities`` means five empty sets, as in runc: the
program runs with no capability at all. Capabilities the running kernel
does not know (above ``cap_last_cap``) are ignored without error.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from sandboxrt._os import syscalls

__all__ = ["apply_final_sets", "drop_bounding", "has_effective", "last_cap", "mask"]

_last_cap: int | None = None


def last_cap() -> int:
    """The highest capability number the running kernel knows.

    Probed with ``PR_CAPBSET_READ``, so it works without ``/proc``.
    """
    global _last_cap
    if _last_cap is None:
        cap = 0
        while cap < 64:
            try:
                syscalls.capbset_read(cap)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                break
            cap += 1
        _last_cap = cap - 1
    return _last_cap


def has_effective(cap: int) -> bool:
    """Whether this process has ``cap`` in its effective set (``CapEff`` of its
    ``/proc/self/status``; ``True`` where that cannot be read: the caller finds out)."""
    try:
        with open("/proc/self/status", "rb") as f:
            line = next(line for line in f if line.startswith(b"CapEff:"))
    except (OSError, StopIteration):
        return True
    return bool(int(line.split()[1], 16) >> cap & 1)


def mask(caps: Iterable[int], last: int | None = None) -> int:
    """``caps`` as a bit mask, without the ones above ``last`` (default: :func:`last_cap`)."""
    top = last_cap() if last is None else last
    value = 0
    for cap in caps:
        if 0 <= cap <= top:
            value |= 1 << cap
    return value


def drop_bounding(keep: Iterable[int]) -> None:
    """Drop every capability outside ``keep`` from the bounding set (needs ``CAP_SETPCAP``)."""
    kept = mask(keep)
    for cap in range(last_cap() + 1):
        if not kept & (1 << cap):
            syscalls.capbset_drop(cap)  # one dropped already stays dropped: no error


def apply_final_sets(
    effective: Iterable[int],
    permitted: Iterable[int],
    inheritable: Iterable[int],
    ambient: Iterable[int],
) -> None:
    """``capset`` the effective, permitted and inheritable sets, then raise the ambient ones.

    Runs after the uid change; the ambient set is emptied first, so it ends up
    exactly ``ambient``.
    """
    syscalls.capset(mask(effective), mask(permitted), mask(inheritable))
    syscalls.ambient_clear_all()
    for cap in sorted(set(ambient)):
        if cap <= last_cap():
            syscalls.ambient_raise(cap)
