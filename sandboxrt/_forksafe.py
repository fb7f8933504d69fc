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
from collections.abc import Callable

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """A ``threading.Lock``, used with ``with``, that a forked child gets unheld.

    ``with`` calls the lock's own (C) ``__enter__`` and ``__exit__``, which the
    properties below hand it when the block is entered: a Python method in
    between let a Ctrl-C land after the acquire, outside the block, and the lock
    stayed held for good (every later user waited for ever).
    """

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _LOCKS.add(self)

    @property
    def __enter__(self) -> Callable[[], bool]:
        return self._lock.__enter__

    @property
    def __exit__(self) -> Callable[..., None]:  # noqa: PLE0302 (the lock's own takes them)
        return self._lock.__exit__


_LOCKS: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


def _renew_in_child() -> None:
    for lock in list(_LOCKS):
        lock._lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_in_child)
