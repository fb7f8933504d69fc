"""What a container's record says, read against its sandbox: its status now, its runtime
directory and cgroup scope in its store, its config's timeouts, and the sandbox a new pod
member joins."""

from __future__ import annotations

import logging
from typing import overload

from sandboxrt import _cgroup
from sandboxrt._core.plan import sandbox_paths
from sandboxrt._core.records import ContainerRecord
from sandboxrt._core.status import Operation, Status, require
from sandboxrt.errors import ContainerNotFoundError, InvalidArgumentError, InvalidStateError
from sandboxrt.sandbox import Sandbox, alive
from sandboxrt.stores import MemoryStore, MetadataStore

__all__ = [
    "LIVE",
    "cgroup_scope",
    "configured_timeout",
    "effective_status",
    "runtime_dir",
    "sandbox_to_join",
]

log = logging.getLogger("sandboxrt")

#: The statuses of a container whose sandbox should be alive.
LIVE = frozenset({Status.CREATED, Status.RUNNING, Status.PAUSED})


def runtime_dir(store: MetadataStore, sandbox_id: str) -> str:
    """The runtime directory of sandbox ``sandbox_id`` of ``store``: made from the two, never
    read from a record (whose writer could make a destroy remove any directory)."""
    runtime_dir, _, _ = sandbox_paths(str(store.runtime_dir), sandbox_id)
    return runtime_dir


def cgroup_scope(store: MetadataStore) -> str:
    """The store level of the default cgroup paths of ``store``'s containers: a
    ``MemoryStore``'s is transient (no later process will use it)."""
    return _cgroup.scope_for(store.runtime_dir, transient=isinstance(store, MemoryStore))


@overload
def configured_timeout(record: ContainerRecord, name: str, default: float) -> float: ...
@overload
def configured_timeout(record: ContainerRecord, name: str, default: None) -> float | None: ...
def configured_timeout(record: ContainerRecord, name: str, default: float | None) -> float | None:
    """The timeout ``name`` of the config ``record`` keeps (``None`` is ``default``);
    ``default`` where that is not a number of seconds (a record altered on disk must not
    keep a destroy from working)."""
    value = record.config.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        log.warning(
            'container "%s": its record\'s %s is %r: %s used',
            record.id,
            name,
            value,
            "the store's" if default is None else f"{default:g}s",
        )
        return default
    return float(value)


def effective_status(
    record: ContainerRecord, sandbox: Sandbox | None, *, ask: bool = False
) -> Status:
    """``record``'s status, or ``stopped`` where its sandbox is gone (or its supervisor on
    its way out: :meth:`Sandbox.is_serving`) or its init exited: a
    subcontainer's too once the root's init exited (the sandbox ends; the supervisor
    records the subcontainers' exits one by one on its way out); ``stopped`` where it
    is ``creating`` but its creator is gone (a creation that died half-way); and
    with ``ask``, ``running`` where it is ``created`` but the supervisor started it (a
    caller killed in :meth:`Container.start` before it recorded so), which only the
    supervisor knows: a round trip, for what tells the two apart (the status, pause)."""
    if record.status is Status.CREATING:
        if record.creator is None or alive(record.creator):
            return record.status
        return Status.STOPPED
    if record.status in LIVE and (
        sandbox is None
        or not sandbox.is_serving()
        or sandbox.exit_status(record.id) is not None
        or (record.sandbox_id != record.id and sandbox.exit_status() is not None)
    ):
        return Status.STOPPED
    created = record.status is Status.CREATED
    if created and ask and sandbox is not None and sandbox.was_started(record.id):
        return Status.RUNNING
    return record.status


def sandbox_to_join(
    store: MetadataStore, sandbox_id: str, container_id: str
) -> tuple[Sandbox, ContainerRecord]:
    """The living sandbox whose root container is ``sandbox_id``, and that root's record.

    Read without the root's lock (records are replaced atomically): a
    subcontainer's create never waits for its root's lock, so a concurrent
    destroy of the root, which takes the subcontainers' locks, cannot deadlock
    with it. Raises :class:`ContainerNotFoundError` when there is no such
    container, :class:`InvalidStateError` unless it is created or running.
    """
    try:
        record = store.load(sandbox_id)
    except ContainerNotFoundError:
        detail = f'container "{container_id}" cannot join sandbox "{sandbox_id}": it does not exist'
        raise ContainerNotFoundError(sandbox_id, detail) from None
    if record.sandbox_id and record.sandbox_id != record.id:
        raise InvalidArgumentError(
            container_id,
            f'cannot join sandbox "{sandbox_id}": that is a container of sandbox '
            f'"{record.sandbox_id}", not a sandbox',
        )
    sandbox = None
    if record.sandbox is not None:
        sandbox = Sandbox(record.id, record.sandbox, runtime_dir(store, record.id))
    try:
        require(Operation.ADD_CONTAINER, record.id, effective_status(record, sandbox))
    except InvalidStateError as exc:
        reason = f'container "{container_id}" cannot join it'
        raise InvalidStateError(
            exc.operation, exc.container_id, exc.status, reason=reason
        ) from None
    assert sandbox is not None
    return sandbox, record
