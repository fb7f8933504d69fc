"""Locks a child this process forks gets unheld.

A thread that holds a lock when another forks is not in the child, and the
child would wait for that lock for ever: a caller of the library may fork
while another of its threads is inside it. The library's locks taken without a
timeout on shared state are therefore :class:`ForkSafeLock`\\ s, made anew in
every forked child. Standard library only (the sandbox's side never imports
it: it has no threads).
"""

from __future__ import annotations

import os
import threading
import weakref

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """A ``threading.Lock``, used with ``with``, that a forked child gets unheld."""

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _LOCKS.add(self)

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *_: object) -> None:
        self._lock.release()


_LOCKS: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


def _renew_in_child() -> None:
    for lock in list(_LOCKS):
        lock._lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_in_child)
