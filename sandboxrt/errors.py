"""The one exception hierarchy of sandboxrt.

Every error sandboxrt raises derives from :class:`SandboxrtError`, but for an
argument of the wrong type altogether, which is a ``TypeError`` as in Python (but for
an id, :class:`InvalidIDError`, and a signal, :class:`InvalidArgumentError`).
Where a builtin means the same thing, the error derives from it too, so callers
may catch either (``ContainerNotFoundError`` is a ``LookupError``; a bad value,
:class:`InvalidArgumentError`, is a ``ValueError``).

This module imports only the standard library: the sandbox supervisor uses it.
:class:`ProcessError` and :class:`ProcessTimeoutError`, which are also
``subprocess``'s, come from :mod:`sandboxrt._subprocess_errors` on first use:
``subprocess`` imports ``threading``, whose at-fork handler would run in every
process the fork server forks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxrt._subprocess_errors import ProcessError, ProcessTimeoutError

__all__ = [
    "AmbiguousIDError",
    "ContainerExistsError",
    "ContainerFileError",
    "ContainerFileExistsError",
    "ContainerFileNotFoundError",
    "ContainerIsADirectoryError",
    "ContainerNotADirectoryError",
    "ContainerNotFoundError",
    "ContainerPermissionError",
    "CorruptMetadataError",
    "CreateTimeoutError",
    "ExecError",
    "GoferError",
    "HookError",
    "InitError",
    "InvalidArgumentError",
    "InvalidIDError",
    "InvalidStateError",
    "LockTimeoutError",
    "MissingFeatureError",
    "NoOverlayError",
    "ProcessError",
    "ProcessNotFoundError",
    "ProcessTimeoutError",
    "ProtocolError",
    "SandboxDiedError",
    "SandboxrtError",
    "SpecError",
    "SystemCallError",
    "WaitTimeoutError",
    "file_error",
]


class SandboxrtError(Exception):
    """Base class of every error raised by sandboxrt."""

    #: The container the error is about ("" where it is none's: a spec read on its own, a
    #: missing feature found outside a container's operation, an id prefix that names
    #: several).
    container_id: str = ""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as it is, not remade by calling the class with ``args`` (the message,
        # not what ``__init__`` takes): a process pool passes errors on.
        args = self.args
        if isinstance(self, OSError) and self.filename is not None:  # (not in its args)
            args = (self.errno, self.strerror, self.filename, None, self.filename2)
        return (_rebuilt, (type(self), args, self.__dict__))


def _rebuilt(cls: type[SandboxrtError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls, *args)
    if isinstance(error, OSError):
        OSError.__init__(error, *args)  # (errno, strerror and filename from them)
    else:
        error.args = args
    error.__dict__.update(state)
    return error


class InvalidIDError(SandboxrtError, ValueError):
    """A container id is malformed."""

    def __init__(self, container_id: str, reason: str) -> None:
        shown = container_id if len(container_id) <= 80 else container_id[:77] + "..."
        super().__init__(f"invalid container id {shown!r}: {reason}")
        self.container_id = container_id
        self.reason = reason


class ContainerNotFoundError(SandboxrtError, LookupError):
    """No container matches an id or id prefix."""

    def __init__(self, id_or_prefix: str, detail: str = "") -> None:
        # (Quoted as every error quotes a container, escaped as JSON: a prefix is any text.)
        super().__init__(detail or f"container {json.dumps(id_or_prefix)} does not exist")
        self.container_id = id_or_prefix


class AmbiguousIDError(SandboxrtError, LookupError):
    """An id prefix matches more than one container."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        names = ", ".join(repr(c) for c in sorted(candidates))
        super().__init__(f"container id prefix {prefix!r} is ambiguous: it matches {names}")
        self.prefix = prefix
        self.candidates = sorted(candidates)


class ContainerExistsError(SandboxrtError, FileExistsError):
    """A container with this id already exists."""

    def __init__(self, container_id: str, detail: str = "") -> None:
        text = f'container "{container_id}" already exists'
        super().__init__(f"{text}: {detail}" if detail else text)
        self.container_id = container_id


class InvalidStateError(SandboxrtError, RuntimeError):
    """An operation is not allowed in the container's current status."""

    def __init__(self, operation: str, container_id: str, status: str, *, reason: str = "") -> None:
        text = f'cannot {operation} container "{container_id}" in state {status}'
        super().__init__(f"{text}: {reason}" if reason else text)
        self.operation = operation
        self.container_id = container_id
        self.status = status
        self.reason = reason


class InvalidArgumentError(SandboxrtError, ValueError):
    """An argument a call cannot take for this container (not the spec: see SpecError)."""

    def __init__(self, container_id: str, problem: str) -> None:
        # (no container for an argument of no container's call: a ``Config``'s)
        super().__init__(f'container "{container_id}": {problem}' if container_id else problem)
        self.container_id = container_id
        self.problem = problem


@contextlib.contextmanager
def arguments_of(container_id: str) -> Iterator[None]:
    """A plain ``ValueError`` raised in the block (a bad argument, found by code that knows
    no container) becomes an :class:`InvalidArgumentError` naming ``container_id``."""
    try:
        yield
    except SandboxrtError:
        raise
    except ValueError as exc:
        raise InvalidArgumentError(container_id, str(exc)) from None


class SpecError(SandboxrtError, ValueError):
    """An OCI runtime spec (config.json) is malformed or invalid.

    ``problems`` lists ``(json_path, message)`` pairs; the message shows them all.
    """

    def __init__(
        self, problems: list[tuple[str, str]], *, source: str | None = None, container_id: str = ""
    ) -> None:
        lines = [f"{path}: {msg}" if path else msg for path, msg in problems]
        prefix = f"{source}: " if source else ""
        if len(lines) == 1:
            text = prefix + lines[0]
        else:
            text = prefix + "invalid spec:\n  " + "\n  ".join(lines)
        super().__init__(text)
        self.problems = problems
        self.source = source
        self.container_id = container_id


class CorruptMetadataError(SandboxrtError):
    """A stored container record cannot be read back."""

    def __init__(self, container_id: str, cause: str) -> None:
        super().__init__(f'metadata of container "{container_id}" is corrupt: {cause}')
        self.container_id = container_id
        self.cause = cause


class LockTimeoutError(SandboxrtError, TimeoutError):
    """The lock of a container could not be taken in time."""

    def __init__(self, container_id: str, timeout: float) -> None:
        super().__init__(
            f'timed out after {timeout:g}s waiting for the lock of container "{container_id}": '
            "another operation on it is still running"
        )
        self.container_id = container_id
        self.timeout = timeout


class HookError(SandboxrtError):
    """An OCI hook failed, timed out or could not be started."""

    def __init__(
        self,
        path: str,
        *,
        phase: str = "",
        container_id: str = "",
        returncode: int | None = None,
        output: str = "",
        reason: str = "",
    ) -> None:
        where = f"{phase} hook {path}" if phase else f"hook {path}"
        if container_id:
            where += f' of container "{container_id}"'
        if reason:
            what = reason
        elif returncode is not None and returncode < 0:
            what = f"killed by signal {-returncode}"
        else:
            what = f"exited with status {returncode}"
        text = f"{where} failed: {what}"
        if output.strip():
            text += f"\noutput:\n{output.rstrip()}"
        super().__init__(text)
        self.path = path
        self.phase = phase
        self.container_id = container_id
        self.returncode = returncode
        self.output = output
        self.reason = reason


class MissingFeatureError(SandboxrtError, OSError):
    """The machine lacks something sandboxrt needs (privilege, kernel feature, tool), or
    (``unsupported``) sandboxrt lacks it: a spec field it does not apply yet."""

    def __init__(self, feature: str, detail: str = "", *, unsupported: bool = False) -> None:
        where = "is not supported by sandboxrt yet" if unsupported else "is not available"
        text = f"{feature} {where}" + ("" if unsupported else " on this machine")
        if detail:
            text += f": {detail}"
        super().__init__(text)
        self.feature = feature
        self.detail = detail
        self.unsupported = unsupported

    def naming(self, container_id: str) -> MissingFeatureError:
        """This error, its feature naming ``container_id`` (itself if it names it
        already)."""
        if f'container "{container_id}"' in str(self):
            self.container_id = self.container_id or container_id
            return self
        feature = f'{self.feature} (container "{container_id}")'
        named = MissingFeatureError(feature, self.detail, unsupported=self.unsupported)
        named.container_id = container_id
        return named


class NoOverlayError(SandboxrtError, LookupError):
    """An overlay-only operation on a container created without ``Config(overlay=True)``."""

    def __init__(self, container_id: str, operation: str) -> None:
        super().__init__(
            f'cannot {operation} container "{container_id}": it has no overlay root'
            " (create it with Config(overlay=True))"
        )
        self.container_id = container_id
        self.operation = operation


class SystemCallError(SandboxrtError, OSError):
    """A system call failed while working on a container."""

    def __init__(self, what: str, err: OSError, *, container_id: str = "") -> None:
        who = f'container "{container_id}": ' if container_id else ""
        cause = str(err.strerror or err)
        super().__init__(err.errno, f"{who}{what}: {cause}")
        self.what = what
        self.container_id = container_id
        self._cause = cause

    def naming(self, container_id: str) -> SystemCallError:
        """This error, naming ``container_id`` (itself if it names one already)."""
        if self.container_id:
            return self
        return SystemCallError(
            self.what, OSError(self.errno, self._cause), container_id=container_id
        )


class SandboxDiedError(SandboxrtError):
    """The sandbox supervisor (or a gofer) is gone while an operation needed it."""

    def __init__(self, container_id: str, detail: str = "") -> None:
        text = f'the sandbox of container "{container_id}" is not running'
        if detail:
            text += f": {detail}"
        super().__init__(text)
        self.container_id = container_id


class ProtocolError(SandboxrtError):
    """The sandbox or gofer sent something that breaks the control protocol."""


class InitError(SandboxrtError):
    """The container's init failed before it could run the container's program."""

    def __init__(self, container_id: str, cause: str) -> None:
        super().__init__(f'container "{container_id}": {cause}')
        self.container_id = container_id
        self.cause = cause


class WaitTimeoutError(SandboxrtError, TimeoutError):
    """A wait for a container or process did not finish in time."""

    def __init__(self, container_id: str, timeout: float) -> None:
        super().__init__(f'container "{container_id}" did not exit within {timeout:g}s')
        self.container_id = container_id
        self.timeout = timeout


class ExecError(SandboxrtError):
    """A process could not be exec'd into a container (missing binary, bad cwd or user...)."""

    def __init__(self, container_id: str, executable: str, cause: str) -> None:
        super().__init__(f'container "{container_id}": cannot exec {executable!r}: {cause}')
        self.container_id = container_id
        self.executable = executable
        self.cause = cause


class ProcessNotFoundError(SandboxrtError, ProcessLookupError):
    """A pid is not a process of the container, or ``exited``, or has no terminal for a
    foreground signal. Waits accept only the init and processes exec'd into the container."""

    def __init__(
        self, container_id: str, pid: int, detail: str = "", *, exited: bool = False
    ) -> None:
        text = detail or f'pid {pid} does not belong to container "{container_id}"'
        if f'"{container_id}"' not in text:  # (a supervisor's detail may name it already)
            text = f'container "{container_id}": {text}'
        super().__init__(text)
        self.container_id = container_id
        self.pid = pid
        #: The process was the container's and has exited.
        self.exited = exited


class CreateTimeoutError(SandboxrtError, TimeoutError):
    """A sandbox stayed silent too long while its container was being created."""

    def __init__(self, container_id: str, timeout: float) -> None:
        super().__init__(
            f'container "{container_id}": the sandbox gave no sign for {timeout:g}s '
            "while it was being created"
        )
        self.container_id = container_id
        self.timeout = timeout


class GoferError(SandboxrtError):
    """A container's gofer is not running, so its file API cannot work."""

    def __init__(self, container_id: str, detail: str = "") -> None:
        text = f'the gofer of container "{container_id}" is not running'
        if detail:
            text += f": {detail}"
        super().__init__(text)
        self.container_id = container_id


class ContainerFileError(SandboxrtError, OSError):
    """A file operation in a container failed; ``filename`` is the container's path.

    The subclasses below are also the matching builtin (``FileNotFoundError``...).
    """

    def __init__(self, container_id: str, path: str, err: int, reason: str) -> None:
        super().__init__(err, f'container "{container_id}": {reason}', path)
        self.container_id = container_id


class ContainerFileNotFoundError(ContainerFileError, FileNotFoundError):
    """A path of the container does not exist."""


class ContainerFileExistsError(ContainerFileError, FileExistsError):
    """A path of the container exists already."""


class ContainerIsADirectoryError(ContainerFileError, IsADirectoryError):
    """A path of the container is a directory where a file was expected."""


class ContainerNotADirectoryError(ContainerFileError, NotADirectoryError):
    """A path of the container is not a directory where one was expected."""


class ContainerPermissionError(ContainerFileError, PermissionError):
    """An operation on a container's file is not permitted (a read-only mount, say)."""


_FILE_ERRORS: dict[int, type[ContainerFileError]] = {
    errno.ENOENT: ContainerFileNotFoundError,
    errno.EEXIST: ContainerFileExistsError,
    errno.EISDIR: ContainerIsADirectoryError,
    errno.ENOTDIR: ContainerNotADirectoryError,
    errno.EACCES: ContainerPermissionError,
    errno.EPERM: ContainerPermissionError,
    errno.EROFS: ContainerPermissionError,
}


def file_error(container_id: str, path: str, err: int, reason: str = "") -> ContainerFileError:
    """The :class:`ContainerFileError` (subclass) for ``errno`` ``err`` on ``path``."""
    cls = _FILE_ERRORS.get(err, ContainerFileError)
    return cls(container_id, path, err, reason or os.strerror(err))


#: Errors that are also ``subprocess``'s, made on first use (see the module docstring).
_SUBPROCESS_LIKE = frozenset({"ProcessError", "ProcessTimeoutError"})


if not TYPE_CHECKING:  # (a checker sees the two above: a misspelt name is an error)

    def __getattr__(name: str) -> Any:
        if name in _SUBPROCESS_LIKE:
            from sandboxrt import _subprocess_errors

            value = getattr(_subprocess_errors, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
