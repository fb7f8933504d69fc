"""The library's side of a container's gofer: starting it and talking to it.

The gofer (``sandboxrt._proc.gofer``) is started with its container (decision 37):
:class:`PendingGofer` launches it, :meth:`PendingGofer.prepare` has it open the
container's rootfs and bind sources as detached mounts (which go to the sandbox), and,
once the container is created, :meth:`PendingGofer.start` hands it a pidfd of the
supervisor and its listening socket (``<runtime dir>/gofer-<id hash>.sock``, bound here
so it exists at once) without waiting for an answer; the gofer asks the supervisor for
the container's root itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence

from sandboxrt._core.file_protocol import FileReply, FileRequest, GoferPrepare, GoferStart
from sandboxrt._core.plan import gofer_log, gofer_socket
from sandboxrt._core.protocol import Launched
from sandboxrt._core.records import ProcessIdentity
from sandboxrt._os import channel, procfs
from sandboxrt._proc.launcher import (
    ForkServerLauncher,
    GoferLauncher,
    LaunchedProcess,
    Launcher,
    SubprocessLauncher,
    default_launcher,
)
from sandboxrt.errors import GoferError, ProtocolError
from sandboxrt.sandbox import alive, identity_of, kill_process, open_pidfd

__all__ = ["Gofer", "PendingGofer", "socket_path"]

#: The gofer's listening socket, in the sandbox's runtime directory.

#: How long a gofer's launched process may take to name the gofer (seconds).
_LAUNCH_TIMEOUT = 30.0


class Gofer:
    """A container's gofer: the process that serves its files (``container.files``)."""

    def __init__(self, container_id: str, identity: ProcessIdentity, socket_path: str) -> None:
        self.container_id = container_id
        self.identity = identity
        #: The gofer's control socket (``SOCK_SEQPACKET``, mode 0600).
        self.socket = socket_path

    def __repr__(self) -> str:
        return f"Gofer(container_id={self.container_id!r}, pid={self.pid})"

    @property
    def pid(self) -> int:
        """The gofer's pid on the host."""
        return self.identity.pid

    def is_running(self) -> bool:
        """Whether the gofer (not a process reusing its pid) still runs."""
        return alive(self.identity)

    def kill(self, timeout: float = 10.0) -> bool:
        """SIGKILL the gofer and wait up to ``timeout`` seconds; ``True`` once it is gone."""
        return kill_process(self.identity, timeout)

    def connect(self) -> socket.socket:
        """A connection to the gofer; :class:`GoferError` if it is not running."""
        if not self.is_running():
            raise GoferError(self.container_id, f"pid {self.pid} has exited")
        try:
            return channel.connect(self.socket, timeout=None)
        except OSError as exc:
            raise GoferError(self.container_id, str(exc)) from exc

    def ask(
        self, conn: socket.socket, request: FileRequest, fds: Sequence[int] = ()
    ) -> tuple[FileReply, list[int]]:
        """One request on ``conn``: the reply and the fds that came with it."""
        try:
            channel.send(conn, request, fds)
            return channel.receive(conn, FileReply)
        except (ConnectionError, BrokenPipeError) as exc:
            raise GoferError(self.container_id, f"it went away: {exc}") from exc
        except ValueError as exc:
            raise ProtocolError(f'container "{self.container_id}": gofer: {exc}') from exc


class PendingGofer:
    """A launched gofer that waits for :meth:`start` (its root, pidfd and socket)."""

    def __init__(self, launcher: Launcher | None, container_id: str = "") -> None:
        self._process: LaunchedProcess | None = None
        self._container_id = container_id
        #: What a gofer launched here writes to stderr, quoted if it fails to start.
        self._log = -1
        self.identity: ProcessIdentity | None = None
        self._launcher = launcher or default_launcher()
        self._sock: socket.socket | None = None
        #: The sources of the ``GoferPrepare`` sent and not answered yet (:meth:`ask`).
        self._asked: list[tuple[str, bool]] | None = None
        #: :meth:`start` handed the gofer over: its container's destroy ends it.
        self._started = False
        if isinstance(self._launcher, ForkServerLauncher):
            self._sock = self._launcher.take_gofer()  # forked ahead by the fork server
        #: The gofer was forked ahead: if it died meanwhile, one is launched instead.
        self._warm = self._sock is not None
        if self._sock is not None:
            self._sock.settimeout(_LAUNCH_TIMEOUT)
        else:
            self._launch()

    def _launch(self) -> None:
        ours, theirs = channel.socket_pair()
        ours.settimeout(_LAUNCH_TIMEOUT)
        self._sock = ours
        chosen = self._launcher
        starter = chosen if isinstance(chosen, GoferLauncher) else SubprocessLauncher()
        self._close_log()
        self._log = os.memfd_create("sandboxrt-gofer-log", os.MFD_CLOEXEC)
        try:
            self._process = starter.launch_gofer(bootstrap_fd=theirs.fileno(), log_fd=self._log)
        except BaseException as exc:
            ours.close()
            self._close_log()
            if isinstance(exc, OSError):  # (an interpreter that is not there, say)
                raise GoferError(self._container_id, f"it could not be launched: {exc}") from exc
            raise
        finally:
            theirs.close()

    def _launched(self, container_id: str) -> ProcessIdentity:
        """The gofer's identity, from its ``Launched`` (received once)."""
        if self.identity is not None:
            return self.identity
        assert self._sock is not None
        try:
            launched, fds = channel.receive(self._sock, Launched)
        except (OSError, ValueError) as exc:
            said = self._said()
            detail = f"it did not start: {exc}" + (f"; it said: {said}" if said else "")
            raise GoferError(container_id, detail) from exc
        channel.close_fds(fds)
        self._close_log()
        return self._identify(launched)

    def _said(self) -> str:
        """The end of what the gofer launched here wrote to stderr (a traceback, say)."""
        if self._log < 0:
            return ""
        if self._process is not None:  # (all of it: it has exited, or soon will)
            with contextlib.suppress(Exception):
                self._process.wait(timeout=2.0)
        size = os.fstat(self._log).st_size
        text = os.pread(self._log, 2000, max(0, size - 2000)).decode(errors="replace")
        return " | ".join(line for line in text.strip().splitlines()[-3:])

    def _close_log(self) -> None:
        if self._log >= 0:
            os.close(self._log)
            self._log = -1

    def ask(self, sources: Sequence[tuple[str, bool]]) -> None:
        """Send the gofer ``GoferPrepare`` for ``sources`` now, without waiting (it waits
        in the socket while a gofer starts): it opens them while we go on, and
        :meth:`prepare` with the same sources takes them."""
        try:
            self._send_prepare(sources)
        except OSError:
            self._asked = None  # (a warm gofer that died: :meth:`prepare` replaces it)

    def prepare(self, container_id: str, sources: Sequence[tuple[str, bool]]) -> list[int]:
        """The detached mounts of ``sources`` (``(host path, recursive)``), opened by the
        gofer; ``OSError`` when one cannot be made (a missing source...), as
        :func:`sandboxrt._os.mounts.open_host_trees` says."""
        try:
            return self._prepare(container_id, sources)
        except GoferError:
            if not self._warm:
                raise
        # The gofer forked ahead is gone (killed, say) or stuck: it is ended, and one
        # launched for this container.
        self.close()
        if self.identity is not None:
            kill_process(self.identity, 10.0)
        self._warm, self.identity, self._asked = False, None, None
        self._launch()
        return self._prepare(container_id, sources)

    def _send_prepare(self, sources: Sequence[tuple[str, bool]]) -> None:
        assert self._sock is not None
        self._asked = [(path, rec) for path, rec in sources]
        channel.send(self._sock, GoferPrepare([[path, rec] for path, rec in sources]))

    def _prepare(self, container_id: str, sources: Sequence[tuple[str, bool]]) -> list[int]:
        wanted = [(path, rec) for path, rec in sources]
        if self._asked is not None and self._asked != wanted:
            raise ValueError("the gofer was asked for other trees")  # (it answers once)
        self._launched(container_id)
        assert self._sock is not None
        try:
            if self._asked is None:
                self._send_prepare(wanted)
            self._asked = None
            reply, trees = channel.receive(self._sock, FileReply)
            if reply.ok and len(trees) < len(wanted):
                channel.receive_rest(self._sock, trees, len(wanted))
        except (OSError, ValueError) as exc:
            raise GoferError(container_id, f"it did not prepare the root: {exc}") from exc
        if not reply.ok:
            channel.close_fds(trees)
            raise OSError(reply.errno, reply.error)
        return trees

    def _identify(self, launched: Launched) -> ProcessIdentity:
        if self._process is not None:
            self._process.wait()
            self._process = None
        # (gone already: a start time nothing can match, so it reads as dead)
        identity = identity_of(launched.pid, launched.start_ticks)
        self.identity = identity or ProcessIdentity(launched.pid, 0, procfs.boot_id())
        return self.identity

    def start(
        self,
        container_id: str,
        *,
        supervisor: ProcessIdentity,
        runtime_dir: str,
        control_socket: str,
        uid: int,
        gid: int,
        subcontainer: bool = False,
        mapped: bool = False,
    ) -> Gofer | None:
        """Hand the gofer its socket and the supervisor; it fetches the container's root
        from the supervisor (``control_socket``) and serves from then on, until the
        supervisor exits or, for a ``subcontainer`` (whose root it fetches at once), its
        init does.

        None when the sandbox has exited already (a quick program started by
        ``run``): the gofer is stopped, there is nothing left to serve.
        """
        identity = self._launched(container_id)
        path = socket_path(runtime_dir, container_id)
        pidfd = open_pidfd(supervisor)
        if pidfd is None:
            self.abort()
            return None
        try:
            log = os.open(
                gofer_log(runtime_dir, container_id),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                0o600,
            )
            try:
                # Its root shows no host file (decision 38): the supervisor's socket is
                # reached through an fd of its directory.
                directory = os.open(runtime_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    # One left by a creation of this id that crashed is stale (we hold the
                    # container's lock).
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    with channel.bind_listener(path) as listener:
                        assert self._sock is not None
                        message = GoferStart(
                            container_id,
                            uid,
                            gid,
                            control_socket,
                            watch_init=subcontainer,
                            mapped=mapped,
                        )
                        fds = [pidfd, listener.fileno(), log, directory]
                        channel.send(self._sock, message, fds)
                finally:
                    os.close(directory)
            finally:
                os.close(log)
        finally:
            os.close(pidfd)
        self.close()
        self._started = True
        return Gofer(container_id, identity, path)

    def __enter__(self) -> PendingGofer:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.abort()

    def abort(self) -> None:
        """Stop the gofer of a creation that failed: it exits, and is waited for (a
        no-op once :meth:`start` handed it over)."""
        if self._started:
            return
        if self._sock is not None and self.identity is None:
            with contextlib.suppress(GoferError):
                self._launched("")
        self.close()
        if self.identity is not None:
            kill_process(self.identity, 10.0)

    def close(self) -> None:
        self._close_log()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._process is not None:
            with contextlib.suppress(Exception):
                self._process.wait(timeout=10.0)
            self._process = None


#: Where the gofer of a container listens (see :func:`sandboxrt._core.plan.gofer_socket`).
socket_path = gofer_socket
