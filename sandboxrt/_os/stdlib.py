"""Importing standard-library modules after the files are out of sight.

A confined process (the supervisor, the gofer: decisions 33 and 38) pivots into a
root that holds only its ``/proc``. What it may still import later (``subprocess``
for the exec agent, ``shutil`` for a recursive remove), it imports through fds on the
standard library's directories, opened before it was confined: importing those
modules ahead would cost every process milliseconds most never use.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["directories", "import_through"]


def directories() -> list[int]:
    """``O_PATH`` fds (close-on-exec) of the standard library's directories: its pure
    Python modules', and its extension modules' (``subprocess`` needs
    ``_posixsubprocess``) where they are files (``lib-dynload`` on ``sys.path``; an
    interpreter such as Debian's builds many of them in)."""
    found: list[int] = []
    dynload = [entry for entry in sys.path if os.path.basename(entry) == "lib-dynload"]
    for directory in dict.fromkeys([os.path.dirname(os.__file__ or ""), *dynload]):
        with contextlib.suppress(OSError):
            found.append(os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    return found


def import_through(dirs: Sequence[int], name: str) -> ModuleType:
    """Module ``name``, imported (if it is not yet) with ``sys.path`` set to ``dirs``
    (:func:`directories`) through this process's ``/proc/self/fd``; ``ImportError`` if
    it cannot be. Without ``dirs`` (an unconfined process), the usual import."""
    if name in sys.modules or not dirs:
        return importlib.import_module(name)
    saved = list(sys.path)
    sys.path[:] = [f"/proc/self/fd/{fd}" for fd in dirs]
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved
