"""The extended attributes sandboxrt marks cgroup directories with, and reading and
dropping a container's owner mark. Outside the ``cgroups`` package (which it serves) so
that a supervisor, which imports no more than it must, can drop a mark too.

Standard library only.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["LOST_XATTR", "OWNER_XATTR", "PARENT_XATTR", "owner_of", "release_owner"]

#: The extended attribute naming the container whose cgroup a directory is (its id),
#: set on the leaf in every hierarchy: no other container's cgroup may be it, nor sit
#: above or below it (its destroy would kill, or remove, the other's).
OWNER_XATTR = "trusted.sandboxrt.owner"
#: The extended attribute marking a cgroup a creation made and lost to another that
#: claimed it meanwhile (value ``b"1"``): the claimant's destroy removes it.
LOST_XATTR = "trusted.sandboxrt.lost"
#: The extended attribute marking a parent level sandboxrt created (value ``b"1"``).
PARENT_XATTR = "trusted.sandboxrt.parent"


def owner_of(directory: str | os.PathLike[str]) -> str | None:
    """The container whose cgroup ``directory`` is marked as (:data:`OWNER_XATTR`), if any."""
    try:
        return os.fsdecode(os.getxattr(directory, OWNER_XATTR))
    except OSError:
        return None


def release_owner(directory: str | os.PathLike[str], container_id: str) -> None:
    """Drop ``container_id``'s :data:`OWNER_XATTR` from ``directory`` (a cgroup that
    stays, no longer its); another's mark stays. Best effort."""
    if owner_of(directory) == container_id:
        with contextlib.suppress(OSError):
            os.removexattr(directory, OWNER_XATTR)
