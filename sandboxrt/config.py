"""Runtime options of sandboxrt (what runsc takes as global flags)."""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = ["Config"]


@attrs.frozen(kw_only=True)
class Config:
    """Options that shape how containers run, beyond what their spec says.

    ``network``: ``"sandbox"`` gives each sandbox its own network namespace with
    loopback up (unless the spec joins one); ``"host"`` shares the host's.
    ``overlay``: mount the rootfs read-only under a tmpfs overlay (not yet
    available: raises ``MissingFeatureError``). ``destroy_timeout``: seconds
    destroy waits for the sandbox to go. ``create_timeout``: seconds the sandbox may stay
    silent while it is being created (the library's own hooks not counted) before
    creation fails and the sandbox is destroyed.
    """

    network: Literal["sandbox", "host"] = "sandbox"
    overlay: bool = False
    destroy_timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    lock_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    create_timeout: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
