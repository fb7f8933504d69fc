"""Where container records live and how operations on one container are serialised."""

from __future__ import annotations

from sandboxrt.stores.base import DEFAULT_LOCK_TIMEOUT, MetadataStore
from sandboxrt.stores.file import FileStore, default_root
from sandboxrt.stores.memory import MemoryStore

__all__ = ["DEFAULT_LOCK_TIMEOUT", "FileStore", "MemoryStore", "MetadataStore", "default_root"]
