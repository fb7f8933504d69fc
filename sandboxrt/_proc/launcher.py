"""How a sandbox's first process is started: the ``Launcher`` seam.

The default launcher starts a fresh interpreter (never a fork of the
caller, which may be multi-threaded) that runs only the standard library and
sandboxrt's stdlib-only modules. A host application may pass its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Protocol, runtime_checkable

import sandboxrt

__all__ = ["LaunchedProcess", "Launcher", "SubprocessLauncher", "supervisor_command"]


@runtime_checkable
class LaunchedProcess(Protocol):
    """The launched process; it exits as soon as it forked the supervisor."""

    @property
    def pid(self) -> int: ...

    def wait(self, timeout: float | None = None) -> int: ...


@runtime_checkable
class Launcher(Protocol):
    """Starts a process that runs ``sandboxrt._proc.supervisor.main(fd)``.

    ``bootstrap_fd`` must reach the process under the same number; ``log_fd``
    becomes its stderr; it gets nothing else from the caller.
    """

    def launch(self, *, bootstrap_fd: int, log_fd: int) -> LaunchedProcess: ...


def supervisor_command(bootstrap_fd: int, python: str | None = None) -> list[str]:
    """The argv of a fresh, isolated interpreter that runs the supervisor."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(sandboxrt.__file__)))
    code = (
        f"import sys; sys.path.insert(0, {package_parent!r}); "
        "from sandboxrt._proc.supervisor import main; main(int(sys.argv[1]))"
    )
    return [python or sys.executable, "-I", "-S", "-c", code, str(bootstrap_fd)]


class SubprocessLauncher:
    """Launches with :class:`subprocess.Popen` (safe from threaded callers)."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python

    def launch(self, *, bootstrap_fd: int, log_fd: int) -> LaunchedProcess:
        return subprocess.Popen(
            supervisor_command(bootstrap_fd, self.python),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_fd,
            pass_fds=(bootstrap_fd,),
            close_fds=True,
            start_new_session=True,
        )
