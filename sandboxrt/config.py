"""Runtime options of sandboxrt (what runsc takes as global flags)."""

from __future__ import annotations

from typing import Any, Literal, NoReturn

import attrs

from sandboxrt.errors import InvalidArgumentError

__all__ = ["DEFAULT_OVERLAY_SIZE", "Config"]

#: The default size limit of an overlay root's upper layer (a tmpfs): 256 MiB.
DEFAULT_OVERLAY_SIZE = 256 * 1024 * 1024
#: The smallest size accepted (tmpfs rounds sizes up to whole pages).
_MIN_OVERLAY_SIZE = 64 * 1024
#: The largest: a tmpfs size is a 64-bit count the kernel rounds up to pages.
_MAX_OVERLAY_SIZE = 2**63 - 1


def _check_overlay_size(_instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Config.overlay_size must be a number of bytes (int), not {value!r}")
    if not _MIN_OVERLAY_SIZE <= value <= _MAX_OVERLAY_SIZE:  # (past it, the kernel wraps it)
        _refuse(attribute, f"{_MIN_OVERLAY_SIZE} to {_MAX_OVERLAY_SIZE} bytes, not {value}")


def _check_network(_instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"Config.network must be a str, not {value!r}")
    if value not in _NETWORK_MODES:
        _refuse(attribute, f"one of {', '.join(map(repr, _NETWORK_MODES))}, not {value!r}")


def _check_flag(_instance: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"Config.{attribute.name} must be a bool, not {value!r}")


def _check_seconds(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Config.{attribute.name} must be a number of seconds, not {value!r}")
    if not 0 < value < _MAX_SECONDS:  # (NaN and infinity too)
        _refuse(attribute, f"a positive number of seconds under {_MAX_SECONDS:g}, not {value!r}")


def _refuse(attribute: attrs.Attribute[Any], must_be: str) -> NoReturn:
    raise InvalidArgumentError("", f"Config.{attribute.name} must be {must_be}")


#: The bound of every timeout (as a record's is read back: ``_container_state.configured_timeout``).
_MAX_SECONDS = 1e9
#: The values of ``Config.network``.
_NETWORK_MODES = ("sandbox", "host")


@attrs.frozen(kw_only=True)
class Config:
    """Options that shape how containers run, beyond what their spec says.

    ``network``: ``"sandbox"`` gives the sandbox the network namespace its spec
    asks for, as the OCI spec has it: a new one with loopback up when
    ``linux.namespaces`` lists one without a path, the one at its path, the
    host's when it lists none; ``"host"`` shares the host's whatever the spec says.
    ``overlay``: the container's root is a kernel overlayfs whose lower layer
    is the bundle's rootfs (read-only, never modified, shareable by any number
    of containers at once) and whose upper layer is a tmpfs of the container's
    own, limited to ``overlay_size`` bytes (default 256 MiB; writing past it
    fails with ``ENOSPC``) and to a file per 4 KiB of that (at least 1024 files),
    which bounds the kernel memory its inodes and extended attributes take; the
    changes vanish with the container, and
    ``Container.export_changes`` writes them as a tar layer. With
    ``root.readonly`` the overlay is read-only too. ``destroy_timeout``: seconds
    destroy waits for the sandbox to go. ``lock_timeout``: seconds an operation
    waits for the container's lock, which another one holds, before
    ``LockTimeoutError`` (``None``: the store's own ``lock_timeout``, 30 s unless
    the store was made with another). ``create_timeout``: seconds the sandbox may stay
    silent while it is being created (the library's own hooks not counted) before
    creation fails and the sandbox is destroyed. ``lazy_gofer``: the container's
    gofer starts at the first use of ``container.files`` instead of with the container
    (the library then opens the rootfs and bind sources for the sandbox itself): one
    process fewer for containers whose files nobody touches, such as short jobs
    ``Container.run`` starts and ends.
    """

    network: Literal["sandbox", "host"] = attrs.field(default="sandbox", validator=_check_network)
    overlay: bool = attrs.field(default=False, validator=_check_flag)
    overlay_size: int = attrs.field(default=DEFAULT_OVERLAY_SIZE, validator=_check_overlay_size)
    destroy_timeout: float = attrs.field(default=10.0, validator=_check_seconds)
    lock_timeout: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_check_seconds)
    )
    create_timeout: float = attrs.field(default=60.0, validator=_check_seconds)
    lazy_gofer: bool = attrs.field(default=False, validator=_check_flag)
