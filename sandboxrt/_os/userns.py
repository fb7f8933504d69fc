"""Entering a new user namespace whose uid and gid maps are written from outside it.

A process that has just made a user namespace has every capability in it and
none outside, so it may only map its own uid there. Ranges of ids take a
writer with ``CAP_SETUID``/``CAP_SETGID`` in the parent namespace, as
``newuidmap`` or runc's parent process is: :class:`MapWriter` is a child forked
before the namespace is made, which stays outside and writes both maps for
its parent. ``setgroups`` stays allowed (the writer is privileged), so the
container's additional gids can be set. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os

from sandboxrt._core import abi, idmap
from sandboxrt._os import syscalls

__all__ = ["MapWriter"]

#: How much of the writer's error comes back.
_REPORT_MAX = 1000


class MapWriter:
    """A child, forked now (before the parent joins or makes any namespace), that
    writes ``uid_map`` and ``gid_map`` for its parent once :meth:`enter` asks it.

    Use it as a context manager: leaving without :meth:`enter` ends the child.
    """

    def __init__(self, uid_map: str, gid_map: str) -> None:
        parent = os.getpid()
        self._ended = False
        self._go_r, self._go_w = os.pipe2(os.O_CLOEXEC)
        self._report_r, report_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid = os.fork()
        except BaseException:
            for fd in (self._go_r, self._go_w, self._report_r, report_w):
                os.close(fd)
            raise
        if self.pid == 0:
            os.close(self._go_w)
            os.close(self._report_r)
            _write_maps(parent, uid_map, gid_map, self._go_r, report_w)
        os.close(self._go_r)
        os.close(report_w)

    def enter(self) -> None:
        """Make the new user namespace, have the child map it, and become root in it
        (uid and gid 0, no additional groups: the maps must map both)."""
        try:
            syscalls.unshare(abi.CLONE_NEWUSER)
        except BaseException:
            self._end()
            raise
        os.write(self._go_w, b"1")
        report = self._end()
        if report:
            raise OSError(report)
        os.setresgid(0, 0, 0)
        os.setgroups([])
        os.setresuid(0, 0, 0)

    def _end(self) -> str:
        """Let the child go (it exits at once unless told to write), reap it, and
        return what it reported (empty when it wrote both maps)."""
        if self._ended:
            return ""
        self._ended = True
        os.close(self._go_w)
        with os.fdopen(self._report_r, "rb") as report:
            text = report.read(_REPORT_MAX).decode(errors="replace")
        _, status = os.waitpid(self.pid, 0)
        if not text and os.waitstatus_to_exitcode(status) != 0:
            text = f"the user namespace's map writer exited with status {status}"
        return text

    def __enter__(self) -> MapWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self._end()


def _write_maps(parent: int, uid_map: str, gid_map: str, go: int, report: int) -> None:
    """The child's part: wait for the word, write the maps, exit (0 when written)."""
    code = 1
    try:
        if os.read(go, 1) == b"1":
            for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
                fd = os.open(f"/proc/{parent}/{name}", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, text.encode())
                except OSError as err:
                    raise OSError(
                        err.errno, f"writing the {name} {text!r}: {err.strerror}"
                    ) from err
                finally:
                    os.close(fd)
        code = 0
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report, str(exc).encode()[:_REPORT_MAX])
    finally:
        os._exit(code)


def become_root_of_joined(uid_map: str, gid_map: str) -> None:
    """In a user namespace just joined (``setns``): check it is mapped as the spec says
    (``uid_map``, ``gid_map``; empty: not said), and become its root, as runc does (the
    host's root may be none of its ids: then nothing it makes could be ours)."""
    for name, expected in (("uid_map", uid_map), ("gid_map", gid_map)):
        with open(f"/proc/self/{name}") as f:
            text = f.read()
        # (Compared as sets: the kernel keeps more than five extents sorted.)
        found = sorted(idmap.extents_from_text(text))
        shown = "; ".join(" ".join(line.split()) for line in text.splitlines())
        if not expected:
            # Not said: then it must map root to the host's (we stay who we are).
            if idmap.to_host(found, 0) != 0:
                raise OSError(
                    errno.EINVAL,
                    f"the user namespace joined maps root to another host id ({name}: "
                    f"{shown}): give its uidMappings and gidMappings in the spec",
                )
            continue
        if found != sorted(idmap.extents_from_text(expected)):
            raise OSError(
                errno.EINVAL,
                f"the user namespace joined is mapped otherwise than the spec says "
                f"({name}: {shown or 'nothing'})",
            )
    try:
        os.setresgid(0, 0, 0)
        with contextlib.suppress(PermissionError):  # (setgroups denied there: none to drop)
            os.setgroups([])
        os.setresuid(0, 0, 0)
    except OSError as exc:
        raise OSError(
            exc.errno, f"the user namespace joined maps no root (uid and gid 0): {exc.strerror}"
        ) from None
