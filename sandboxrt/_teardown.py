"""A container's destroy, under its lock: its sandbox (or its place in a pod's), its pod's
members, its cgroup, gofer, runtime files and record, then its poststop hooks."""

from __future__ import annotations

import contextlib
import logging
import signal as _signal
from typing import TYPE_CHECKING

import attrs

from sandboxrt import _cgroup
from sandboxrt._container_state import LIVE, cgroup_scope, runtime_dir
from sandboxrt._core.records import ContainerRecord
from sandboxrt._core.status import Status
from sandboxrt._os import cgroups
from sandboxrt._os.cgroups import Cgroup
from sandboxrt._proc import hooks
from sandboxrt.errors import (
    ContainerNotFoundError,
    CorruptMetadataError,
    GoferError,
    SystemCallError,
)
from sandboxrt.sandbox import kill_process, remove_left_runtime_dir
from sandboxrt.stores import MetadataStore

if TYPE_CHECKING:
    from sandboxrt.container import Container

__all__ = ["teardown"]

log = logging.getLogger("sandboxrt")


def teardown(container: Container) -> None:
    """Destroy under the lock: sandbox, pod members, cgroup, gofer, runtime files,
    record, then poststop hooks (the runtime files last but for the record: if they
    cannot go, the record stays for a later destroy, with nothing else left).

    The cgroup goes once the sandbox is gone: what is left in it (a
    container without a PID namespace of its own) is killed first. A
    subcontainer leaves its sandbox (its processes killed, nothing else); a
    root container's sandbox ends, then every subcontainer noted in it is
    destroyed, each under its own lock (root lock first, then each
    subcontainer's: the only order in which two of these locks are held).
    A paused container's processes are killed through its cgroup first, then
    thawed (a root's paused subcontainers too: frozen processes would keep
    the supervisor, PID 1 of their namespace, from ending).
    """
    store = container._store
    try:
        poststop = container._hooks("poststop")
    except CorruptMetadataError as exc:  # logged, as a failing poststop hook is
        log.warning("%s: no poststop hook runs", exc)
        poststop = []
    lost_cgroup = False
    cgroup: Cgroup | None = None  # its record checked once, here
    if container._record.cgroup is not None:
        try:
            cgroup = cgroups.load(container._record.cgroup, container_id=container.id)
        except CorruptMetadataError as exc:  # (found again from the spec, below)
            log.warning("%s: its cgroup is looked for where it would be", exc)
            container._record = attrs.evolve(container._record, cgroup=None)
            lost_cgroup = True
    gofer = container._record.gofer
    if gofer is not None:
        kill_process(gofer)  # waited for at the end, while the rest is torn down
    sandbox = container.sandbox
    timeout = container._destroy_timeout()
    if sandbox is not None and not container.is_subcontainer:
        for member_id in sandbox.container_ids():
            kill_if_paused(store, member_id, container.id, timeout)
    kill_if_paused(
        store,
        container.id,
        container.sandbox_id,
        timeout,
        record=container._record,
        cgroup=cgroup,
    )
    if sandbox is not None and container.is_subcontainer:
        if container._record.status in LIVE:  # (read without the lock meanwhile, it would
            # say running once its exit file is gone, its sandbox serving on)
            container._record = container._record.with_status(Status.STOPPED)
            store.save(container._record)
        sandbox.forget_container(container.id, timeout)
    elif sandbox is not None:
        # A container whose processes all exited leaves an empty cgroup: removed
        # while the supervisor is still on its way out, not after.
        if cgroup is not None and _cgroup.remove_if_empty(cgroup, container.id):
            container._record = attrs.evolve(container._record, cgroup=None)
            cgroup = None
        sandbox.stop(timeout)
        # The supervisor is gone, so nothing can join any more: the notes are complete.
        for member_id in sandbox.container_ids():
            destroy_member(store, member_id, container.id)
    if container._launched is not None:
        # ``run``'s socket, closed once its sandbox is stopped: closed before, the
        # supervisor of a ``tied`` one would take its creator for gone, and remove
        # what we are removing.
        container._launched.close()
        container._launched = None
    # The runtime directory goes last but for the record: if it cannot (a read-only
    # store), the record stays for a later destroy, with nothing else left to do.
    # (A creation that died before it recorded its sandbox made one too, named
    # after the id: we hold the lock it held.)
    left_dir = None if container.is_subcontainer else runtime_dir(store, container.id)
    if cgroup is not None:
        _cgroup.remove(cgroup, container.id, timeout)
    elif lost_cgroup or container._record.status is Status.CREATING:
        # Its creation died between making its cgroup and recording it (or its record
        # of it cannot be read).
        scope = cgroup_scope(store)
        _cgroup.remove_left_behind(container._record.spec, container.id, scope, timeout)
    if gofer is not None and not kill_process(gofer, timeout):
        raise GoferError(container.id, f"pid {gofer.pid} did not exit")
    if sandbox is not None and not container.is_subcontainer:
        sandbox.remove_runtime_dir()
    elif left_dir is not None:
        remove_left_runtime_dir(left_dir, container.id)
    store.delete(container.id)
    hooks.run_hooks_best_effort(
        poststop,
        container._state_dict(Status.STOPPED),
        phase="poststop",
        container_id=container.id,
        cwd=container.bundle,
        log=log,
    )


def kill_if_paused(
    store: MetadataStore,
    container_id: str,
    sandbox_id: str,
    timeout: float,
    *,
    record: ContainerRecord | None = None,
    cgroup: Cgroup | None = None,
) -> None:
    """SIGKILL (through its cgroup, which thaws it) a paused container of ``sandbox_id``,
    or one whose cgroup is frozen while its record says otherwise (``cgroup``: the
    record's, loaded already).

    Frozen processes die only once thawed (v1), and the supervisor, PID 1 of
    their namespace, cannot end before them. A subcontainer's record is read
    without its lock: killing what is being destroyed anyway is idempotent.
    """
    if record is None:
        record = member_record(store, container_id)
        if record is None:
            return
    if record.sandbox_id not in ("", sandbox_id) or record.cgroup is None:
        return
    ref: _cgroup.CgroupRef = record.cgroup if cgroup is None else cgroup
    frozen = _cgroup.is_frozen(ref, container_id, below=True)
    if record.status is not Status.PAUSED and not frozen:
        return
    try:
        _cgroup.signal_all(
            ref, container_id, _signal.SIGKILL, spare=None, timeout=timeout, paused=True
        )
    except CorruptMetadataError as exc:  # (one member's must not keep the pod alive)
        log.warning("%s: its processes are not killed through its cgroup", exc)
        return
    with contextlib.suppress(SystemCallError):  # a cgroup already gone
        _cgroup.thaw(ref, container_id, below=True)


def member_record(store: MetadataStore, container_id: str) -> ContainerRecord | None:
    """The record of a pod's member, read to tear the pod down: ``None`` when it is gone,
    or unreadable (logged: one corrupt record must not keep a whole pod alive)."""
    try:
        return store.load(container_id)
    except ContainerNotFoundError:
        return None
    except CorruptMetadataError as exc:
        log.warning("a container of a pod being destroyed is left as it is: %s", exc)
        return None


def destroy_member(store: MetadataStore, container_id: str, sandbox_id: str) -> None:
    """Destroy subcontainer ``container_id`` of sandbox ``sandbox_id``, if it still is one."""
    from sandboxrt.container import Container  # (which imports this module)

    record = member_record(store, container_id)
    if record is None:
        return
    if record.sandbox_id == sandbox_id and record.id != sandbox_id:
        Container(record, store).destroy()
