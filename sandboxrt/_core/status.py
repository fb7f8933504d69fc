"""Container status and the rules that govern it, as data.

Everything that decides whether a status change or an operation is legal
lives in this module: one table of transitions, one table of operations.
Nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from sandboxrt.errors import InvalidStateError

__all__ = [
    "ALLOWED_BY_OPERATION",
    "TRANSITIONS",
    "Operation",
    "Status",
    "can_transition",
    "check_transition",
    "require",
]


class Status(enum.StrEnum):
    """A container's status; the values are those of the OCI state."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class Operation(enum.StrEnum):
    """Operations whose legality depends on the container's status."""

    START = "start"
    EXEC = "exec"
    PAUSE = "pause"
    RESUME = "resume"
    KILL = "kill"
    KILL_ALL = "kill-all"
    PROCESSES = "processes"
    STATS = "stats"
    FILES = "files"
    #: Change the limits of its cgroup (``runc update``).
    UPDATE = "update"
    DESTROY = "destroy"
    #: Add a subcontainer to the sandbox whose root this container is (a pod).
    ADD_CONTAINER = "add-container"


_S = Status

#: Legal status changes: ``TRANSITIONS[old]`` is the set of statuses ``old`` may become.
TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    _S.CREATING: frozenset({_S.CREATED, _S.STOPPED}),
    _S.CREATED: frozenset({_S.RUNNING, _S.STOPPED}),
    _S.RUNNING: frozenset({_S.PAUSED, _S.STOPPED}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.STOPPED}),
    _S.STOPPED: frozenset({_S.STOPPED}),
}

#: The statuses in which each operation is allowed.
ALLOWED_BY_OPERATION: Mapping[Operation, frozenset[Status]] = {
    Operation.START: frozenset({_S.CREATED}),
    Operation.EXEC: frozenset({_S.CREATED, _S.RUNNING}),
    Operation.PAUSE: frozenset({_S.RUNNING}),
    Operation.RESUME: frozenset({_S.PAUSED}),
    # A paused container takes signals (delivered once it resumes; SIGKILL resumes it).
    Operation.KILL: frozenset({_S.CREATED, _S.RUNNING, _S.PAUSED}),
    Operation.KILL_ALL: frozenset({_S.CREATED, _S.RUNNING, _S.PAUSED, _S.STOPPED}),
    # Listed as runc ps lists them: a created init, and what a stopped one left behind.
    Operation.PROCESSES: frozenset({_S.CREATED, _S.RUNNING, _S.PAUSED, _S.STOPPED}),
    Operation.STATS: frozenset({_S.CREATED, _S.RUNNING, _S.PAUSED, _S.STOPPED}),
    Operation.FILES: frozenset({_S.CREATED, _S.RUNNING, _S.PAUSED}),
    Operation.UPDATE: frozenset({_S.CREATED, _S.RUNNING, _S.PAUSED}),
    Operation.DESTROY: frozenset(_S),
    Operation.ADD_CONTAINER: frozenset({_S.CREATED, _S.RUNNING}),
}

#: How an operation is named in error messages ("cannot <verb> container ...").
_VERBS: Mapping[Operation, str] = {
    Operation.KILL_ALL: "kill all processes of",
    Operation.EXEC: "exec in",
    Operation.PROCESSES: "list the processes of",
    Operation.STATS: "read the stats of",
    Operation.FILES: "use the files of",
    Operation.ADD_CONTAINER: "add a container to",
}


def can_transition(old: Status, new: Status) -> bool:
    """Whether a container in status ``old`` may move to ``new``."""
    return new in TRANSITIONS[old]


def check_transition(container_id: str, old: Status, new: Status) -> Status:
    """Return ``new`` if the change is legal, else raise :class:`InvalidStateError`."""
    if not can_transition(old, new):
        raise InvalidStateError(f"move to state {new} the", container_id, str(old))
    return new


def require(operation: Operation, container_id: str, status: Status) -> None:
    """Raise :class:`InvalidStateError` unless ``operation`` is allowed in ``status``."""
    if status not in ALLOWED_BY_OPERATION[operation]:
        verb = _VERBS.get(operation, operation.value)
        raise InvalidStateError(verb, container_id, str(status))
