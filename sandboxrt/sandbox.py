"""The library's side of a sandbox: launching it and talking to its supervisor."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import shutil
import signal
import socket
import stat
from collections.abc import Callable, Sequence
from typing import Any

import backoff

from sandboxrt._core import abi, idmap
from sandboxrt._core.plan import (
    container_exit_file,
    control_socket_path,
    gofer_log,
    gofer_socket,
    id_file_name,
)
from sandboxrt._core.protocol import (
    EXEC_EXITS_FILE,
    ContainerPlan,
    ExecExits,
    ExecPlan,
    ExitStatus,
    Launched,
    Progress,
    Reply,
    Request,
    SandboxPlan,
    decode,
)
from sandboxrt._core.records import ProcessIdentity
from sandboxrt._os import capabilities, channel, procfs
from sandboxrt._proc.init import open_cgroup_dirs
from sandboxrt._proc.launcher import LaunchedProcess, Launcher, default_launcher
from sandboxrt._proc.warm import is_warm_shape
from sandboxrt._signals import interrupts_deferred
from sandboxrt.errors import (
    ContainerExistsError,
    ContainerNotFoundError,
    CreateTimeoutError,
    ExecError,
    HookError,
    InitError,
    InvalidStateError,
    MissingFeatureError,
    NoOverlayError,
    ProcessNotFoundError,
    ProtocolError,
    SandboxDiedError,
    SandboxrtError,
    SystemCallError,
    WaitTimeoutError,
)

__all__ = [
    "Sandbox",
    "alive",
    "identity_of",
    "kill_process",
    "open_pidfd",
    "remove_left_runtime_dir",
    "remove_tree",
]

log = logging.getLogger("sandboxrt")

#: The most of an exit status file read (it is a short JSON document).
_EXIT_RECORD_MAX = 4096
#: The most an :class:`ExecExits` record takes (``EXEC_EXITS_KEPT`` statuses, each with
#: its container's id: 1024 characters at most, and JSON may escape each in 6).
_EXEC_EXITS_MAX = 32 << 20


def _read_small_file(path: str, limit: int, sandbox_id: str) -> bytes | None:
    """At most ``limit`` bytes of the supervisor's record ``path`` (``None``: none). It
    may be a user namespace's root: never followed if a link, never waited on if a
    FIFO, read only if a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProtocolError(f'sandbox "{sandbox_id}": unreadable {path}: {exc}') from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProtocolError(f'sandbox "{sandbox_id}": {path} is not a file')
        return f.read(limit)


#: What ``wait`` reports when the supervisor was killed before it could record an exit.
KILLED_RETURNCODE = -signal.SIGKILL
#: How long a supervisor may take over a question it needs no waiting to answer (a wait
#: whose deadline is past, 0 or less: asked with ``nohang``, as ``subprocess`` polls).
ANSWER_TIMEOUT = 5.0


def remote_error(
    container_id: str, error_type: str, message: str, details: dict[str, Any]
) -> SandboxrtError:
    """The exception a failure reported by the supervisor or init stands for."""
    if error_type == "HookError":
        return HookError(
            details.get("path", "?"),
            phase=details.get("phase", ""),
            container_id=container_id,
            returncode=details.get("returncode"),
            output=details.get("output", ""),
            reason=details.get("reason", "" if details.get("returncode") is not None else message),
        )
    if error_type == "State":
        return InvalidStateError("start", container_id, "running")
    if error_type == "Stopped":
        return InvalidStateError("exec in", container_id, "stopped")
    if error_type == "ProcessNotFoundError":
        pid = int(details.get("pid", 0))
        return ProcessNotFoundError(container_id, pid, message, exited=bool(details.get("exited")))
    if error_type == "MissingFeatureError":
        return MissingFeatureError(str(details.get("feature", "?")), str(details.get("detail", "")))
    if error_type == "NoOverlay":
        return NoOverlayError(container_id, "export the changes of")
    if error_type == "ProtocolError":
        return ProtocolError(f'container "{container_id}": {message}')
    if error_type == "ContainerExistsError":
        return ContainerExistsError(container_id)
    if error_type == "ContainerNotFoundError":
        return ContainerNotFoundError(container_id)
    if error_type == "SandboxStopped":
        return SandboxDiedError(container_id, message)
    return InitError(container_id, message)


class Sandbox:
    """A sandbox: a supervisor process (PID 1 of its PID namespace) and its control socket."""

    def __init__(self, sandbox_id: str, supervisor: ProcessIdentity, runtime_dir: str) -> None:
        self.id = sandbox_id
        self.supervisor = supervisor
        self.runtime_dir = runtime_dir
        #: After a launch with ``autostart`` (``run``): the socket the launch went on,
        #: on which the supervisor sends the root's exit status (see :meth:`wait`).
        self._exit_conn: socket.socket | None = None
        #: After a ``tied`` launch: the socket the launch went on, whose closing ends the
        #: sandbox (for its creator to keep: :meth:`take_tie`).
        self._tie: socket.socket | None = None

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, pid={self.pid})"

    @property
    def pid(self) -> int:
        """The supervisor's pid on the host (what the OCI state and pid file give)."""
        return self.supervisor.pid

    @property
    def control_socket(self) -> str:
        """The path of the supervisor's control socket."""
        return control_socket_path(self.runtime_dir)

    @property
    def exit_file(self) -> str:
        """The path of the file the root container's exit status is written to."""
        return container_exit_file(self.runtime_dir, self.id, self.id)

    @property
    def log_file(self) -> str:
        """The path of the supervisor's log (its stderr)."""
        return os.path.join(self.runtime_dir, "supervisor.log")

    # -- launching ---------------------------------------------------------------------

    @classmethod
    def launch(
        cls,
        plan: SandboxPlan,
        stdio: Sequence[int],
        *,
        launcher: Launcher | None = None,
        on_mounted: Callable[[Sandbox], dict[str, Any]] | None = None,
        on_created: Callable[[Sandbox], None] | None = None,
        make_cgroup: Callable[[], tuple[list[str], list[list[str]]]] | None = None,
        on_cgroup: Callable[[], None] | None = None,
        timeout: float | None = None,
    ) -> tuple[Sandbox, int | None]:
        """Start a sandbox for ``plan``; returns it and the pty master, if any.

        ``make_cgroup`` (for a plan whose init has ``await_cgroup``) runs in this
        process while the sandbox starts, and returns the ``cgroup.procs`` files
        the init joins, and the levels of each a ``tied`` sandbox removes itself if
        its creator is gone (``_cgroup.orphan_levels``); ``on_cgroup`` runs right
        after the init was told which (the place to record it: the init does not
        wait for that). ``on_mounted``
        runs (in this process) once the container's mounts are made and before
        ``pivot_root``: the place of prestart and createRuntime hooks. It returns the OCI state the
        createContainer hooks get. With ``plan.init.autostart``, ``on_created``
        runs once the container is created, while its program execs; the launch
        returns once it did. On any failure nothing is left behind.
        """
        container_id = plan.init.container_id
        _clear_stale_runtime_dir(plan.runtime_dir, container_id)
        exits = os.path.dirname(plan.exit_file)
        try:
            os.makedirs(plan.runtime_dir, mode=0o700)
            os.mkdir(exits, 0o700)
            owner = idmap.mapped_root(plan.uid_map, plan.gid_map)
            if owner is not None:  # the supervisor is that root: where it writes, no more
                os.chown(exits, *owner)
        except OSError as exc:  # (a read-only or full store, say)
            shutil.rmtree(plan.runtime_dir, ignore_errors=True)
            what = f"making the runtime directory {plan.runtime_dir}"
            raise SystemCallError(what, exc, container_id=container_id) from exc
        sandbox: Sandbox | None = None
        launched: LaunchedProcess | None = None
        try:
            ours, theirs = channel.socket_pair()
            log_fd = -1
            try:
                channel.set_timeout(ours, timeout)
                with interrupts_deferred():  # (a Ctrl-C right after the open lost the fd)
                    log_fd = os.open(
                        os.path.join(plan.runtime_dir, "supervisor.log"),
                        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                        0o600,
                    )
            except BaseException:
                if log_fd >= 0:
                    os.close(log_fd)
                ours.close()
                theirs.close()
                raise
            try:
                # The plan waits in the socket, so the launched process reads it at once;
                # the fds that do not go with it follow once it runs (a socket holds no
                # more than ``net.unix.max_dgram_qlen`` messages: 10, as a rule).
                channel.send(ours, plan, stdio[: channel.MAX_FDS])
                process = (launcher or default_launcher()).launch(
                    bootstrap_fd=theirs.fileno(),
                    log_fd=log_fd,
                    warm=is_warm_shape(plan.namespaces),
                )
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
                os.close(log_fd)
            if not isinstance(getattr(process, "pid", None), int) or not callable(
                getattr(process, "wait", None)
            ):
                ours.close()
                raise TypeError(
                    f'container "{container_id}": the launcher returned {process!r}, not a '
                    "launched process (with a pid and wait())"
                )
            launched = process
            with contextlib.ExitStack() as closing:
                closing.callback(ours.close)
                # On a failure the sandbox goes first: a ``tied`` one would take that
                # socket's closing for its creator's end, and remove what we remove.
                closing.push(lambda kind, *_: kind is not None and _destroy_failed(sandbox))
                channel.send_rest(ours, stdio)
                failed = (
                    cls._make_cgroup(ours, make_cgroup, on_cgroup)
                    if plan.init.await_cgroup
                    else None
                )
                first, _ = cls._next(ours, container_id, plan.runtime_dir, Launched, Progress)
                if isinstance(first, Progress):
                    in_userns = any(kind == "user" for kind, _ in plan.namespaces)
                    raise cls._failure(container_id, first, privileged=not in_userns)
                assert isinstance(first, Launched)
                sandbox = cls(plan.sandbox_id, _identity(first, container_id), plan.runtime_dir)
                process.wait()
                launched = None
                if failed is not None:
                    raise failed
                pty = sandbox._follow_creation(
                    ours, container_id, on_mounted, plan.init.autostart, on_created
                )
                if plan.init.autostart:  # the root's exit status comes on it
                    sandbox._exit_conn = ours
                    closing.pop_all()
                elif plan.tied:  # its closing ends the sandbox
                    sandbox._tie = ours
                    closing.pop_all()
                return sandbox, pty
        except BaseException:
            if launched is not None:
                _reap(launched)
            shutil.rmtree(plan.runtime_dir, ignore_errors=True)
            raise

    @staticmethod
    def _make_cgroup(
        sock: socket.socket,
        make_cgroup: Callable[[], tuple[list[str], list[list[str]]]] | None,
        on_cgroup: Callable[[], None] | None,
    ) -> BaseException | None:
        """Make the cgroup while the sandbox starts, and tell its init which to join (its
        directories as fds);
        on failure the init is told to give up, and the error returned (raised once the
        sandbox is known, so that it is destroyed). A sandbox that is gone already is
        reported by what follows."""
        failed: BaseException | None = None
        dirs: list[int] = []
        try:
            procs, orphaned = make_cgroup() if make_cgroup else ([], [])
            # Its directories go as fds: the sandbox resolves no host path (decision 38).
            with interrupts_deferred():  # (held: they are closed below)
                dirs = open_cgroup_dirs(procs)
            step = Progress("cgroup", details={"procs": procs, "orphaned": orphaned})
        except BaseException as exc:
            failed, step = exc, Progress("cancel", error=f"making the cgroup failed: {exc}")
        try:
            with contextlib.suppress(OSError):
                channel.send(sock, step, dirs)
        finally:
            channel.close_fds(dirs)
        if on_cgroup is not None:
            try:
                on_cgroup()
            except BaseException as exc:
                failed = failed or exc
        return failed

    @staticmethod
    def _next(
        sock: socket.socket, container_id: str, runtime_dir: str, *kinds: type[Any]
    ) -> tuple[Any, list[int]]:
        try:
            return channel.receive_one_of(sock, *kinds)
        except TimeoutError:
            timeout = sock.gettimeout() or 0.0
            raise CreateTimeoutError(container_id, timeout) from None
        except ConnectionError:  # closed, or reset with our message unread
            log = os.path.join(runtime_dir, "supervisor.log")
            try:
                with open(log, errors="replace") as f:
                    tail = f.read()[-2000:].strip()
            except OSError:
                tail = ""
            raise SandboxDiedError(container_id, tail or "it exited during creation") from None
        except ValueError as exc:
            raise ProtocolError(f'container "{container_id}": {exc}') from exc

    @staticmethod
    def _failure(container_id: str, step: Progress, *, privileged: bool = False) -> SandboxrtError:
        """The error ``step`` reports. ``privileged``: the launch's first step, of a sandbox
        in no user namespace but the caller's (none made, none joined), which makes
        namespaces and mounts with the caller's privileges: refused there for want of
        ``CAP_SYS_ADMIN`` (what a caller that is not root meets first), it says what is
        missing."""
        if (
            privileged
            and step.error_type == "PermissionError"
            and not capabilities.has_effective(abi.CAP_SYS_ADMIN)
        ):
            return MissingFeatureError(
                "the privilege to make namespaces and mounts (CAP_SYS_ADMIN)",
                f'container "{container_id}" needs it, and this process (uid '
                f"{os.geteuid()}) lacks it ({step.error})",
            )
        return remote_error(container_id, step.error_type, step.error, step.details)

    def _follow_creation(
        self,
        sock: socket.socket,
        container_id: str,
        on_mounted: Callable[[Sandbox], dict[str, Any]] | None,
        autostart: bool,
        on_created: Callable[[Sandbox], None] | None = None,
    ) -> int | None:
        pty: int | None = None
        while True:
            step, fds = self._next(sock, container_id, self.runtime_dir, Progress)
            if step.step == "mounted":
                try:
                    state = on_mounted(self) if on_mounted else {}
                except BaseException:
                    channel.send(sock, Progress("cancel"))
                    raise
                channel.send(sock, Progress("go", details={"state": state}))
            elif step.step == "created" and not autostart:
                return fds[0] if fds else None
            elif step.step == "created":
                pty, autostart = (fds[0] if fds else None), False  # "started" comes next
                if on_created is not None:
                    try:
                        on_created(self)
                    except BaseException:
                        if pty is not None:
                            os.close(pty)
                        raise
            elif step.step == "started":
                return pty
            else:
                channel.close_fds(fds)
                raise self._failure(container_id, step)

    # -- talking to the supervisor -----------------------------------------------------

    def is_running(self) -> bool:
        """Whether the supervisor process (not one reusing its pid) still runs."""
        return alive(self.supervisor)

    def is_serving(self) -> bool:
        """:meth:`is_running`, and not exiting: what the containers' statuses follow (a
        supervisor killed while a container is frozen exits only once it is thawed)."""
        identity = self.supervisor
        return procfs.runs_on(identity.pid, identity.start_ticks, identity.boot_id)

    def was_started(self, container_id: str) -> bool:
        """Whether the supervisor released the container's init (``start``); ``False``
        when it cannot say (it is gone)."""
        try:  # (briefly: a supervisor too busy or stopped to say is taken at its record)
            reply = self.request(container_id, Request("wait", container_id, nohang=True), 1.0)
        except (SandboxrtError, TimeoutError):
            return False
        return reply.ok and reply.details.get("started") is True

    def exit_file_of(self, container_id: str) -> str:
        """Where the supervisor records the exit status of container ``container_id``."""
        return container_exit_file(self.runtime_dir, self.id, container_id)

    def exit_status(self, container_id: str | None = None) -> int | None:
        """The recorded exit status of a container (default: the root), if it has exited."""
        record = self.exit_record(container_id)
        return None if record is None else record.returncode

    def exit_record(self, container_id: str | None = None) -> ExitStatus | None:
        """The recorded exit (status and init pid) of a container (default: the root),
        if it has exited."""
        path = self.exit_file if container_id is None else self.exit_file_of(container_id)
        data = _read_small_file(path, _EXIT_RECORD_MAX, self.id)
        if data is None:
            return None
        try:
            return decode(data, ExitStatus)
        except ValueError as exc:
            raise ProtocolError(f'sandbox "{self.id}": unreadable exit status: {exc}') from exc

    def _exec_exits(self) -> ExecExits:
        """The statuses of exec'd processes the supervisor kept when it ended (none
        recorded: none kept)."""
        path = os.path.join(os.path.dirname(self.exit_file), EXEC_EXITS_FILE)
        data = _read_small_file(path, _EXEC_EXITS_MAX, self.id)
        if data is None:
            return ExecExits()
        try:
            return decode(data, ExecExits)
        except ValueError as exc:
            raise ProtocolError(f'sandbox "{self.id}": unreadable exec statuses: {exc}') from exc

    def request(self, container_id: str, request: Request, timeout: float | None = None) -> Reply:
        """Send one control request and return the reply."""
        reply, fds = self.exchange(container_id, request, timeout=timeout)
        channel.close_fds(fds)
        return reply

    def exchange(
        self,
        container_id: str,
        request: Request,
        fds: Sequence[int] = (),
        *,
        timeout: float | None = None,
    ) -> tuple[Reply, list[int]]:
        """Send one control request with ``fds`` alongside; the reply and the fds it brought."""
        reply, got, _ = self._exchange(container_id, request, fds, timeout=timeout)
        return reply, got

    def _connect(self, timeout: float | None) -> socket.socket:
        """A connection to the supervisor's control socket, found by path: refused
        (``ConnectionRefusedError``) when another process listens there, the supervisor
        of a sandbox made since under the same id (``SO_PEERCRED``)."""
        sock = channel.connect(self.control_socket, timeout)
        if channel.peer_pid(sock) != self.supervisor.pid:
            sock.close()
            raise ConnectionRefusedError(
                f"{self.control_socket} is no longer its supervisor's (pid {self.supervisor.pid})"
            )
        return sock

    def _exchange(
        self,
        container_id: str,
        request: Request,
        fds: Sequence[int] = (),
        *,
        timeout: float | None = None,
        connection: socket.socket | None = None,
        keep: bool = False,
    ) -> tuple[Reply, list[int], socket.socket | None]:
        """:meth:`exchange` on ``connection`` (the caller's, which it closes on an error)
        or on a new one, closed unless ``keep`` (then it is returned, the caller's to close:
        the supervisor serves further requests on it)."""
        sock = connection
        try:
            if sock is None:
                sock = self._connect(timeout)
            else:
                channel.set_timeout(sock, timeout)
            channel.send(sock, request, fds)
            reply, got = channel.receive(sock, Reply)
        except TimeoutError:
            if sock is not None and connection is None:
                sock.close()
            raise
        except (ConnectionError, FileNotFoundError, channel.ChannelClosedError) as exc:
            if sock is not None and connection is None:
                sock.close()
            raise SandboxDiedError(container_id, str(exc)) from exc
        except ValueError as exc:
            if sock is not None and connection is None:
                sock.close()
            raise ProtocolError(f'container "{container_id}": {exc}') from exc
        if connection is None and not keep:
            sock.close()
            return reply, got, None
        return reply, got, sock

    def _checked(
        self, container_id: str, request: Request, *, timeout: float | None = None
    ) -> Reply:
        reply = self.request(container_id, request, timeout)
        if not reply.ok:
            raise remote_error(container_id, reply.error_type, reply.error, reply.details)
        return reply

    def root(self, container_id: str) -> int:
        """An ``O_PATH`` fd of the container's root as it sees it (its mounts made, pivoted),
        which the supervisor opened when the container was created."""
        reply, fds = self.exchange(container_id, Request("root", container_id))
        if not reply.ok or len(fds) != 1:
            channel.close_fds(fds)
            raise remote_error(container_id, reply.error_type or "ProtocolError", reply.error, {})
        return fds[0]

    def start(self, container_id: str, state: dict[str, Any]) -> None:
        """Release the container's init: it runs startContainer hooks, then execs."""
        self._checked(container_id, Request("start", container_id, state=state))

    def signal(
        self, container_id: str, signum: int, *, all: bool = False, foreground: bool = False
    ) -> None:
        """Signal the container's init, or with ``all`` every process of the container,
        or with ``foreground`` the foreground process group of the init's terminal."""
        request = Request("signal", container_id, signal=signum, all=all, foreground=foreground)
        self._checked(container_id, request)

    def wait(self, container_id: str, timeout: float | None = None) -> int:
        """Block until the container's init exits; its exit code (``-N``: signal N)."""
        recorded = self.exit_status(container_id)
        if recorded is not None:
            return recorded
        expired = timeout is not None and timeout <= 0  # then it is asked, not waited for
        if container_id == self.id and self._exit_conn is not None and not expired:
            returncode = self._wait_on_launch(timeout)
            if returncode is not None:
                return returncode
        try:
            request = Request("wait", container_id, nohang=expired)
            reply = self.request(container_id, request, ANSWER_TIMEOUT if expired else timeout)
        except TimeoutError:
            raise WaitTimeoutError(container_id, timeout or 0.0) from None
        except SandboxDiedError:
            recorded = self.exit_status(container_id)
            return KILLED_RETURNCODE if recorded is None else recorded
        if not reply.ok:  # (a subcontainer destroyed meanwhile, say)
            recorded = self.exit_status(container_id)
            if recorded is not None:
                return recorded
            raise remote_error(container_id, reply.error_type, reply.error, reply.details)
        if expired and reply.returncode is None:
            raise WaitTimeoutError(container_id, timeout or 0.0)
        if reply.returncode is None:
            raise ProtocolError(f'container "{container_id}": wait reply without a status')
        return reply.returncode

    def _wait_on_launch(self, timeout: float | None) -> int | None:
        """The root's exit status from the socket it was launched with (``run``: no
        wait request); None if that socket failed (then ask as usual)."""
        conn = self._exit_conn
        assert conn is not None
        try:
            channel.set_timeout(conn, timeout)
            reply, fds = channel.receive(conn, Reply)
            channel.close_fds(fds)
        except TimeoutError:
            raise WaitTimeoutError(self.id, timeout or 0.0) from None
        except (OSError, ValueError):
            self.close()
            return None
        self.close()
        return reply.returncode

    def take_tie(self) -> socket.socket | None:
        """The socket a ``tied`` launch kept, for the caller to hold while the sandbox
        should live (closed, or its holder gone, the supervisor kills its containers)."""
        tie, self._tie = self._tie, None
        return tie

    def close(self) -> None:
        """Let go of the socket a ``run`` launch kept (the supervisor lives on)."""
        if self._exit_conn is not None:
            self._exit_conn.close()
            self._exit_conn = None

    # -- subcontainers (pods) ----------------------------------------------------------

    def create_container(
        self,
        plan: ContainerPlan,
        stdio: Sequence[int],
        *,
        on_mounted: Callable[[Sandbox], dict[str, Any]] | None = None,
        timeout: float | None = None,
    ) -> int | None:
        """Create container ``plan`` (noted already: :meth:`note_member`) in this living
        sandbox; its pty master, if any.

        The supervisor forks its init and relays its creation steps as at
        launch (``on_mounted`` runs the runtime hooks). Returns once it is
        created (started, with ``plan.init.autostart``). Closing the connection on
        a failure makes the supervisor kill the init; the caller removes the
        cgroup.
        """
        container_id = plan.init.container_id
        request = Request("create-container", container_id, container=plan)
        try:
            sock = self._connect(timeout)
        except (ConnectionError, FileNotFoundError) as exc:
            raise SandboxDiedError(container_id, str(exc)) from exc
        except TimeoutError:
            raise CreateTimeoutError(container_id, timeout or 0.0) from None
        with sock:
            channel.set_timeout(sock, timeout)
            try:
                channel.send_many(sock, request, stdio)
            except OSError as exc:
                raise SandboxDiedError(container_id, str(exc)) from exc
            return self._follow_creation(sock, container_id, on_mounted, plan.init.autostart)

    def forget_container(self, container_id: str, timeout: float) -> None:
        """Have the supervisor SIGKILL subcontainer ``container_id`` and forget it (best
        effort: the caller's cgroup removal kills what is left), then remove its files."""
        if self.is_running():
            with contextlib.suppress(SandboxrtError, OSError):
                request = Request("destroy-container", container_id)
                self._checked(container_id, request, timeout=timeout)
        for path in (
            self.exit_file_of(container_id),
            self._member_file(container_id),
            gofer_socket(self.runtime_dir, container_id),
            gofer_log(self.runtime_dir, container_id),
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if not self.is_running():
            # A root destroy may have emptied the directory while this container was
            # noted in it: whatever is empty now goes.
            for directory in (self.members_dir, self.runtime_dir):
                try:
                    os.rmdir(directory)
                except OSError:
                    break

    @property
    def members_dir(self) -> str:
        """Where the subcontainers that join the sandbox are noted, one file each."""
        return os.path.join(self.runtime_dir, "containers")

    def _member_file(self, container_id: str) -> str:
        return os.path.join(self.members_dir, id_file_name(container_id))

    def note_member(self, container_id: str) -> None:
        """Note (atomically) that ``container_id`` joins, once its record is made and
        before anything else of it is (its cgroup) or it asks the supervisor.

        A root destroy kills the supervisor, then reads these notes: whatever
        joined had noted itself first. The runtime directory is never made
        again here: once a destroy removed it, the sandbox is gone.
        """
        path = self._member_file(container_id)
        # (A leading dot: no id starts with one, so no note is ever taken for another's.)
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.members_dir, 0o700)
            with open(tmp, "w") as f:
                f.write(container_id)
            os.replace(tmp, path)
        except FileNotFoundError as exc:
            raise SandboxDiedError(container_id, "the sandbox was destroyed") from exc

    def container_ids(self) -> list[str]:
        """The ids of the subcontainers noted as joining the sandbox (sorted).

        A container whose creation failed may be listed until its teardown;
        check its record.
        """
        try:
            names = os.listdir(self.members_dir)
        except FileNotFoundError:
            return []
        ids = []
        for name in names:
            if name.startswith("."):  # (one being written: see note_member)
                continue
            with (
                contextlib.suppress(FileNotFoundError),
                open(os.path.join(self.members_dir, name)) as f,
            ):
                ids.append(f.read())
        return sorted(ids)

    def overlay_upper(self, container_id: str) -> int:
        """An fd (``O_RDONLY | O_DIRECTORY``, close-on-exec) on the overlay root's upper
        directory, which only the container's mount namespace shows; the caller closes it."""
        reply, fds = self.exchange(container_id, Request("upper", container_id))
        if not reply.ok:
            channel.close_fds(fds)
            raise remote_error(container_id, reply.error_type, reply.error, reply.details)
        if len(fds) != 1:
            channel.close_fds(fds)
            raise ProtocolError(f'container "{container_id}": upper reply without an fd')
        return fds[0]

    # -- exec'd processes --------------------------------------------------------------

    def exec(
        self, container_id: str, plan: ExecPlan, stdio: Sequence[int]
    ) -> tuple[int, int | None]:
        """Run ``plan`` in the container: its pid (in the sandbox's PID namespace) and its
        pty master when it has a terminal. ``stdio`` is its stdin, stdout and stderr (none
        with a terminal). Returns once the program was exec'd; raises :class:`ExecError`
        when it could not be (missing binary, bad cwd...)."""
        pid, master, _, connection = self.exec_connected(container_id, plan, stdio)
        connection.close()
        return pid, master

    def exec_connected(
        self, container_id: str, plan: ExecPlan, stdio: Sequence[int]
    ) -> tuple[int, int | None, int, socket.socket]:
        """:meth:`exec`, keeping the connection it used (the caller closes it): waiting for
        the process on it (``wait_process(connection=...)``) spares a connection. Also
        the exec's serial, for :meth:`wait_process` and :meth:`signal_process`."""
        request = Request("exec", container_id, exec=plan)
        reply, fds, connection = self._exchange(container_id, request, stdio, keep=True)
        assert connection is not None
        try:
            return (*self._exec_reply(container_id, plan, reply, fds), connection)
        except BaseException:
            connection.close()
            raise

    @staticmethod
    def _exec_reply(
        container_id: str, plan: ExecPlan, reply: Reply, fds: list[int]
    ) -> tuple[int, int | None, int]:
        if not reply.ok:
            channel.close_fds(fds)
            if reply.error_type == "ExecError":
                if reply.details.get("cause_type") == "ProcessLookupError":
                    raise InvalidStateError("exec in", container_id, "stopped")
                raise ExecError(container_id, plan.args[0], reply.error)
            raise remote_error(container_id, reply.error_type, reply.error, reply.details)
        if reply.pid <= 0:
            channel.close_fds(fds)
            raise ProtocolError(f'container "{container_id}": exec reply without a pid')
        if plan.terminal and len(fds) != 1:
            channel.close_fds(fds)
            raise ProtocolError(f'container "{container_id}": exec reply without a pty')
        serial = reply.details.get("serial", 0)
        return reply.pid, (fds[0] if fds else None), serial if isinstance(serial, int) else 0

    def wait_process(
        self,
        container_id: str,
        pid: int,
        timeout: float | None = None,
        *,
        nohang: bool = False,
        connection: socket.socket | None = None,
        serial: int = 0,
    ) -> int | None:
        """The exit status of process ``pid`` of the container, once it exits.

        ``None`` with ``nohang`` while it runs. Raises ``TimeoutError`` after
        ``timeout`` seconds, :class:`ProcessNotFoundError` for a pid that is not
        the container's. A sandbox that is gone took its processes with it:
        ``-SIGKILL``, but for the init, whose recorded status is read. Asks on
        ``connection`` when given (one :meth:`exec_connected` kept; after a
        ``TimeoutError`` its reply may still come: close it), else on a new one.
        ``serial`` (:meth:`exec_connected`'s) names the exec: never another that got its
        pid since.
        """
        expired = timeout is not None and timeout <= 0 and not nohang  # asked, not waited for
        request = Request("wait", container_id, pid=pid, nohang=nohang or expired, serial=serial)
        try:
            reply, fds, _ = self._exchange(
                container_id,
                request,
                timeout=ANSWER_TIMEOUT if expired else timeout,
                connection=connection,
            )
            channel.close_fds(fds)
        except SandboxDiedError:
            # An exec (a ``serial``) is never the init. Its serial names it in the files
            # kept, which a later sandbox of the same id (the same path) may have written.
            record = None if serial else self.exit_record(container_id)
            if record is not None and record.pid == pid:
                return record.returncode
            kept = self._exec_exits().status_of(container_id, pid, serial)
            return KILLED_RETURNCODE if kept is None else kept
        if not reply.ok:
            raise remote_error(container_id, reply.error_type, reply.error, reply.details)
        if reply.returncode is None and expired:
            raise TimeoutError(f"process {pid} of container {container_id!r} runs on")
        if reply.returncode is None and not nohang:
            raise ProtocolError(f'container "{container_id}": wait reply without a status')
        return reply.returncode

    def signal_process(
        self,
        container_id: str,
        pid: int,
        signum: int,
        *,
        group: bool = False,
        foreground: bool = False,
        serial: int = 0,
    ) -> None:
        """Signal process ``pid`` of the container (a pid of the sandbox's PID namespace),
        with ``group`` its process group, with ``foreground`` the foreground process
        group of the terminal it holds (an exec'd process with a tty, or the init).

        The supervisor checks that ``pid`` is the container's: else, or once it
        has exited (``exited`` set), :class:`ProcessNotFoundError`.
        """
        request = Request(
            "signal",
            container_id,
            signal=signum,
            pid=pid,
            group=group,
            foreground=foreground,
            serial=serial,
        )
        reply = self.request(container_id, request)
        if not reply.ok:
            raise remote_error(container_id, reply.error_type, reply.error, reply.details)

    # -- ending ------------------------------------------------------------------------

    def kill(self, timeout: float = 0.0) -> bool:
        """SIGKILL the supervisor, which takes its whole PID namespace with it.

        Waits up to ``timeout`` seconds for it to exit; ``True`` once it is gone.
        """
        self.close()
        return kill_process(self.supervisor, timeout)

    def owns_pid_namespace(self) -> bool:
        """Whether the supervisor is PID 1 of a PID namespace (its death then kills the rest)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
        except OSError:
            return True  # gone: nothing is left to kill
        return len(nspid) > 1 and nspid[-1] == "1"

    def destroy(self, timeout: float) -> None:
        """Kill the sandbox, wait until it is gone, remove its runtime files."""
        self.stop(timeout)
        self.remove_runtime_dir()

    def remove_runtime_dir(self) -> None:
        """Remove the sandbox's runtime files (once it is stopped)."""
        try:  # the common case, files only: no tree walk
            with os.scandir(self.runtime_dir) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        raise IsADirectoryError(entry.path)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
            os.rmdir(self.runtime_dir)
        except FileNotFoundError:
            return  # gone already
        except OSError:
            remove_tree(self.runtime_dir, self.id)

    def stop(self, timeout: float) -> None:
        """Kill the sandbox and wait until it is gone; its runtime files stay."""
        if self.is_running() and not self.owns_pid_namespace():
            # Without a PID namespace of its own the container's processes outlive
            # the supervisor: have it SIGKILL them all (best effort) first.
            with contextlib.suppress(SandboxrtError, OSError):
                self.request(
                    self.id,
                    Request("signal", self.id, signal=signal.SIGKILL, all=True),
                    timeout=min(timeout, 1.0),
                )
        if not self.kill(timeout):
            stuck = OSError(errno.ETIMEDOUT, f"it did not exit within {timeout:g}s of SIGKILL")
            raise SystemCallError(
                f"stopping the supervisor (pid {self.pid})", stuck, container_id=self.id
            )


def kill_process(identity: ProcessIdentity, timeout: float = 0.0) -> bool:
    """SIGKILL the process ``identity`` names (never one reusing its pid).

    Waits up to ``timeout`` seconds for it to exit; ``True`` once it is gone.
    """
    try:
        pidfd = os.pidfd_open(identity.pid)
    except (ProcessLookupError, OverflowError):  # (a pid no process can have: a bad record)
        return True
    except OSError:  # no pidfds on this kernel: signal by pid, poll with backoff
        if alive(identity):
            with contextlib.suppress(ProcessLookupError):
                os.kill(identity.pid, signal.SIGKILL)
        return not backoff.on_predicate(
            backoff.expo, lambda alive: alive, max_time=timeout, factor=0.001, max_value=0.05
        )(lambda: alive(identity))()
    try:
        # The pidfd pins one process: check it is ours before signalling it.
        if not alive(identity):
            return True
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(timeout * 1000)  # readable once the process has exited
        return not alive(identity)
    finally:
        os.close(pidfd)


def open_pidfd(identity: ProcessIdentity) -> int | None:
    """A pidfd of the process ``identity`` names, or None once it is gone."""
    pidfd: int | None = None
    try:
        with interrupts_deferred():  # (a Ctrl-C between the open and the return lost it)
            pidfd = _pidfd_if_alive(identity)
    except BaseException:
        if pidfd is not None:
            os.close(pidfd)
        raise
    return pidfd


def _pidfd_if_alive(identity: ProcessIdentity) -> int | None:
    try:
        pidfd = os.pidfd_open(identity.pid)
    except (OSError, OverflowError):
        return None
    try:
        if alive(identity):
            os.set_inheritable(pidfd, False)
            return pidfd
    except BaseException:
        os.close(pidfd)
        raise
    os.close(pidfd)
    return None


def _clear_stale_runtime_dir(path: str, container_id: str) -> None:
    """Remove the runtime directory a create that crashed left at ``path`` (the caller
    holds the container's lock and has just made its record). Only one of ours, whose
    supervisor is gone: a directory of anything else (a ``MemoryStore`` given a
    directory of the caller's) or a live sandbox's (another store's, sharing the
    directory) is a :class:`ContainerExistsError`, untouched."""
    names = _entries(path)
    if names is None:
        return
    strangers = [name for name in names if not _RUNTIME_NAMES.fullmatch(name)]
    live = "ctl" in names and channel.listening(control_socket_path(path))
    if strangers or live:
        whose = "a live sandbox's" if live else f"not sandboxrt's (it holds {strangers[0]!r})"
        raise ContainerExistsError(container_id, f"its runtime directory {path} is {whose}")
    remove_tree(path, container_id)


def remove_left_runtime_dir(path: str, container_id: str) -> None:
    """Remove the runtime directory at ``path`` of a creation that recorded no sandbox
    (it died, or failed), if it holds only what sandboxrt makes and no sandbox lives
    there; anything else is left (and said): it was there before the creation, which
    refused it (see :func:`_clear_stale_runtime_dir`)."""
    names = _entries(path)
    if names is None:
        return
    strangers = [name for name in names if not _RUNTIME_NAMES.fullmatch(name)]
    if strangers or ("ctl" in names and channel.listening(control_socket_path(path))):
        whose = f"it holds {strangers[0]!r}" if strangers else "a live sandbox's"
        log.warning('container "%s": %s is left: %s', container_id, path, whose)
        return
    remove_tree(path, container_id)


def _entries(path: str) -> list[str] | None:
    """The names in directory ``path`` (``None``: nothing there; a file there: one
    name no runtime directory holds)."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return ["(not a directory)"]


#: The names a sandbox's runtime directory holds (temporary ones included).
_RUNTIME_NAMES = re.compile(
    r"ctl|exits|containers|supervisor\.log|gofer-[0-9a-f]{12}\.(sock|log)|\.bind-\d+-[0-9a-f]{8}"
)


def remove_tree(path: str, container_id: str) -> None:
    """Remove the directory tree ``path`` (a runtime directory) if it is there; a
    :class:`SystemCallError` naming the container if it is still there after (a read-only
    store, say: then the record that names it must stay, for a later destroy)."""
    errors: list[BaseException] = []
    refusals: list[BaseException] = []
    for _ in range(_REMOVE_TRIES):
        errors.clear()
        shutil.rmtree(path, onerror=lambda _function, _path, info: errors.append(info[1]))
        if not os.path.lexists(path):
            return
        refusals = [e for e in errors if not isinstance(e, FileNotFoundError)]
        if any(getattr(e, "errno", None) != errno.ENOTEMPTY for e in refusals):
            break  # (refused: trying again would not help)
        # Only entries that came or went meanwhile (a pod member noting itself): again.
    cause = next((e for e in refusals if getattr(e, "errno", None) != errno.ENOTEMPTY), None)
    cause = cause or (refusals[0] if refusals else OSError(errno.ENOTEMPTY, "not empty"))
    if not isinstance(cause, OSError):
        cause = OSError(errno.EIO, str(cause))
    raise SystemCallError(f"removing {path}", cause, container_id=container_id)


#: How often :func:`remove_tree` walks a tree whose entries come and go meanwhile.
_REMOVE_TRIES = 5


def _destroy_failed(sandbox: Sandbox | None) -> bool:
    """Destroy the sandbox of a launch that failed (if it got that far); never ``True``
    (for an exit callback: the failure goes on, and says more than one here would)."""
    if sandbox is not None:
        try:
            sandbox.destroy(timeout=10.0)
        except (SandboxrtError, OSError) as exc:
            log.warning('container "%s": its sandbox outlived a failed create: %s', sandbox.id, exc)
    return False


def _reap(process: LaunchedProcess) -> None:
    """Wait for a launched process after a failed launch; SIGKILL it if it lingers."""
    try:
        process.wait(timeout=1.0)
    except Exception:  # any launcher's timeout error
        if process.pid <= 0:  # unknown: never signal a process group by accident
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            process.wait(timeout=5.0)


def identity_of(pid: int, start_ticks: int = 0) -> ProcessIdentity | None:
    """The identity of process ``pid``: its start time is ``start_ticks`` when known (its
    parent's word), else read now (``None`` if it is gone)."""
    if not start_ticks:
        info = procfs.read_stat(pid)
        if info is None:
            return None
        start_ticks = info.start_ticks
    return ProcessIdentity(pid=pid, start_ticks=start_ticks, boot_id=procfs.boot_id())


def alive(identity: ProcessIdentity) -> bool:
    """Whether the very process ``identity`` names still runs (a zombie does not)."""
    return procfs.is_alive(identity.pid, identity.start_ticks, identity.boot_id)


def _identity(launched: Launched, container_id: str) -> ProcessIdentity:
    """The supervisor's identity, from its parent's word when it gave one: read here, a
    supervisor that died at once could already have had its pid reused."""
    identity = identity_of(launched.pid, launched.start_ticks)
    if identity is None:
        raise SandboxDiedError(container_id, f"the supervisor (pid {launched.pid}) exited")
    return identity
