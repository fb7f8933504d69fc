"""Container ids: validation and lookup by id or unique prefix. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable

from sandboxrt.errors import AmbiguousIDError, ContainerNotFoundError, InvalidIDError

__all__ = ["MAX_ID_LENGTH", "resolve_id", "validate_id"]

MAX_ID_LENGTH = 1024
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def validate_id(container_id: str) -> str:
    """Return ``container_id`` if it is a valid id, else raise :class:`InvalidIDError`."""
    if not isinstance(container_id, str):
        raise InvalidIDError(repr(container_id), "an id must be a string")
    if not container_id:
        raise InvalidIDError(container_id, "an id must not be empty")
    if container_id in (".", ".."):
        raise InvalidIDError(container_id, "an id must not be '.' or '..'")
    if "/" in container_id:
        raise InvalidIDError(container_id, "an id must not contain '/'")
    if "\0" in container_id:
        raise InvalidIDError(container_id, "an id must not contain a NUL byte")
    if len(container_id) > MAX_ID_LENGTH:
        raise InvalidIDError(container_id, f"an id must be at most {MAX_ID_LENGTH} characters")
    if not _ID_RE.fullmatch(container_id):
        raise InvalidIDError(
            container_id,
            "an id must start with a letter or digit and contain only letters, digits, "
            "'_', '.', '+' and '-'",
        )
    return container_id


def resolve_id(id_or_prefix: str, known: Iterable[str]) -> str:
    """Resolve an id or a unique id prefix against ``known`` ids.

    An exact match wins even when it also prefixes other ids. An ambiguous
    prefix raises :class:`AmbiguousIDError`; no match raises
    :class:`ContainerNotFoundError`.
    """
    validate_id(id_or_prefix)
    matches = []
    for candidate in known:
        if candidate == id_or_prefix:
            return candidate
        if candidate.startswith(id_or_prefix):
            matches.append(candidate)
    if not matches:
        raise ContainerNotFoundError(id_or_prefix)
    if len(matches) > 1:
        raise AmbiguousIDError(id_or_prefix, matches)
    return matches[0]
