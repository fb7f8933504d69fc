"""Run OCI lifecycle hooks (``prestart``, ``createRuntime``, ``poststop``, ...).

A hook is the OCI JSON object ``{"path", "args", "env", "timeout"}``. It is run
as the runtime spec says: ``path`` is executed directly (it must be absolute;
there is no ``PATH`` lookup) with ``args`` as its whole argv (``args[0]`` is
argv[0]; ``[path]`` when absent) and ``env`` as its whole environment (empty
when absent). The container state JSON is written to its stdin, which is then
closed. The hook starts in a new session, so on timeout the hook and everything
it forked (unless it left the session) is killed with ``SIGKILL``.

This module imports only the standard library and :mod:`sandboxrt.errors`: the
sandbox supervisor imports it and must start fast. ``subprocess`` and ``logging``
are imported when a hook runs, not before: both import ``threading``, whose
at-fork handler would run in every process forked from the fork server. It is
thread-safe (one :class:`subprocess.Popen` per hook; a ``preexec_fn`` only where an init,
single-threaded, confines a startContainer hook).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sandboxrt.errors import HookError

if TYPE_CHECKING:
    import logging
    import subprocess

__all__ = ["OUTPUT_LIMIT", "run_hook", "run_hooks", "run_hooks_best_effort"]

OUTPUT_LIMIT = 64 * 1024
"""Bytes of a hook's combined stdout and stderr kept (the last ones)."""

_CHUNK = 64 * 1024
# Once the hook has exited, how long to keep reading output that a process it
# left behind (still holding the pipe) may write. Output already in the pipe is
# read at once; a hook whose pipe reaches EOF at exit pays nothing.
_DRAIN_GRACE = 0.1
# Exit polling interval, only used where pidfd_open(2) is unavailable.
_POLL_INTERVAL = 0.02
_TRUNCATED_NOTE = "[earlier output truncated]\n"


def run_hook(
    hook: Mapping[str, Any],
    state: Mapping[str, Any],
    *,
    phase: str,
    container_id: str,
    cwd: str | None = None,
) -> None:
    """Run one OCI hook with ``state`` on its stdin; raise :class:`HookError` if it fails.

    It fails when it is malformed, cannot be executed, exits non-zero, is killed
    by a signal or outlives its ``timeout``. ``cwd`` defaults to ``/``.
    """
    _run(hook, _encode_state(state), phase=phase, container_id=container_id, cwd=cwd)


def run_hooks(
    hooks: Sequence[Mapping[str, Any]],
    state: Mapping[str, Any],
    *,
    phase: str,
    container_id: str,
    cwd: str | None = None,
    confine: Callable[[], None] | None = None,
) -> None:
    """Run ``hooks`` in order; the first failure stops the run and is raised. ``confine``
    runs in each hook's process before its ``execve`` (a seccomp profile to load)."""
    data = _encode_state(state)
    for hook in hooks:
        _run(hook, data, phase=phase, container_id=container_id, cwd=cwd, confine=confine)


def run_hooks_best_effort(
    hooks: Sequence[Mapping[str, Any]],
    state: Mapping[str, Any],
    *,
    phase: str,
    container_id: str,
    cwd: str | None = None,
    log: logging.Logger | None = None,
) -> list[HookError]:
    """Run all ``hooks`` in order; log a warning for each failure and return the failures.

    For phases whose failures are not fatal per OCI (``poststart``, ``poststop``). They
    run in ``cwd`` (the bundle, where runc's ``run`` runs them), or in ``/`` if it is gone.
    """
    if log is None:
        import logging

        log = logging.getLogger(__name__)
    data = _encode_state(state)
    errors: list[HookError] = []
    if hooks and _children_reaped_unseen():
        log.warning(
            'container "%s": whether its %s hooks fail cannot be known: %s',
            container_id,
            phase,
            _REAPED_UNSEEN,
        )
    for hook in hooks:
        try:
            where = cwd if cwd is not None and os.path.isdir(cwd) else None
            _run(hook, data, phase=phase, container_id=container_id, cwd=where, fatal=False)
        except HookError as err:
            log.warning("%s", err)
            errors.append(err)
    return errors


def _encode_state(state: Mapping[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":"), default=_json_default).encode("ascii")


def _json_default(obj: object) -> object:
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def _parse(
    hook: object, phase: str, container_id: str
) -> tuple[str, list[str], dict[str, str], float | None]:
    """Validate ``hook``; return its path, argv, environment and timeout."""
    path = hook.get("path") if isinstance(hook, Mapping) else None
    shown = path if isinstance(path, str) and path else repr(path)

    def invalid(why: str) -> HookError:
        return HookError(
            shown, phase=phase, container_id=container_id, reason=f"invalid hook: {why}"
        )

    if not isinstance(hook, Mapping):
        raise invalid(f"expected a JSON object, got {type(hook).__name__}")
    if not isinstance(path, str) or not path:
        raise invalid("'path' must be a non-empty string")
    if "\0" in path:
        raise invalid("'path' contains a NUL byte")
    if not path.startswith("/"):
        raise invalid("'path' must be absolute")

    args = hook.get("args")
    if args is None:
        args = []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise invalid("'args' must be an array of strings")
    if any("\0" in a for a in args):
        raise invalid("'args' contains a NUL byte")

    env_list = hook.get("env")
    if env_list is None:
        env_list = []
    if not isinstance(env_list, list) or not all(isinstance(e, str) for e in env_list):
        raise invalid("'env' must be an array of strings")
    env: dict[str, str] = {}
    for entry in env_list:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise invalid(f"'env' entry {entry!r} is not of the form NAME=VALUE")
        if "\0" in entry:
            raise invalid(f"'env' entry {entry!r} contains a NUL byte")
        env[name] = value  # as with duplicate keys in a JSON object, the last one wins

    timeout = hook.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise invalid("'timeout' must be a number of seconds greater than zero")

    return path, list(args) or [path], env, timeout


def _run(
    hook: Mapping[str, Any],
    data: bytes,
    *,
    phase: str,
    container_id: str,
    cwd: str | None,
    confine: Callable[[], None] | None = None,
    fatal: bool = True,
) -> None:
    path, argv, env, timeout = _parse(hook, phase, container_id)
    if fatal and _children_reaped_unseen():  # (its failure would pass for success)
        raise HookError(path, phase=phase, container_id=container_id, reason=_REAPED_UNSEEN)
    try:
        import subprocess

        proc = subprocess.Popen(
            argv,
            executable=path,
            env=env,
            cwd="/" if cwd is None else cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
            start_new_session=True,
            preexec_fn=confine,  # noqa: PLW1509 (given only in an init, which has one thread)
        )
    except (OSError, subprocess.SubprocessError) as err:
        why = f"cannot execute it: {type(err).__name__}: {err}"
        if not isinstance(err, OSError):  # (how Popen says its ``preexec_fn`` failed)
            why = "cannot confine it: the container's seccomp profile did not load"
        raise HookError(path, phase=phase, container_id=container_id, reason=why) from err

    with proc:
        try:
            raw, truncated, timed_out = _communicate(proc, data, timeout)
        except BaseException:
            _kill_group(proc)
            raise
        if timed_out:
            _kill_group(proc)
        returncode = proc.wait()

    if not timed_out and returncode == 0:
        return
    output = raw.decode("utf-8", errors="replace")
    if truncated:
        output = _TRUNCATED_NOTE + output
    if timed_out:
        raise HookError(
            path,
            phase=phase,
            container_id=container_id,
            output=output,
            reason=f"timed out after {timeout:g}s",
        )
    raise HookError(
        path, phase=phase, container_id=container_id, returncode=returncode, output=output
    )


#: Why a hook's exit status cannot be known in a process that ignores SIGCHLD.
_REAPED_UNSEEN = (
    "this process ignores SIGCHLD, so the kernel reaps its children unseen and every "
    "exit status reads 0 (set signal.SIG_DFL for SIGCHLD around the call)"
)


def _children_reaped_unseen() -> bool:
    """Whether this process ignores ``SIGCHLD`` (a daemon's habit): the kernel then reaps
    its children itself, and a hook's exit status is lost (``Popen`` reads 0)."""
    return signal.getsignal(signal.SIGCHLD) is signal.SIG_IGN


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the hook's process group (its pid: it leads a new session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _communicate(
    proc: subprocess.Popen[bytes], data: bytes, timeout: float | None
) -> tuple[bytes, bool, bool]:
    """Feed ``data`` to the hook and collect its output until it exits.

    Return ``(last output bytes, truncated, timed_out)``. On timeout the hook is
    left running (the caller kills it). Unlike :meth:`Popen.communicate`, the
    output kept is bounded and a process the hook left holding its stdout does
    not keep us waiting.
    """
    assert proc.stdin is not None and proc.stdout is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    stdin_fd = proc.stdin.fileno()
    stdout_fd = proc.stdout.fileno()
    os.set_blocking(stdin_fd, False)
    os.set_blocking(stdout_fd, False)
    view = memoryview(data)
    offset = 0
    out = bytearray()
    truncated = False
    stdout_open = True
    exited = False
    grace_end: float | None = None
    pidfd = _pidfd(proc.pid)
    sel = selectors.DefaultSelector()

    def stop_writing() -> None:
        assert proc.stdin is not None
        if not proc.stdin.closed:
            if stdin_fd in sel.get_map():
                sel.unregister(stdin_fd)
            proc.stdin.close()

    try:
        sel.register(stdout_fd, selectors.EVENT_READ)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        if data:
            sel.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            stop_writing()

        while stdout_open or not exited:
            now = time.monotonic()
            if not exited and pidfd is None and proc.poll() is not None:
                exited = True
            if exited and grace_end is None:
                stop_writing()
                grace_end = now + _DRAIN_GRACE
            limit = grace_end if exited else deadline
            if limit is not None and now >= limit:
                if exited:
                    break  # done draining
                return (*_tail(out, truncated), True)
            wait = None if limit is None else limit - now
            if pidfd is None and not exited:
                wait = _POLL_INTERVAL if wait is None else min(wait, _POLL_INTERVAL)

            for key, _ in sel.select(wait):
                if key.fd == pidfd:
                    exited = True
                    sel.unregister(pidfd)
                elif key.fd == stdout_fd:
                    try:
                        chunk = os.read(stdout_fd, _CHUNK)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        stdout_open = False
                        sel.unregister(stdout_fd)
                        continue
                    out += chunk
                    if len(out) > 2 * OUTPUT_LIMIT:
                        del out[:-OUTPUT_LIMIT]
                        truncated = True
                elif key.fd == stdin_fd:
                    try:
                        offset += os.write(stdin_fd, view[offset : offset + _CHUNK])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        offset = len(view)  # the hook does not read its stdin
                    if offset >= len(view):
                        stop_writing()
        return (*_tail(out, truncated), False)
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)


def _tail(out: bytearray, truncated: bool) -> tuple[bytes, bool]:
    if len(out) > OUTPUT_LIMIT:
        return bytes(out[-OUTPUT_LIMIT:]), True
    return bytes(out), truncated
