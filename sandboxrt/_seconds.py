"""The timeout a caller gives a wait: checked once, where it enters the API."""

from __future__ import annotations

import math
import time

from sandboxrt.errors import InvalidArgumentError

__all__ = ["FOREVER", "deadline_after", "seconds_left", "wait_seconds"]

#: Past this many seconds (some 31 years) a timeout is none: longer than a socket's or a
#: timer's timeout can be, and than anyone waits.
FOREVER = 1e9


def wait_seconds(container_id: str, timeout: object, name: str = "timeout") -> float | None:
    """``timeout`` as seconds to wait, ``None`` for no bound: as ``subprocess`` takes it,
    infinity (and anything past :data:`FOREVER`) waits for ever. A :class:`TypeError`
    for what is no number, an :class:`InvalidArgumentError` for NaN."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(timeout).__name__}")
    if isinstance(timeout, int):  # (one past a float's range: no NaN, bounded here)
        return None if timeout >= FOREVER else float(max(timeout, -FOREVER))
    if math.isnan(timeout):
        raise InvalidArgumentError(container_id, f"{name} must be a number of seconds, not nan")
    return None if timeout >= FOREVER else float(timeout)


def deadline_after(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` at which ``timeout`` (seconds, ``None``: none) runs out."""
    return None if timeout is None else time.monotonic() + timeout


def seconds_left(deadline: float | None) -> float | None:
    """What is left before ``deadline`` (:func:`deadline_after`'s), never below 0."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
