"""The supervisor's children on their way to ``execve`` (inits, exec'd processes, exec
agents): forked with every signal blocked, and, once their sync socket closes, told
whether they exec'd or died before, and why.

Standard library only: the supervisor imports it.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Sequence

from sandboxrt._core.protocol import ProcessPlan
from sandboxrt._os import channel, procfs

__all__ = [
    "SUPERVISOR_NAME",
    "death_before_exec",
    "died_before_exec",
    "fork_linked",
    "fork_signals_blocked",
]

#: The supervisor's name in ``/proc/PID/comm``, which its children keep until they name
#: themselves.
SUPERVISOR_NAME = "sandboxrt-sup"


def fork_signals_blocked() -> tuple[int, set[int | signal.Signals]]:
    """``fork()`` with every signal blocked: the child must not run our handlers (which
    signal inits) before it has reset them. ``(pid, the mask to restore)``; the parent
    restores it on failure, each side once its work allows."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        return os.fork(), mask
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise


def fork_linked() -> tuple[int, set[int | signal.Signals], socket.socket, socket.socket]:
    """:func:`fork_signals_blocked` with a socket pair made first, for the child to report
    on: ``(pid, the mask to restore, our end, the child's end)``; both ends are closed
    if the fork fails. Each side closes the other's end."""
    ours, theirs = channel.socket_pair()
    try:
        pid, mask = fork_signals_blocked()
    except BaseException:
        ours.close()
        theirs.close()
        raise
    return pid, mask, ours, theirs


def died_before_exec(pid: int, names: Sequence[str]) -> bool:
    """Whether our child ``pid``, whose sync socket just closed, died before its
    ``execve`` rather than exec'd: it is exiting (or a zombie) under one of our
    ``names``, or ours (:data:`SUPERVISOR_NAME`: killed before it named itself). A process
    in the middle of an exec is neither (its name may still be ours for a moment); one
    that exec'd and exits at once has its program's name. Its ``/proc`` entry stays
    until we reap it."""
    return procfs.dying_name(pid) in (*names, SUPERVISOR_NAME)


def death_before_exec(what: str, returncode: int, plan: ProcessPlan) -> str:
    """Why a container's ``what`` (its init, an exec'd process: ``plan``) never ran its
    program."""
    if returncode >= 0:
        return f"its {what} exited with status {returncode} before it ran the program"
    try:
        signame = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        signame = ""
    why = f"its {what} was killed by signal {-returncode}{signame} before it ran the program"
    if returncode == -signal.SIGSYS and plan.seccomp is not None:
        why += (
            ": the seccomp profile, loaded early without noNewPrivileges, forbids a "
            "system call the runtime makes before the program starts"
            if plan.seccomp.early
            else ": the seccomp profile forbids a system call of the program's execve"
        )
    return why
