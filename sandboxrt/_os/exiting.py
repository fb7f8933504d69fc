"""Work for the end of this process: at its exit, and at a ``multiprocessing`` worker's.

A worker started by ``fork`` or ``forkserver`` ends with ``os._exit`` once its
``multiprocessing`` finalizers ran: no ``atexit`` handler runs there. What the library
must undo when a process ends (the containers a ``MemoryStore`` still records, the cgroup
levels kept for later containers) is registered both ways.

Standard library only (the supervisor's modules import it).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable

__all__ = ["call_at_exit"]

#: The functions registered with ``atexit`` (once each: the registry keeps duplicates).
_AT_EXIT: set[Callable[[], None]] = set()

#: Each function registered as a ``multiprocessing`` finalizer, with the process it was
#: registered in (a worker's registry starts empty: see ``BaseProcess._bootstrap``).
_FINALIZED: dict[Callable[[], None], int] = {}


def call_at_exit(func: Callable[[], None]) -> None:
    """Have ``func`` called when this process exits, ``multiprocessing`` worker or not;
    cheap to call again (once registered, it is not again). ``func`` must bear being
    called twice: a process that imported ``multiprocessing`` runs both its finalizers and
    ``atexit``, and two threads may register it at once. ``multiprocessing`` is not
    imported for this: a process that has not imported it runs no worker."""
    if func not in _AT_EXIT:
        _AT_EXIT.add(func)
        atexit.register(func)
    util = sys.modules.get("multiprocessing.util")
    if util is not None and _FINALIZED.get(func) != os.getpid():
        _FINALIZED[func] = os.getpid()
        util.Finalize(None, func, exitpriority=0)
