"""Where container records live and how operations on one container are serialised."""

from __future__ import annotations

from sandboxrt.stores.base import DEFAULT_LOCK_TIMEOUT, MetadataStore
from sandboxrt.stores.file import FileStore, default_root
from sandboxrt.stores.memory import MemoryStore

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "FileStore",
    "MemoryStore",
    "MetadataStore",
    "default_root",
    "store_or_default",
]


def store_or_default(store: MetadataStore | None) -> MetadataStore:
    """``store``, or a :class:`FileStore` at the default root for ``None``; a
    ``TypeError`` for what is no store (a path, say)."""
    if store is None:
        return FileStore()
    if not isinstance(store, FileStore | MemoryStore) and not isinstance(store, MetadataStore):
        raise TypeError(f"store must be a MetadataStore (FileStore, MemoryStore...), not {store!r}")
    return store
