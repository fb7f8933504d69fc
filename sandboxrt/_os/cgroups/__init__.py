"""Linux cgroups (v1 and v2) for the containers of sandboxrt.

Typical use::

    cgroup = create(spec_linux.get("cgroupsPath"), spec_linux.get("resources"),
                    container_id=cid)
    cgroup.add_process(pid)
    record = cgroup.to_dict()            # plain JSON: keep it in the metadata
    ...
    cgroup = load(record)                # in another process
    cgroup.kill_all()
    cgroup.destroy()                     # removes only the levels create() made
                                         # (and empty parents marked as sandboxrt's)

:func:`detect` picks the driver: v2 when the cgroup2 mount offers the memory,
pids and cpu controllers, else v1. Device rules go to the v1 devices
controller, or on v2 into an eBPF device program attached to the cgroup.
Standard library only: the sandbox supervisor imports this package.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from sandboxrt._core import abi
from sandboxrt._os import syscalls
from sandboxrt._os.cgroup_marks import owner_of
from sandboxrt.errors import CorruptMetadataError, MissingFeatureError

from .common import (
    TRANSIENT_SCOPE_PREFIX,
    Cgroup,
    CgroupStats,
    Placement,
    WriteJournal,
    release_parents,
)
from .layout import CgroupLayout, Hierarchy, detect, mounted_hierarchies
from .resources import (
    CpuResources,
    DeviceRule,
    MemoryResources,
    Resources,
    ResourcesLike,
    shares_to_weight,
    swap_to_v2,
)
from .v1 import CgroupV1
from .v2 import CgroupV2

__all__ = [
    "TRANSIENT_SCOPE_PREFIX",
    "Cgroup",
    "CgroupLayout",
    "CgroupStats",
    "CgroupV1",
    "CgroupV2",
    "CpuResources",
    "DeviceRule",
    "Hierarchy",
    "MemoryResources",
    "Resources",
    "ResourcesLike",
    "WriteJournal",
    "create",
    "default_path",
    "detect",
    "left_behind",
    "load",
    "release_parents",
    "shares_default_parents",
    "shares_to_weight",
    "swap_to_v2",
]

_DRIVERS: dict[str, type[Cgroup]] = {"v1": CgroupV1, "v2": CgroupV2}
#: The top level of every default cgroup path.
_DEFAULT_TOP = "/sandboxrt"


def default_path(container_id: str, scope: str = "") -> str:
    """The cgroupsPath used when a spec gives none: ``/sandboxrt[/<scope>]/<id>``.

    ``scope`` keeps apart the containers of different stores that share an id.
    """
    return f"{_DEFAULT_TOP}/{scope}/{container_id}" if scope else f"{_DEFAULT_TOP}/{container_id}"


def shares_default_parents(path: str) -> bool:
    """Whether a cgroup at ``path`` sits below the default paths' shared parent levels."""
    return path.startswith(_DEFAULT_TOP + "/")


def create(
    path: str | None,
    resources: ResourcesLike | None = None,
    *,
    container_id: str = "",
    scope: str = "",
    layout: CgroupLayout | None = None,
    check: Callable[[Cgroup], None] | None = None,
) -> Cgroup:
    """Create the cgroup of a container and apply ``resources`` (unless ``check``, called
    first, refuses it by raising).

    ``path`` is the OCI ``linux.cgroupsPath``: absolute from each hierarchy's
    root, relative from the caller's own cgroup; an existing cgroup is used
    (and never removed). When empty, :func:`default_path` of
    ``container_id`` in ``scope``, which must not exist yet: a container of the same id
    from another store, or one left behind, is never shared (``EEXIST``).
    ``resources`` is the OCI ``linux.resources`` object or a
    :class:`Resources`. ``layout`` defaults to :func:`detect`.
    """
    exclusive = not path
    if not path:
        if not container_id:
            raise ValueError("create() needs a cgroupsPath or a container id")
        path = default_path(container_id, scope)
    layout = layout if layout is not None else detect()
    driver = layout.driver
    if driver is None:
        raise MissingFeatureError("cgroups", "neither cgroup v1 controllers nor cgroup2 is mounted")
    return _DRIVERS[driver].create(layout, path, resources, exclusive=exclusive, check=check)


def left_behind(
    path: str | None,
    resources: ResourcesLike | None = None,
    *,
    container_id: str,
    scope: str = "",
    layout: CgroupLayout | None = None,
) -> Cgroup | None:
    """The cgroup :func:`create` (with the same arguments) made for ``container_id`` and a
    creation that died left unrecorded (see :meth:`Cgroup.left_behind`); ``None`` if none."""
    layout = layout if layout is not None else detect()
    if layout.driver is None:
        return None
    exclusive = not path
    path = path or default_path(container_id, scope)
    cls = _DRIVERS[layout.driver]
    return cls.left_behind(layout, path, resources, container_id, exclusive=exclusive)


def load(
    record: Mapping[str, Any], *, container_id: str = "", layout: CgroupLayout | None = None
) -> Cgroup:
    """Reattach to a cgroup from its :meth:`Cgroup.to_dict` record.

    Raises :class:`CorruptMetadataError` when the record is malformed, or names a
    directory that is not a cgroup (its mountpoint is no mounted cgroup hierarchy), or
    (with ``container_id``) a cgroup marked as another container's: what a record
    names is killed and removed, and a record is only a file. ``layout``: the
    hierarchies to check against (default: those mounted here).
    """
    try:
        cls = _DRIVERS[record["driver"]]
        path = str(record["path"])
        placements = [Placement.from_dict(p) for p in record["placements"]]
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptMetadataError(container_id, f"bad cgroup record: {err!r}") from err
    if not placements:
        raise CorruptMetadataError(container_id, "bad cgroup record: no placements")
    hierarchies = mounted_hierarchies() if layout is None else layout.hierarchies
    mounted = {hierarchy.mountpoint for hierarchy in hierarchies}
    for placement in placements:
        if placement.mountpoint not in mounted or (layout is None and not _is_cgroupfs(placement)):
            raise CorruptMetadataError(
                container_id, f"its cgroup record names {placement.mountpoint}, no cgroup mount"
            )
        if container_id and not _is_cgroup_of(placement, container_id):
            raise CorruptMetadataError(
                container_id, f"its cgroup record names {placement.directory}, not its cgroup"
            )
    return cls(path, placements)


def _is_cgroupfs(placement: Placement) -> bool:
    """Whether a cgroup filesystem is what is at the placement's mountpoint now (not
    something mounted over it)."""
    try:
        fd = os.open(placement.mountpoint, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        kind = syscalls.filesystem_type(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return kind in (abi.CGROUP_SUPER_MAGIC, abi.CGROUP2_SUPER_MAGIC)


def _is_cgroup_of(placement: Placement, container_id: str) -> bool:
    """Whether the placement's directory is ``container_id``'s cgroup: marked as its
    (:data:`OWNER_XATTR`), gone already, or, unmarked (a hierarchy without extended
    attributes), at its default path; a level above another container's cgroup, or a
    host cgroup, is neither."""
    directory = placement.directory
    owner = owner_of(directory)
    if owner is not None:
        return owner == container_id
    if not directory.exists():
        return True
    rel = placement.rel
    return rel.name == container_id and rel.parts[0] == _DEFAULT_TOP.strip("/")
