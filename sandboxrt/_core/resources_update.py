"""An update of a live container's resources, as ``runc update --resources`` makes one:
which ``linux.resources`` fields may change, and the spec document they change. Pure: no
cgroup is touched here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "UPDATABLE",
    "check_placed",
    "checked_changes",
    "restored",
    "to_write",
    "updated_document",
]

#: The fields an update may change, by section: those ``runc update`` changes on a live
#: cgroup (``unified``, cgroup v2's files, whole). Device rules, huge page limits, the OOM
#: killer, swappiness and block I/O throttles stay as created.
UPDATABLE: Mapping[str, frozenset[str]] = {
    "memory": frozenset({"limit", "reservation", "swap"}),
    "cpu": frozenset({"shares", "quota", "period", "burst", "cpus", "mems"}),
    "blockIO": frozenset({"weight"}),
    "pids": frozenset({"limit"}),
    "unified": frozenset(),
}

_WHERE = "linux.resources"


def checked_changes(resources: object) -> dict[str, Any]:
    """``resources`` (an OCI ``linux.resources`` object holding the fields to change) as a
    dict, checked to name only what :data:`UPDATABLE` allows: ``TypeError`` unless it is
    a mapping, ``ValueError`` naming the first field that may not change (or none)."""
    if not isinstance(resources, Mapping):
        kind = type(resources).__name__
        raise TypeError(f"resources must be a mapping (an OCI linux.resources), not {kind}")
    changes: dict[str, Any] = {}
    for section, value in resources.items():
        fields = UPDATABLE.get(section)
        if fields is None:
            raise ValueError(f"{_WHERE}.{section} cannot be updated ({_updatable()})")
        if not isinstance(value, Mapping):
            raise ValueError(f"{_WHERE}.{section} must be an object")
        if section != "unified":
            for field in value:
                if field not in fields:
                    where = f"{_WHERE}.{section}.{field}"
                    raise ValueError(f"{where} cannot be updated ({_updatable()})")
        changes[section] = dict(value)
    if not any(changes.values()):
        raise ValueError(f"nothing to update: give the {_WHERE} fields to change")
    return changes


def _updatable() -> str:
    fields = [
        f"{section}.{field}" if field else section
        for section, names in UPDATABLE.items()
        for field in sorted(names) or [""]
    ]
    return "what may change, as with runc update: " + ", ".join(fields)


#: The cgroup v1 controllers whose hierarchy a container's cgroup is in only when its spec
#: asked for them at creation (the cost of a cpuset cgroup, an unused blkio one), and
#: the fields that need them.
_PLACED_ON_DEMAND = (("cpuset", "cpu", ("cpus", "mems")), ("blkio", "blockIO", ("weight",)))


def check_placed(changes: Mapping[str, Any], controllers: frozenset[str] | None) -> None:
    """``ValueError`` if ``changes`` need a cgroup v1 controller whose hierarchy the
    container's cgroup is not in (``controllers``: those it is in; ``None`` on v2)."""
    if controllers is None:
        return
    for controller, section, fields in _PLACED_ON_DEMAND:
        asked = [f for f in fields if f in (changes.get(section) or {})]
        if asked and controller not in controllers:
            raise ValueError(
                f"{_WHERE}.{section}.{asked[0]} can change only for a container whose spec"
                f" set {section} {' or '.join(fields)} at creation: its cgroup is in the"
                f" {controller} hierarchy (cgroup v1) only then"
            )


def updated_document(document: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` (a spec's JSON) with ``changes`` in its ``linux.resources``: the
    fields given replace theirs, every other stays (``unified`` is replaced whole)."""
    linux = dict(document.get("linux") or {})
    resources = dict(linux.get("resources") or {})
    for section, value in changes.items():
        if section == "unified":
            resources[section] = dict(value)
        else:
            resources[section] = {**(resources.get(section) or {}), **value}
    linux["resources"] = resources
    return {**document, "linux": linux}


def to_write(document: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """What of the updated ``document`` goes to the cgroup: the ``changes``, and the memory
    limit beside a new swap limit (cgroup v1 orders the two writes by it)."""
    memory = changes.get("memory")
    if not memory or "swap" not in memory or "limit" in memory:
        return dict(changes)
    limit = _section(document, "memory").get("limit")
    if limit is None:
        return dict(changes)
    return {**changes, "memory": {**memory, "limit": limit}}


def restored(document: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """What puts back the fields ``changes`` names as ``document`` (the spec before the
    update) has them, after an update failed half-way; a field it leaves unset is left
    as the update wrote it."""
    back: dict[str, Any] = {}
    for section, value in changes.items():
        before = _section(document, section)
        if section == "unified":
            kept = {name: before[name] for name in value if name in before}
        else:
            kept = {field: before[field] for field in value if field in before}
        if kept:
            back[section] = kept
    return to_write(document, back)


def _section(document: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    resources = (document.get("linux") or {}).get("resources") or {}
    found = resources.get(section) or {}
    return found if isinstance(found, Mapping) else {}
