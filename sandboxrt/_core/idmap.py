"""The uid and gid mappings of a new user namespace: pure, standard library only.

A mapping is what ``linux.uidMappings``/``gidMappings`` say: extents of
``(container_id, host_id, size)``. The kernel takes them as the text of
``/proc/PID/uid_map`` (one extent a line) and refuses extents that overlap,
on either side, or more than :data:`MAX_EXTENTS` of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "MAX_EXTENTS",
    "OVERFLOW_ID",
    "Extent",
    "extents_from_spec",
    "extents_from_text",
    "is_identity",
    "map_problems",
    "map_text",
    "mapped_root",
    "to_container",
    "to_host",
]

#: The most extents a ``uid_map`` or ``gid_map`` may have (Linux 4.15 and later).
MAX_EXTENTS = 340
#: A map's text is written in one ``write`` of less than a page.
_MAP_TEXT_LIMIT = 4096

#: Ids are below this (32 bits).
_ID_LIMIT = 2**32

#: The id the kernel shows for one a namespace does not map (``overflowuid``).
OVERFLOW_ID = 65534

#: ``(container_id, host_id, size)``.
Extent = tuple[int, int, int]


def extents_from_spec(mappings: Iterable[Mapping[str, Any]] | None) -> tuple[Extent, ...]:
    """The extents of a spec's ``uidMappings`` or ``gidMappings`` (JSON form)."""
    return tuple((int(m["containerID"]), int(m["hostID"]), int(m["size"])) for m in mappings or ())


def extents_from_text(text: str) -> tuple[Extent, ...]:
    """The extents of a ``uid_map``'s text (:func:`map_text`, or ``/proc/PID/uid_map``)."""
    extents = []
    for line in text.splitlines():
        inside, outside, size = (int(field) for field in line.split())
        extents.append((inside, outside, size))
    return tuple(extents)


#: What the host's user namespace's maps say: every id is itself.
_IDENTITY: tuple[Extent, ...] = ((0, 0, 2**32 - 1),)


def is_identity(*maps: Sequence[Extent]) -> bool:
    """Whether every one of ``maps`` maps each id to itself (the host's namespace)."""
    return all(tuple(extents) == _IDENTITY for extents in maps)


def to_host(extents: Sequence[Extent], container_id: int) -> int | None:
    """The host id that ``container_id`` maps to, or None if no extent maps it."""
    for inside, outside, size in extents:
        if inside <= container_id < inside + size:
            return outside + container_id - inside
    return None


def to_container(extents: Sequence[Extent], host_id: int) -> int | None:
    """The id in the namespace that ``host_id`` is, or None if no extent maps it."""
    for inside, outside, size in extents:
        if outside <= host_id < outside + size:
            return inside + host_id - outside
    return None


def map_text(extents: Sequence[Extent]) -> str:
    """The text the kernel takes in ``/proc/PID/uid_map`` (or ``gid_map``)."""
    return "".join(f"{inside} {outside} {size}\n" for inside, outside, size in extents)


def map_problems(extents: Sequence[Extent]) -> list[str]:
    """Why the kernel would refuse ``extents`` (positive sizes and ids in range are
    checked with the rest of the spec): too many, or two that overlap."""
    problems = []
    for i, (inside, outside, size) in enumerate(extents):
        if max(inside, outside) + size >= _ID_LIMIT:  # ((uid_t)-1 is no id)
            problems.append(f"extent [{i}] runs past the last id ({_ID_LIMIT - 2})")
    if len(extents) > MAX_EXTENTS:
        problems.append(f"{len(extents)} extents: the kernel takes at most {MAX_EXTENTS}")
    elif len(map_text(extents)) >= _MAP_TEXT_LIMIT:
        size = len(map_text(extents))
        problems.append(
            f"{len(extents)} extents make {size} bytes of map: the kernel takes under "
            f"{_MAP_TEXT_LIMIT} (one page, written at once)"
        )
    for side, name in ((0, "containerID"), (1, "hostID")):
        spans = sorted((e[side], e[side] + e[2], i) for i, e in enumerate(extents))
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            if start < end:
                low, high = sorted((first, second))
                problems.append(f"extents [{low}] and [{high}] overlap in their {name} ranges")
    return problems


def mapped_root(uid_map: str, gid_map: str) -> tuple[int, int] | None:
    """The host uid and gid of root in the user namespace of these maps (their text),
    or None when they map it to the host's root (or are empty: no new namespace)."""
    uid = to_host(extents_from_text(uid_map), 0)
    gid = to_host(extents_from_text(gid_map), 0)
    if uid is None or gid is None or (uid, gid) == (0, 0):
        return None
    return uid, gid
