"""The errors of sandboxrt that are also ``subprocess``'s (``CalledProcessError``,
``TimeoutExpired``), so code written for ``subprocess`` catches them. Reached as
:mod:`sandboxrt.errors` attributes, which import this module on first use (it
imports ``subprocess``, and so ``threading``, which the sandbox's side avoids)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from sandboxrt.errors import SandboxrtError, WaitTimeoutError

__all__ = ["ProcessError", "ProcessTimeoutError"]


class ProcessError(SandboxrtError, subprocess.CalledProcessError):
    """A process exec'd with ``check=True`` exited with a non-zero status.

    Also a :class:`subprocess.CalledProcessError`: ``returncode``, ``cmd``,
    ``output``/``stdout`` and ``stderr`` (bytes when captured, ``str`` in text mode).
    """

    __module__ = "sandboxrt.errors"

    def __init__(
        self,
        container_id: str,
        cmd: Sequence[str],
        returncode: int,
        output: bytes | str | None = None,
        stderr: bytes | str | None = None,
    ) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, list(cmd), output, stderr)
        self.container_id = container_id

    def __str__(self) -> str:
        return f'container "{self.container_id}": {subprocess.CalledProcessError.__str__(self)}'


class ProcessTimeoutError(WaitTimeoutError, subprocess.TimeoutExpired):
    """A container's init (``pid`` 0: not known) or an exec'd process did not exit in time.

    Both a :class:`WaitTimeoutError` (so a ``TimeoutError``) and a
    :class:`subprocess.TimeoutExpired` (``cmd``, ``timeout``, ``output``/
    ``stdout``, ``stderr``), so code written for ``subprocess`` catches it.
    ``killed`` says whether the exec's own ``timeout`` killed the process and
    its process group (else it still runs, as after ``Popen.wait(timeout)``).
    ``returncode`` is the process's exit status when it had exited, but its output
    was still held open (by a process it left running) at the time-out; else ``None``.
    """

    __module__ = "sandboxrt.errors"

    def __init__(
        self,
        container_id: str,
        cmd: Sequence[str],
        timeout: float,
        *,
        pid: int = 0,
        output: bytes | None = None,
        stderr: bytes | None = None,
        killed: bool = False,
        returncode: int | None = None,
    ) -> None:
        WaitTimeoutError.__init__(self, container_id, timeout)
        subprocess.TimeoutExpired.__init__(self, list(cmd), timeout, output, stderr)
        self.pid = pid
        self.killed = killed
        self.returncode = returncode
        what = "was killed after" if killed else "did not exit within"
        if returncode is not None:
            how = (
                f"was killed by signal {-returncode}" if returncode < 0 else f"exited {returncode}"
            )
            what = f"{how}, but a process it left running held its output open after"
        process = f"process {pid}" if pid else "its init"
        if cmd:
            process += f" ({list(cmd)!r})"
        self._message = f'container "{container_id}": {process} {what} {timeout:g}s'
        self.args = (self._message,)

    def __str__(self) -> str:
        return self._message
