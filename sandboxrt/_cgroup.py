"""The cgroup of a container, on the library's side: made from the spec, used, removed.

Every container gets a cgroup while its sandbox starts: ``linux.cgroupsPath``
when the spec sets one (absolute from each hierarchy's root, relative from the
caller's own cgroup), else ``/sandboxrt/<id>`` for the default store and
``/sandboxrt/<store tag>/<id>`` for any other (see :func:`scope_for`), with
``linux.resources`` applied.
The container's init joins it before it runs anything of the container's (through the
directories' fds the supervisor relays, ``init.join_cgroup_fds``), so every process of
the container is born inside; the supervisor stays outside (decision 15).

Two cases run without a cgroup, and :func:`request_for` says so with ``None``:

* no cgroup hierarchy is mounted at all and the spec sets neither
  ``linux.resources`` nor ``linux.cgroupsPath`` (with either,
  :class:`MissingFeatureError` names what is missing);
* the spec sets neither, and making the cgroup is refused for lack of
  permission (``EACCES``, ``EPERM``, ``EROFS``: an unprivileged caller).

Device rules (``linux.resources.devices``) are enforced on both drivers, with
runc's defaults (``/dev/null``, ``zero``, ``full``, ``random``, ``urandom``,
``tty``, ``ptmx``, ``pts/*`` and ``mknod`` of any node) and the spec's own
``linux.devices`` allowed after the spec's rules, as runc does: on cgroup v1
through the devices controller, on cgroup v2 through an eBPF device program
(``sandboxrt._core.devicefilter``) with the same meaning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sandboxrt._core import devicefilter
from sandboxrt._core.records import ContainerRecord
from sandboxrt._os import cgroups
from sandboxrt._os.cgroups import Cgroup, CgroupLayout, DeviceRule, Resources
from sandboxrt.errors import (
    InitError,
    MissingFeatureError,
    SandboxrtError,
    SpecError,
    SystemCallError,
)
from sandboxrt.stores.file import default_root

__all__ = [
    "DEFAULT_DEVICE_RULES",
    "CgroupRef",
    "CgroupRequest",
    "attach",
    "create",
    "delegate_joining",
    "freeze",
    "memory_limit_hit",
    "naming_memory_limit",
    "orphan_levels",
    "procs_files",
    "remove",
    "remove_if_empty",
    "remove_left_behind",
    "request_for",
    "resources_for",
    "scope_for",
    "signal_all",
    "thaw",
]

log = logging.getLogger("sandboxrt")

#: The first device rule of every container: deny every device.
DENY_ALL = DeviceRule(False, "a", None, None)

#: Allowed after a spec's own device rules (runc's ``AllowedDevices``, without tun/tap).
DEFAULT_DEVICE_RULES: tuple[DeviceRule, ...] = (
    DeviceRule(True, "c", None, None, "m"),
    DeviceRule(True, "b", None, None, "m"),
    DeviceRule(True, "c", 1, 3),  # /dev/null
    DeviceRule(True, "c", 1, 5),  # /dev/zero
    DeviceRule(True, "c", 1, 7),  # /dev/full
    DeviceRule(True, "c", 1, 8),  # /dev/random
    DeviceRule(True, "c", 1, 9),  # /dev/urandom
    DeviceRule(True, "c", 5, 0),  # /dev/tty
    DeviceRule(True, "c", 5, 2),  # /dev/ptmx
    DeviceRule(True, "c", 136, None),  # /dev/pts/*
)

_NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

#: A container's cgroup: its record (checked when loaded), or a :class:`Cgroup` loaded
#: from it already (a destroy checks the record once and acts on it several times).
CgroupRef = Mapping[str, Any] | Cgroup


def attach(ref: CgroupRef, container_id: str) -> Cgroup:
    """The cgroup ``ref`` names, loaded (and checked) from its record unless it is one."""
    if isinstance(ref, Cgroup):
        return ref
    return cgroups.load(ref, container_id=container_id)


@dataclasses.dataclass(frozen=True, slots=True)
class CgroupRequest:
    """The cgroup a container asks for; ``required`` unless the spec mentions none."""

    path: str | None
    resources: Resources
    layout: CgroupLayout
    required: bool


def resources_for(spec: Mapping[str, Any]) -> Resources:
    """The spec's ``linux.resources`` with the device rules every container gets, as
    runc makes them: everything denied, then the spec's own devices (``linux.devices``,
    allowed after the rules' leading deny-all, so that a deny of one of them wins), the
    spec's rules, and :data:`DEFAULT_DEVICE_RULES`. A spec with no device rule gets the
    same (before, its cgroup allowed every device).

    A deny rule punching a hole in a wider allow rule raises :class:`SpecError` on
    both drivers, as runc refuses it: v1's devices controller would silently ignore it
    (the container could open the device the spec denies), and v2's program is
    assembled as v1 would apply the rules.
    """
    linux = spec.get("linux") or {}
    resources = Resources.from_oci(linux.get("resources"))
    own = tuple(_device_rule(d) for d in linux.get("devices") or [] if d.get("type") != "p")
    given = resources.devices
    lead = 0
    while lead < len(given) and given[lead] == DENY_ALL:
        lead += 1
    rules = (DENY_ALL, *own, *given[lead:], *DEFAULT_DEVICE_RULES)
    devicefilter.device_policy(rules)  # refused here, before any cgroup is made
    return dataclasses.replace(resources, devices=rules)


def _device_rule(device: Mapping[str, Any]) -> DeviceRule:
    kind = "c" if device.get("type") == "u" else str(device.get("type", "c"))
    return DeviceRule(True, kind, device.get("major"), device.get("minor"))


def request_for(
    spec: Mapping[str, Any], *, layout: CgroupLayout | None = None
) -> CgroupRequest | None:
    """What cgroup the container of ``spec`` gets; ``None`` to run without one.

    Raises :class:`MissingFeatureError` when the spec needs a cgroup and no
    hierarchy is mounted, :class:`~sandboxrt.errors.SpecError` for bad resources.
    """
    linux = spec.get("linux") or {}
    path = linux.get("cgroupsPath") or None
    required = linux.get("resources") is not None or path is not None
    layout = layout if layout is not None else cgroups.detect()
    driver = layout.driver
    if driver is None:
        if required:
            raise MissingFeatureError(
                "cgroups",
                "neither cgroup v1 controllers nor a cgroup2 filesystem is mounted, "
                "and the spec sets linux.resources or linux.cgroupsPath",
            )
        log.debug("no cgroup hierarchy is mounted: the container runs without a cgroup")
        return None
    return CgroupRequest(path, resources_for(spec), layout, required)


def scope_for(runtime_dir: os.PathLike[str] | str, *, transient: bool = False) -> str:
    """The default cgroup path's store component: none for the default store, else
    a short hash of the store's runtime directory, so stores never share a cgroup;
    ``transient`` for a store no later process uses (its level is not kept: see
    :data:`cgroups.TRANSIENT_SCOPE_PREFIX`)."""
    if Path(runtime_dir) == default_root() / ".sandboxes":
        return ""
    digest = hashlib.blake2s(os.fsencode(runtime_dir), digest_size=4).hexdigest()
    return cgroups.TRANSIENT_SCOPE_PREFIX + digest if transient else digest


def create(request: CgroupRequest, container_id: str, scope: str = "") -> Cgroup | None:
    """Make the cgroup; ``None`` when refused for lack of permission and not required."""

    def claim(cgroup: Cgroup) -> None:
        """A cgroupsPath naming a cgroup that already holds processes is refused (as runc
        does), before any limit is written to it: kill-all and destroy would otherwise
        reach processes that are not ours. So is one that is, or sits in or above,
        another container's cgroup (processes or not: the one destroyed first would kill
        the other's, or remove its cgroup). One we have just made is empty."""
        owner = cgroup.owner_around()
        if owner is not None:
            raise SandboxrtError(
                f'container "{container_id}": its cgroup {request.path} is, or is in or '
                f'above, the cgroup of container "{owner}"'
            )
        if not all(p.rel in p.created for p in cgroup.placements):
            busy = cgroup.pids()
            if busy:
                raise SandboxrtError(
                    f'container "{container_id}": its cgroup {request.path} already holds '
                    f"{len(busy)} process(es) of someone else"
                )
        try:
            cgroup.mark_owner(container_id)
        except FileExistsError:
            cgroup.disown_created()  # (the winner's now: our rollback must leave it)
            raise SandboxrtError(
                f'container "{container_id}": its cgroup {request.path} was taken by '
                "another container meanwhile"
            ) from None

    try:
        with naming_missing(container_id):
            return cgroups.create(
                request.path,
                request.resources,
                container_id=container_id,
                scope=scope,
                layout=request.layout,
                check=claim,
            )
    except SystemCallError as err:
        if request.required or err.errno not in _NO_PERMISSION:
            named = err.naming(container_id)
            if named is err:
                raise
            raise named from err
        log.debug("container %s runs without a cgroup: %s", container_id, err)
        return None
    except SpecError as err:  # (a resource the kernel refused: a device it does not know)
        if err.source is not None:
            raise
        raise SpecError(err.problems, source=f'container "{container_id}"') from err


@contextlib.contextmanager
def naming_missing(container_id: str) -> Iterator[None]:
    """A :class:`MissingFeatureError` raised in the block names the container, unless
    it does already."""
    try:
        yield
    except MissingFeatureError as err:
        named = err.naming(container_id)
        if named is err:
            raise
        raise named from err


#: The files that move a process or thread into a cgroup (v1 ``tasks``; v2 threads).
_JOINING_FILES = ("cgroup.procs", "tasks", "cgroup.threads")


def delegate_joining(cgroup: Cgroup, uid: int, gid: int) -> None:
    """Give ``uid``:``gid`` the files that join ``cgroup``, in every hierarchy (as
    systemd delegates a cgroup), not its limits: the root of a container's user
    namespace, which is not the host's root, moves its processes in through them."""
    for directory in cgroup.directories:
        for name in _JOINING_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.chown(directory / name, uid, gid)


def procs_files(cgroup: Cgroup) -> list[str]:
    """The ``cgroup.procs`` file of ``cgroup`` in every hierarchy."""
    return [str(directory / "cgroup.procs") for directory in cgroup.directories]


def orphan_levels(cgroup: Cgroup, container_id: str) -> list[list[str]]:
    """For each of :func:`procs_files`, the names of the levels (bottom up) that
    :func:`remove` would remove: what the sandbox of a ``tied`` container removes itself
    once its creator is gone (``SandboxPlan.tied``), as no one else knows of them."""
    return cgroup.orphan_levels(keep_parents=_keeps_parents(cgroup), owner=container_id)


def freeze(record: CgroupRef | None, container_id: str, timeout: float) -> None:
    """Freeze every process of the container's cgroup; return once all are frozen.

    Raises :class:`MissingFeatureError` naming the freezer when the container
    has no cgroup or its cgroup no freezer.
    """
    _freezable(record, container_id).freeze(timeout=timeout)


def thaw(record: CgroupRef | None, container_id: str, *, below: bool = False) -> None:
    """Let the processes of the container's cgroup run again (with ``below``: also those
    of cgroups beneath it that the container froze itself)."""
    _freezable(record, container_id).thaw(below=below)


def is_frozen(record: CgroupRef | None, container_id: str, *, below: bool = False) -> bool:
    """Whether the container's cgroup is frozen, whatever its record says (a caller killed
    between a pause's freeze and its save leaves it so), or with ``below`` any cgroup
    beneath it that the container froze itself; ``False`` without a cgroup or a freezer,
    or where it cannot be read."""
    if record is None:
        return False
    try:
        cgroup = attach(record, container_id)
        return cgroup.can_freeze() and cgroup.is_frozen(below=below)
    except (SandboxrtError, OSError):
        return False


def _freezable(record: CgroupRef | None, container_id: str) -> Cgroup:
    if record is None:
        raise MissingFeatureError("the cgroup freezer", f'container "{container_id}" has no cgroup')
    cgroup = attach(record, container_id)
    if not cgroup.can_freeze():
        raise MissingFeatureError(
            "the cgroup freezer",
            f'the cgroup {cgroup.path} of container "{container_id}" has no freezer',
        )
    return cgroup


def signal_all(
    record: CgroupRef,
    container_id: str,
    signum: int,
    *,
    spare: int | None,
    timeout: float,
    paused: bool = False,
) -> None:
    """Send ``signum`` to every process of the container's cgroup.

    ``SIGKILL`` goes to every process (``spare`` included, should it be
    inside) and returns once the cgroup is empty: ``cgroup.kill`` on v2, else
    freeze-kill-thaw rounds, so no fork escapes (a ``paused`` cgroup ends
    thawed). Another signal spares ``spare`` and is sent while the cgroup is
    frozen (where it can be), so no process forks between the listing and the
    signal; a ``paused`` cgroup stays frozen, the signals pending until it
    resumes.
    """
    cgroup = attach(record, container_id)
    if signum == signal.SIGKILL:
        cgroup.kill_all(timeout=timeout)
        return
    frozen = False
    if not paused and cgroup.can_freeze():
        frozen = True  # thawed below even if freezing fails half-way (or is interrupted)
        with contextlib.suppress(SystemCallError):
            cgroup.freeze(timeout=min(timeout, 2.0))
    try:
        for pid in cgroup.pids():
            if pid != spare:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
    finally:
        if frozen:
            cgroup.thaw()


def freezes_to_signal(record: CgroupRef | None, container_id: str, signum: int) -> bool:
    """Whether :func:`signal_all` freezes the container's cgroup (not paused) for a
    moment to send ``signum`` (no freezer, or ``cgroup.kill`` for ``SIGKILL``: not)."""
    if record is None:
        return False
    try:
        cgroup = attach(record, container_id)
    except SandboxrtError:
        return False
    return cgroup.can_freeze() and not (signum == signal.SIGKILL and cgroup.can_kill_at_once())


def remove_left_behind(
    spec: Mapping[str, Any], container_id: str, scope: str, timeout: float
) -> None:
    """Remove the cgroup a creation of ``container_id`` (of ``spec``, in the store of
    ``scope``) that died before recording it left behind, as :func:`remove` would have:
    it would otherwise stay, and a default path's keep the id from being created again.
    A ``cgroupsPath``'s is only unmarked, and only while empty: another store's
    container of that id may be using it (a mark names the id, not the store)."""
    try:
        request = request_for(spec)
        if request is None:
            return
        cgroup = cgroups.left_behind(
            request.path,
            request.resources,
            container_id=container_id,
            scope=scope,
            layout=request.layout,
        )
    except SandboxrtError:  # (a spec no cgroup could have been made for)
        return
    if cgroup is None:
        return
    if request.path is None:  # (the store's own path: made by that creation alone)
        remove(cgroup, container_id, timeout)
    elif not cgroup.pids():
        cgroup.release_owner(container_id)


def remove_if_empty(record: CgroupRef, container_id: str) -> bool:
    """Remove the container's cgroup if sandboxrt made it and no process is left in it;
    whether it is gone. Never waits: ``rmdir`` fails at once on a busy cgroup."""
    cgroup = attach(record, container_id)
    if not all(p.rel in p.created for p in cgroup.placements):
        return False
    try:
        cgroup.destroy(timeout=0.0, keep_parents=_keeps_parents(cgroup))
    except SystemCallError:
        return False
    return True


def remove(record: CgroupRef, container_id: str, timeout: float) -> None:
    """SIGKILL what is left in the container's cgroup, then remove what sandboxrt made.

    Idempotent; a pre-existing cgroup (a ``cgroupsPath`` that existed) stays. For a
    cgroup sandboxrt made, removal is tried first: once a sandbox with a PID
    namespace of its own is gone its cgroup is empty, and ``rmdir`` fails on one
    that is not (then the processes are killed, and removal retried).
    """
    cgroup = attach(record, container_id)
    if remove_if_empty(cgroup, container_id):
        return
    cgroup.kill_all(timeout=timeout)
    cgroup.destroy(timeout=timeout, keep_parents=_keeps_parents(cgroup), owner=container_id)
    cgroup.release_owner(container_id)  # a cgroup that existed before stays, not ours


def _keeps_parents(cgroup: Cgroup) -> bool:
    """A default path's parent levels (``/sandboxrt``, a store's level) stay until this
    process exits (``cgroups.release_parents``): its next container needs them again."""
    return cgroups.shares_default_parents(cgroup.path)


def naming_memory_limit(exc: BaseException, record: ContainerRecord) -> BaseException:
    """``exc``, or for an :class:`InitError` of an init the OOM killer killed, one that
    names the memory limit it met (at create and at start alike)."""
    if not isinstance(exc, InitError):
        return exc
    requested = _requested_memory_limit(record.spec)
    memory = memory_limit_hit(record.cgroup, record.id, requested)
    return exc if memory is None else InitError(record.id, f"{exc.cause}: {memory}")


def _requested_memory_limit(spec: Mapping[str, Any]) -> int | None:
    """The spec's ``linux.resources.memory.limit`` (a record's spec: checked already)."""
    found: Any = spec
    for key in ("linux", "resources", "memory", "limit"):
        found = found.get(key) if isinstance(found, Mapping) else None
    return found if isinstance(found, int) else None


def memory_limit_hit(
    cgroup: Mapping[str, Any] | None, container_id: str, requested: int | None = None
) -> str | None:
    """What an init that died while it was made met, if its cgroup's OOM killer killed
    (as runc names a limit too low to start in); ``None`` if it did not. (Not the
    failure count, which page cache reclaimed at the limit raises too.) The limit is
    the kernel's, and ``requested`` too when the kernel rounded it (to whole pages)."""
    if cgroup is None:
        return None
    try:
        stats = cgroups.load(cgroup, container_id=container_id).stats()
    except (SandboxrtError, OSError):
        return None
    if not stats.oom_kills:
        return None
    limit = f"{stats.memory_limit} bytes"
    page = os.sysconf("SC_PAGE_SIZE")
    rounded = requested // page * page if requested is not None and requested > 0 else None
    if rounded is not None and stats.memory_limit == rounded != requested:
        limit += f", the {requested} asked for in whole pages"
    return f"its memory limit ({limit}) was reached: the OOM killer killed"
