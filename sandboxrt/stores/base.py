"""The metadata store protocol: where container records live and are locked."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

from sandboxrt._core.records import ContainerRecord

__all__ = ["DEFAULT_LOCK_TIMEOUT", "MetadataStore"]

#: Seconds an operation waits for a container's lock before ``LockTimeoutError``.
DEFAULT_LOCK_TIMEOUT = 30.0


@runtime_checkable
class MetadataStore(Protocol):
    """Persists container records and serialises operations on one container.

    Mutating calls (``create``, ``save``, ``delete``) must be made while holding
    ``lock(container_id)``; ``load`` and ``list_ids`` may be called at any time
    and never see a torn record.
    """

    @property
    def runtime_dir(self) -> Path:
        """A directory (on the host) for sandbox sockets and status files."""
        ...

    def lock(
        self, container_id: str, *, timeout: float | None = None
    ) -> AbstractContextManager[None]:
        """Hold the container's exclusive, cross-process lock for a ``with`` block.

        Raises ``LockTimeoutError`` after ``timeout`` seconds (default
        :data:`DEFAULT_LOCK_TIMEOUT`).
        """
        ...

    def create(self, record: ContainerRecord) -> None:
        """Store a new record; ``ContainerExistsError`` if the id is taken."""
        ...

    def save(self, record: ContainerRecord) -> None:
        """Store ``record`` atomically, replacing the previous one."""
        ...

    def load(self, container_id: str) -> ContainerRecord:
        """The record of ``container_id`` (an exact id).

        Raises ``ContainerNotFoundError`` or ``CorruptMetadataError``.
        """
        ...

    def delete(self, container_id: str) -> None:
        """Remove the record; a missing record is not an error."""
        ...

    def list_ids(self) -> list[str]:
        """The ids of all stored containers, sorted."""
        ...
