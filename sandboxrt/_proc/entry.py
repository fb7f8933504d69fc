"""What every entry point of a fresh interpreter of ours does first. Standard library only.

A launched process inherits its caller's signal mask and ignored signals across
``execve``: a caller that blocks ``SIGCHLD`` (a thread that blocks signals, as asyncio's
and many daemons' do) would keep the fork server from ever reaping, and one that ignores
it would have the kernel reap a supervisor's children before it learns their status.
"""

from __future__ import annotations

import signal

from sandboxrt._os import syscalls

__all__ = ["reset_inherited_signals"]


def reset_inherited_signals() -> None:
    """Unblock every signal and give ``SIGCHLD`` its default disposition; and note where
    our arguments are (:func:`syscalls.note_argument_area`) before we enter anything."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    syscalls.note_argument_area()
