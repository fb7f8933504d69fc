"""An update of a live container's resources, as ``runc update --resources`` makes one:
which ``linux.resources`` fields may change, and the spec document they change. Pure: no
cgroup is touched here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "UPDATABLE",
    "check_not_overridden",
    "check_placed",
    "checked_changes",
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
    dict, checked to name only what :data:`UPDATABLE` allows, each with a value that sets
    something: ``TypeError`` unless it is a mapping, ``ValueError`` naming the first field
    that may not change, or that a spec would take for unset (0, "", null: an update that
    changed nothing, yet recorded a change)."""
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
        for field, given in value.items():
            where = f"{_WHERE}.{section}.{field}"
            if section != "unified" and field not in fields:
                raise ValueError(f"{where} cannot be updated ({_updatable()})")
            zero_is_a_value = (section, field) == ("cpu", "burst")  # (no burst)
            unset = given in (0, "") and not zero_is_a_value and not isinstance(given, bool)
            if given is None or unset:
                raise ValueError(
                    f"{where}: {given!r} sets nothing (a spec takes it for unset); give -1"
                    " for no limit where one is allowed"
                )
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
    if changes.get("unified"):
        raise ValueError(f"{_WHERE}.unified names cgroup v2 files: this cgroup is v1")
    for controller, section, fields in _PLACED_ON_DEMAND:
        asked = [f for f in fields if f in (changes.get(section) or {})]
        if asked and controller not in controllers:
            raise ValueError(
                f"{_WHERE}.{section}.{asked[0]} can change only for a container whose spec"
                f" set {section} {' or '.join(fields)} at creation: its cgroup is in the"
                f" {controller} hierarchy (cgroup v1) only then"
            )


#: The cgroup v2 files each field is written to. A spec's ``unified`` entry for one of
#: them wins over the field (it is written last, as runc writes it).
_V2_FILES: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("memory", "limit"): ("memory.max",),
    ("memory", "swap"): ("memory.swap.max",),
    ("memory", "reservation"): ("memory.low",),
    ("cpu", "shares"): ("cpu.weight",),
    ("cpu", "quota"): ("cpu.max",),
    ("cpu", "period"): ("cpu.max",),
    ("cpu", "burst"): ("cpu.max.burst",),
    ("cpu", "cpus"): ("cpuset.cpus",),
    ("cpu", "mems"): ("cpuset.mems",),
    ("pids", "limit"): ("pids.max",),
    ("blockIO", "weight"): ("io.weight", "io.bfq.weight"),
}


def check_not_overridden(document: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
    """``ValueError`` for a field of ``changes`` whose cgroup v2 file the updated spec
    ``document`` sets in ``unified`` too: that entry would win, at creation and in the
    record, over what the update wrote."""
    unified = _section(document, "unified")
    for section, value in changes.items():
        for field in value if section != "unified" else ():
            for name in _V2_FILES.get((section, field), ()):
                if name in unified:
                    raise ValueError(
                        f"{_WHERE}.{section}.{field}: the spec's {_WHERE}.unified sets"
                        f" {name}, which wins over it; update that instead"
                    )


def updated_document(document: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` (a spec's JSON) with ``changes`` in its ``linux.resources``: the
    fields given replace theirs (``unified``'s files too), every other stays. A memory
    limit made unlimited makes a swap limit the spec has unlimited too, as the write does
    (and as runc does)."""
    linux = dict(document.get("linux") or {})
    resources = dict(linux.get("resources") or {})
    for section, value in changes.items():
        resources[section] = {**(resources.get(section) or {}), **value}
    memory = changes.get("memory") or {}
    merged = resources.get("memory") or {}
    if memory.get("limit") == -1 and "swap" not in memory and merged.get("swap") is not None:
        resources["memory"] = {**merged, "swap": -1}
    linux["resources"] = resources
    return {**document, "linux": linux}


#: Fields written together: a new one goes with the other as the updated spec has it
#: (cgroup v1 orders the memory limit's and swap's writes by both; v2 writes memory+swap
#: as swap alone, from both; and its ``cpu.max`` holds quota and period in one).
_PAIRED = (("memory", "limit", "swap"), ("cpu", "quota", "period"))


def to_write(document: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """What of the updated ``document`` goes to the cgroup: the ``changes``, each with
    the field it is written with (:data:`_PAIRED`) as ``document`` has it."""
    written = {section: dict(value) for section, value in changes.items()}
    for section, one, other in _PAIRED:
        given = written.get(section)
        if not given or (one not in given and other not in given):
            continue
        have = _section(document, section)
        for field in (one, other):
            if field not in given and have.get(field) is not None:
                given[field] = have[field]
    return written


def _section(document: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    resources = (document.get("linux") or {}).get("resources") or {}
    found = resources.get(section) or {}
    return found if isinstance(found, Mapping) else {}
