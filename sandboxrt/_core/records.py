"""The persisted record of a container and its versioned JSON envelope.

A record is read and written with one cattrs converter (:data:`converter`).
On disk it is ``{"schema": SCHEMA_VERSION, "container": {...}}``; older
schemas are brought forward by pure dict-to-dict migrations in
:data:`MIGRATIONS`.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs

from sandboxrt._core.ids import validate_id
from sandboxrt._core.status import Status, check_transition
from sandboxrt._forksafe import ForkSafeLock
from sandboxrt.errors import InvalidIDError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ContainerRecord",
    "ProcessIdentity",
    "converter",
    "record_from_json",
    "record_to_json",
    "spec_text",
]

SCHEMA_VERSION = 1


@attrs.frozen
class ProcessIdentity:
    """A process that cannot be confused with a later one reusing its PID.

    ``start_ticks`` is field 22 of ``/proc/PID/stat`` (clock ticks since boot)
    and ``boot_id`` the kernel's boot id: together with the pid they name one
    process for the lifetime of the machine.
    """

    pid: int
    start_ticks: int
    boot_id: str


@attrs.frozen
class ContainerRecord:
    """What sandboxrt persists about one container."""

    id: str
    bundle: str
    spec: dict[str, Any] = attrs.field(repr=False)
    status: Status
    created_at: _dt.datetime
    owner: str = ""
    #: Its root container's id (empty: its own). Paths are made of it: a valid id only.
    sandbox_id: str = attrs.field(default="", validator=lambda _r, _a, v: _check_sandbox_id(v))
    sandbox: ProcessIdentity | None = None
    init: ProcessIdentity | None = None
    gofer: ProcessIdentity | None = None
    runtime_dir: str = ""
    config: dict[str, Any] = attrs.field(factory=dict, repr=False)
    annotations: dict[str, str] = attrs.field(factory=dict, repr=False)
    #: The container's cgroup (``Cgroup.to_dict()``), or ``None`` when it has none.
    cgroup: dict[str, Any] | None = attrs.field(default=None, repr=False)
    #: The process that created the container: while it is ``creating``, a creator that
    #: is gone means a creation that died half-way (the container reads stopped).
    creator: ProcessIdentity | None = None
    #: The ``uid_map`` and ``gid_map`` (their text) of the sandbox's own user namespace;
    #: ``None`` when the sandbox has none (its ids are the host's).
    id_maps: tuple[str, str] | None = None
    #: An operation under way, under the container's lock, that leaves the container
    #: apart from what its record says until it ends: ``{"operation": "kill"}`` (of every
    #: process: the cgroup frozen for a moment), ``{"operation": "update", "changes":
    #: {...}}`` (the cgroup written before the record is saved), with ``"by"``, the
    #: :class:`ProcessIdentity` (as a dict) of the process doing it. Found set by the next
    #: holder of the lock (a kill's cgroup is thawed first), it is one that process died
    #: in, an update of which that holder finishes (not in a destroy, nor once stopped:
    #: only clears), or, the process alive, one whose end the store could not save: cleared.
    pending: dict[str, Any] = attrs.field(factory=dict, repr=False)

    def with_status(self, new: Status) -> ContainerRecord:
        """A copy in status ``new``; raises if the transition is illegal."""
        return attrs.evolve(self, status=check_transition(self.id, self.status, new))


def _problem(exc: BaseException, type_: type | None) -> str:
    """How a field that fails to structure is described (a validator's own words)."""
    if isinstance(exc, ValueError) and not isinstance(exc, cattrs.BaseValidationError):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _check_sandbox_id(value: str) -> None:
    if value:
        try:
            validate_id(value)
        except InvalidIDError as exc:
            raise ValueError(f"sandbox_id: {exc}") from None


converter = cattrs.Converter()
converter.register_unstructure_hook(_dt.datetime, lambda d: d.isoformat())
converter.register_structure_hook(_dt.datetime, lambda v, _: _dt.datetime.fromisoformat(v))

_PLAIN_JSON = frozenset({"spec", "config", "annotations", "cgroup", "pending"})


def _unstructure_record(record: ContainerRecord) -> dict[str, Any]:
    # The spec, config, annotations and cgroup are JSON documents already: they need no
    # walk (which would cost more than the rest of a save together).
    return {
        field.name: (
            getattr(record, field.name)
            if field.name in _PLAIN_JSON
            else converter.unstructure(getattr(record, field.name))
        )
        for field in attrs.fields(ContainerRecord)
    }


converter.register_unstructure_hook(ContainerRecord, _unstructure_record)

Migration = Callable[[dict[str, Any]], dict[str, Any]]

#: ``MIGRATIONS[n]`` turns a schema ``n`` envelope into a schema ``n + 1`` one.
MIGRATIONS: Mapping[int, Migration] = {}


_SPEC_TEXTS: dict[int, tuple[dict[str, Any], str]] = {}
_SPEC_TEXTS_LOCK = ForkSafeLock()  # (records are saved from many threads)
#: The longest spec text kept (longer than any spec a sandbox takes).
_SPEC_TEXT_KEPT = 4 << 20


def spec_text(spec: dict[str, Any]) -> str:
    """The JSON text of a record's spec, kept per spec object: a record's spec never
    changes after creation, and it is most of every save (a seccomp profile alone is
    tens of kilobytes)."""
    cached = _SPEC_TEXTS.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    if len(text) > _SPEC_TEXT_KEPT:  # (a spec no sandbox takes: refused, never saved)
        return text
    with _SPEC_TEXTS_LOCK:
        if len(_SPEC_TEXTS) >= 64:
            _SPEC_TEXTS.pop(next(iter(_SPEC_TEXTS)))
        _SPEC_TEXTS[id(spec)] = (spec, text)
    return text


def record_to_json(record: ContainerRecord) -> bytes:
    """Serialise ``record`` into its versioned envelope."""
    container = converter.unstructure(record)
    spec = container.pop("spec")
    text = json.dumps(container, sort_keys=True, separators=(",", ":"))
    text = f'{text[:-1]},"spec":{spec_text(spec)}}}'
    return f'{{"container":{text},"schema":{SCHEMA_VERSION}}}'.encode()


def record_from_json(data: bytes | str) -> ContainerRecord:
    """Parse an envelope written by :func:`record_to_json` (any known schema).

    Raises ``ValueError`` (or a ``cattrs`` error, which is one) when the data is
    not a record; stores turn that into ``CorruptMetadataError``.
    """
    envelope = json.loads(data)
    if not isinstance(envelope, dict) or not isinstance(envelope.get("schema"), int):
        raise ValueError("not a sandboxrt record envelope (no integer 'schema')")
    schema = envelope["schema"]
    if schema > SCHEMA_VERSION:
        raise ValueError(f"record schema {schema} is newer than this sandboxrt ({SCHEMA_VERSION})")
    while schema < SCHEMA_VERSION:
        if schema not in MIGRATIONS:
            raise ValueError(f"no migration from record schema {schema}")
        envelope = MIGRATIONS[schema](envelope)
        schema = envelope["schema"]
    try:
        return converter.structure(envelope["container"], ContainerRecord)
    except cattrs.BaseValidationError as exc:
        problems = "; ".join(cattrs.transform_error(exc, format_exception=_problem))
        raise ValueError(f"record does not match schema {SCHEMA_VERSION}: {problems}") from exc
    except (KeyError, TypeError) as exc:
        raise ValueError(f"record does not match schema {SCHEMA_VERSION}: {exc}") from exc
