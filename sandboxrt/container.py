"""``Container``: one OCI bundle in a sandbox, with its lifecycle and persisted state."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import signal as _signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, Concatenate, Literal, ParamSpec, TypedDict, TypeVar, overload

import attrs
from typing_extensions import Unpack

from sandboxrt import _cgroup, _changes, _creation
from sandboxrt._caller_paths import (
    unlink_if_same,
)
from sandboxrt._communicate import Communication
from sandboxrt._container_state import (
    LIVE,
    configured_timeout,
    effective_status,
    runtime_dir,
)
from sandboxrt._core import idmap, resources_update
from sandboxrt._core.ids import resolve_id
from sandboxrt._core.plan import (
    UserArg,
    exec_plan,
)
from sandboxrt._core.protocol import ExecPlan
from sandboxrt._core.records import ContainerRecord, ProcessIdentity
from sandboxrt._core.spec import Spec, load_spec
from sandboxrt._core.spec_default import DEFAULT_OCI_VERSION
from sandboxrt._core.spec_validate import document_problems
from sandboxrt._core.status import Operation, Status, require
from sandboxrt._creation import naming_container, this_process
from sandboxrt._os import cgroups, procfs
from sandboxrt._os.cgroups import Cgroup, Resources
from sandboxrt._os.seccomp import compile_bpf
from sandboxrt._pod_join import (
    give_pipes_to_mapped_root,
    own_pid_namespace,
)
from sandboxrt._proc import hooks
from sandboxrt._proc.launcher import Launcher, default_launcher
from sandboxrt._seconds import deadline_after, seconds_left, wait_seconds
from sandboxrt._signals import (
    DEFAULT_FORWARDED,
    REFUSED_SIGNALS,
    SignalForwarder,
    interrupts_deferred,
    signal_number,
)
from sandboxrt._stdio import (
    PtyMaster,
    StdioArg,
    StdioPlan,
    TextMode,
    close_streams,
    is_pipe,
    reserve_standard_fds,
)
from sandboxrt._teardown import teardown
from sandboxrt.config import Config
from sandboxrt.errors import (
    ContainerNotFoundError,
    CorruptMetadataError,
    InitError,
    InvalidArgumentError,
    InvalidStateError,
    LockTimeoutError,
    MissingFeatureError,
    NoOverlayError,
    ProcessError,
    ProcessNotFoundError,
    ProcessTimeoutError,
    SandboxDiedError,
    SandboxrtError,
    SpecError,
    SystemCallError,
    WaitTimeoutError,
    arguments_of,
    file_error,
)
from sandboxrt.files import ContainerFiles, check_max_bytes
from sandboxrt.gofer import Gofer, PendingGofer, socket_path
from sandboxrt.process import Process, ProcessInfo, process_infos
from sandboxrt.sandbox import Sandbox, alive
from sandboxrt.stores import MetadataStore, store_or_default

__all__ = ["Container", "CreateOptions", "ExecRunOptions", "OCIState", "Stats"]

log = logging.getLogger("sandboxrt")

_P = ParamSpec("_P")
_R = TypeVar("_R")

# A daemon's closed fds 0-2 are filled now, before the library opens any fd of its own
# (in any thread): see StdioPlan.
reserve_standard_fds()


@attrs.frozen
class OCIState:
    """The OCI runtime state of a container (what ``runc state`` prints)."""

    oci_version: str
    id: str
    status: Status
    pid: int | None
    bundle: str
    annotations: dict[str, str] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The state as OCI JSON (``pid`` only while the sandbox lives)."""
        data: dict[str, Any] = {
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": str(self.status),
            "bundle": self.bundle,
        }
        if self.pid is not None:
            data["pid"] = self.pid
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        return data


@attrs.frozen
class Stats:
    """Resource usage of a container's cgroup (its supervisor stays outside), as read now.

    CPU times are nanoseconds (user and system counted in clock ticks, 10 ms,
    on cgroup v1); memory figures are bytes. A ``None`` limit is unlimited;
    ``memory_max_usage`` is the peak (``None`` where the kernel keeps none);
    ``memory_failcnt`` counts hits of the memory limit, ``oom_kills`` the processes the
    kernel's OOM killer killed for it.
    """

    cpu_usage_ns: int
    cpu_user_ns: int
    cpu_system_ns: int
    memory_usage: int
    memory_limit: int | None
    memory_max_usage: int | None
    memory_failcnt: int
    pids_current: int
    pids_limit: int | None
    oom_kills: int = 0

    @classmethod
    def from_cgroup(cls, stats: cgroups.CgroupStats) -> Stats:
        """The figures a cgroup read gave."""
        return cls(**dataclasses.asdict(stats))


class ExecRunOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`Container.exec_run` but its text mode's and
    ``input`` (which its overloads type by the text mode)."""

    env: Mapping[str, str] | Sequence[str] | None
    cwd: str | os.PathLike[str] | None
    user: UserArg | None
    tty: bool
    console_size: tuple[int, int] | None
    stdin: StdioArg
    stdout: StdioArg
    stderr: StdioArg
    capture_output: bool
    check: bool
    timeout: float | None


class CreateOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`Container.create` and :meth:`Container.run`.

    - ``store``: where the container's record is kept (default: a :class:`FileStore` at
      the default root).
    - ``config``: runtime options (a :class:`Config`), kept with the container.
    - ``spec``: a :class:`Spec` made in code, used instead of the bundle's ``config.json``.
    - ``stdin``, ``stdout``, ``stderr``: the init's standard streams, as ``subprocess``
      takes them (a file object, an fd, ``PIPE``, ``DEVNULL``; ``None``: ours).
    - ``console_socket``: a Unix socket path that gets the pty master of a
      ``process.terminal`` spec, as runc's ``--console-socket``.
    - ``pid_file``: a file that gets the sandbox's (supervisor's) host pid.
    - ``launcher``: how the sandbox's processes are started (a :class:`Launcher`).
    """

    store: MetadataStore | None
    config: Config | None
    stdin: StdioArg
    stdout: StdioArg
    stderr: StdioArg
    console_socket: str | os.PathLike[str] | None
    pid_file: str | os.PathLike[str] | None
    launcher: Launcher | None
    spec: Spec | None


#: What an operation may run out of (or find read-only), at any of its many steps that
#: open or make files: a ``SystemCallError`` naming the container (:func:`_out_of_resources`).
_OUT_OF_RESOURCES = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC, errno.EDQUOT, errno.EROFS}
)


@contextlib.contextmanager
def _out_of_resources(operation: str, container_id: str) -> Iterator[None]:
    """A raw ``OSError`` of :data:`_OUT_OF_RESOURCES` raised in the block, as a
    :class:`SystemCallError` naming the container and the file; others keep their type (a
    launcher's own, say, whose type and file name say more as they are). A
    :class:`SandboxrtError` that names no container (a missing feature, the fork server's)
    gets its ``container_id``; a plain one, a :class:`SystemCallError` and a
    :class:`MissingFeatureError` its name in the message too."""
    try:
        yield
    except SandboxrtError as exc:
        if isinstance(exc, SystemCallError) and not exc.container_id:
            raise exc.naming(container_id) from exc
        if isinstance(exc, MissingFeatureError):
            missing = exc.naming(container_id)
            if missing is exc:
                raise
            raise missing from exc
        if not exc.container_id:
            exc.container_id = container_id
        if type(exc) is not SandboxrtError or f'"{container_id}"' in str(exc):
            raise
        renamed = SandboxrtError(f'container "{container_id}": {exc}')
        renamed.container_id = container_id
        raise renamed from exc
    except OSError as exc:
        if isinstance(exc, SandboxrtError) or exc.errno not in _OUT_OF_RESOURCES:
            raise
        named = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        raise SystemCallError(
            operation, OSError(exc.errno, named), container_id=container_id
        ) from exc


_Method = Callable[Concatenate["Container", _P], _R]


def _naming_resource_errors(operation: str) -> Callable[[_Method[_P, _R]], _Method[_P, _R]]:
    """A method whose raw ``OSError`` of running out is a :class:`SystemCallError` naming
    its container (:func:`_out_of_resources`)."""

    def wrap(method: _Method[_P, _R]) -> _Method[_P, _R]:
        def wrapped(container: Container, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            with _out_of_resources(operation, container.id):
                return method(container, *args, **kwargs)

        functools.update_wrapper(wrapped, method)  # (its name, docstring and signature)
        return wrapped

    return wrap


class Container:
    """A container: create it, start it, wait for it, signal it, destroy it.

    Every operation takes the container's cross-process lock in its store, so
    a container may be driven from several processes at once.
    """

    def __init__(self, record: ContainerRecord, store: MetadataStore) -> None:
        self._record = record
        self._store = store
        #: The caller's ends of pipes asked for with ``PIPE`` (creating process only).
        self.stdin: IO[bytes] | None = None
        self.stdout: IO[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        #: The pty master when ``process.terminal`` is set and no console socket was given.
        self.console: IO[bytes] | None = None
        #: The spec's ``process`` as an exec plan, made at the first exec (the spec of a
        #: container never changes).
        self._exec_base: ExecPlan | None = None
        #: The sandbox ``run`` launched, which holds the socket its exit status comes on.
        self._launched: Sandbox | None = None
        #: :meth:`communicate`'s state (made at its first call, from the streams then).
        self._communication: Communication | None = None

    def __repr__(self) -> str:
        # What was read last: a repr asks nothing (a destroyed container's too).
        return f"Container(id={self.id!r}, status={self._record.status.value!r})"

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leaving a ``with`` block destroys the container, then closes our ends of its
        pipes and its console (as ``subprocess.Popen``'s closes its pipes)."""
        try:
            self.destroy()
        finally:
            close_streams(self.stdin, self.stdout, self.stderr, self.console)

    # -- creating and finding ----------------------------------------------------------

    @classmethod
    def create(
        cls, id: str, bundle: str | os.PathLike[str], **options: Unpack[CreateOptions]
    ) -> Container:
        """Create container ``id`` from ``bundle``: its init waits for :meth:`start`.

        ``options`` are those of :class:`CreateOptions`; ``spec`` overrides the
        bundle's config.json. Any failure leaves no process, socket, cgroup or
        record behind.

        The container gets a cgroup (``linux.cgroupsPath``, else
        ``/sandboxrt/<id>``, with a store tag before the id for a store other
        than the default) with ``linux.resources`` applied, which its init
        joins before it runs anything of the container's (the supervisor stays
        outside: decision 15). Without any cgroup hierarchy
        mounted this raises :class:`MissingFeatureError`, unless the spec sets
        neither ``linux.resources`` nor ``linux.cgroupsPath``: then it runs
        without a cgroup. Device rules are enforced on cgroup v1 (devices
        controller) and v2 (an eBPF device program; see ``sandboxrt._cgroup``).
        """
        return cls._create(id, bundle, options, autostart=False)

    @classmethod
    def _create(
        cls,
        id: str,
        bundle: str | os.PathLike[str],
        options: CreateOptions,
        *,
        autostart: bool,
        join: str | None = None,
        root: bool = False,
    ) -> Container:
        """:func:`_creation.create`, a raw ``OSError`` of running out (of fds, say) raised
        as a :class:`SystemCallError` naming the container; then (unless ``autostart``:
        :meth:`run` does it once the container is gone) the launcher's put-off work
        (decision 53)."""
        try:
            unknown = set(options) - CreateOptions.__optional_keys__
            if unknown:
                raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
            with _out_of_resources("create", id):
                return _creation.create(
                    cls, id, bundle, options, autostart=autostart, join=join, root=root
                )
        finally:
            if not autostart:
                _settle(options.get("launcher"))

    @classmethod
    def run(
        cls,
        id: str,
        bundle: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        **options: Unpack[CreateOptions],
    ) -> int:
        """Create, start, wait for and destroy a container; its exit code.

        Like ``runc run``, the program starts as part of creation when no hook or
        terminal needs a separate start. With ``timeout``, a program still running
        that many seconds after it started is killed with the container (which is
        destroyed), and :class:`ProcessTimeoutError` (a :class:`WaitTimeoutError`
        and a ``subprocess.TimeoutExpired``) raised, as ``subprocess.run`` kills its
        child and raises ``TimeoutExpired``. Should this process be killed meanwhile,
        the program goes with it (as a child dies with its parent under ``bwrap
        --die-with-parent``; not one started apart, for hooks, a terminal or a pid
        file, but in a :class:`MemoryStore`; and only once a child this process forked
        meanwhile, which holds the socket the supervisor watches, has exited too): its
        record and cgroup wait for a :meth:`destroy` (a :class:`MemoryStore`'s, which no
        other process could reach, its sandbox removes, but in a user namespace of its
        own).

        ``PIPE`` is refused (:class:`InvalidArgumentError`): nothing would read or
        write it before the program ends, so a program writing more than a pipe
        holds, or reading its input, would wait for ever. Pass a file, an fd or
        ``DEVNULL``, or use :meth:`create`, :meth:`start` and :meth:`communicate`.
        """
        timeout = wait_seconds(id, timeout)
        piped = [name for name in ("stdin", "stdout", "stderr") if is_pipe(options.get(name))]
        if piped:
            names = ", ".join(f"{name}=PIPE" for name in piped)
            raise InvalidArgumentError(
                id,
                f"Container.run cannot take {names}: nothing would use it before the "
                "program ends; pass a file, an fd or DEVNULL, or use create(), start() and "
                "communicate()",
            )
        try:
            container = cls._create(id, bundle, options, autostart=True)
            try:
                if container._record.status is Status.CREATED:
                    container.start()
                else:
                    container._poststart()
                sandbox = container._launched or container.sandbox
                assert sandbox is not None
                # Ours since creation: no record to reload.
                return container._wait_for_init(sandbox, timeout, kills=True)
            finally:
                container.destroy()
        finally:
            _settle(options.get("launcher"))

    @classmethod
    def load(cls, id_or_prefix: str, *, store: MetadataStore | None = None) -> Container:
        """The container with this id, or the only one whose id starts with it."""
        store = store_or_default(store)
        container_id = resolve_id(id_or_prefix, store.list_ids())
        return cls(store.load(container_id), store)

    @classmethod
    def list(cls, *, store: MetadataStore | None = None) -> list[str]:
        """The ids of all containers in ``store``."""
        return store_or_default(store).list_ids()

    # -- what it is ----------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The container's id, as given to :meth:`create`."""
        return self._record.id

    @property
    def bundle(self) -> str:
        """The bundle's absolute path, as recorded at creation."""
        return self._record.bundle

    @property
    def spec(self) -> Spec:
        """The spec the container was created with, with the resources :meth:`update`
        changed since (as last read: :attr:`status`, :meth:`state` and every operation
        read the record again)."""
        return load_spec(self._record.spec, validate=False)

    @property
    def sandbox(self) -> Sandbox | None:
        """The sandbox this container runs in (``None`` before creation finished)."""
        record = self._record
        if record.sandbox is None:
            return None
        return Sandbox(self.sandbox_id, record.sandbox, runtime_dir(self._store, self.sandbox_id))

    @property
    def sandbox_id(self) -> str:
        """The id of the sandbox the container is in: its root container's id (its own,
        unless it joined a sandbox as a subcontainer of a pod)."""
        return self._record.sandbox_id or self.id

    @property
    def is_subcontainer(self) -> bool:
        """Whether the container joined another container's sandbox (see :class:`Pod`)."""
        return self.sandbox_id != self.id

    @property
    def config(self) -> Config:
        """The :class:`Config` the container was created with (kept in its record)."""
        fields = attrs.fields_dict(Config)
        return Config(**{k: v for k, v in self._record.config.items() if k in fields})

    @property
    def gofer(self) -> Gofer | None:
        """The container's gofer (the process that serves :attr:`files`), started with
        the container (with ``Config.lazy_gofer``, by the first use of this or of
        :attr:`files`); ``None`` once the container stopped."""
        try:
            return self._file_server()
        except InvalidStateError:
            return None

    @property
    def files(self) -> ContainerFiles:
        """The container's files, served by its gofer: ``container.files.read_text(...)``."""
        return ContainerFiles(self)

    @property
    def status(self) -> Status:
        """The status now: a live status whose sandbox or init is gone reads ``stopped``."""
        self._refresh()
        return effective_status(self._record, self.sandbox, ask=True)

    @property
    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of the container (its memory
        limit reached, or the machine's memory), as Docker's ``State.OOMKilled`` says:
        after :meth:`wait` gave -9, say. Read from its cgroup and those the container made
        beneath it, in every status until :meth:`destroy`;
        ``False`` for a container without a cgroup whose memory is accounted. A pod's
        containers each have their own."""
        self._refresh()
        if self._record.cgroup is None:
            return False
        try:
            stats = cgroups.load(self._record.cgroup, container_id=self.id).stats()
        except SystemCallError as err:
            self._raise_unless_destroyed(err)
            return False
        return stats.oom_kills > 0

    def state(self) -> OCIState:
        """The OCI state of the container."""
        status = self.status
        sandbox = self.sandbox
        return OCIState(
            oci_version=DEFAULT_OCI_VERSION,  # (the state's, as runc's: not the bundle's)
            id=self.id,
            status=status,
            pid=sandbox.pid if sandbox is not None and status in LIVE else None,
            bundle=self.bundle,
            annotations=dict(self._record.annotations),
        )

    # -- lifecycle ---------------------------------------------------------------------

    @_naming_resource_errors("start")
    def start(self) -> None:
        """Run the container's program (created containers only)."""
        with self._locked() as sandbox:
            # (The supervisor refuses a second start, and that is recorded.)
            require(Operation.START, self.id, effective_status(self._record, sandbox))
            assert sandbox is not None
            try:
                sandbox.start(self.id, self._state_dict(Status.CREATED))
            except SandboxDiedError:
                if not self._stopped_meanwhile(Operation.START, sandbox):
                    raise
            except InitError as exc:
                named = _cgroup.naming_memory_limit(exc, self._record)
                if named is not exc:
                    raise named from exc
                raise
            except InvalidStateError:
                # Started already, by a caller killed before it recorded so: recorded now.
                self._record = self._record.with_status(Status.RUNNING)
                self._store.save(self._record)
                raise
            self._record = self._record.with_status(Status.RUNNING)
            self._store.save(self._record)
        # Not holding the lock: a hook may use its container (exec into it, say), as
        # with runc, whose lock is no other process's either.
        self._poststart()

    def _poststart(self) -> None:
        """poststart hooks: failures are logged, as OCI asks, never raised."""
        hooks.run_hooks_best_effort(
            self._hooks("poststart"),
            self._state_dict(Status.RUNNING),
            phase="poststart",
            container_id=self.id,
            cwd=self.bundle,
            log=log,
        )

    @_naming_resource_errors("wait for")
    def wait(self, timeout: float | None = None) -> int:
        """Wait for the container's init to exit; its exit code, ``-N`` if killed by signal N.

        Works any number of times and from any process, until :meth:`destroy`.
        """
        remaining = self._ready_to_wait(wait_seconds(self.id, timeout))
        return self._wait_for_init(self._sandbox_to_wait_on("wait for"), remaining)

    def _ready_to_wait(self, timeout: float | None) -> float | None:
        """Before a wait on the container (``wait``, ``wait_pid``, ``communicate``): the
        record read again, and a mark left ``pending`` (by a kill of every process whose
        caller died with the cgroup frozen, say) finished by taking the lock a moment, as
        any operation that changes the container would (a lock not had within
        ``timeout``, or not to be had, leaves it); what is left of ``timeout``."""
        deadline = deadline_after(timeout)
        self._refresh()
        if self._record.pending:
            wait_up_to = None if timeout is None else max(0.0, timeout)
            with (
                contextlib.suppress(LockTimeoutError, OSError),
                self._locked(lock_timeout=wait_up_to),
            ):
                pass
        return seconds_left(deadline)

    @_naming_resource_errors("communicate with")
    def communicate(
        self, input: bytes | None = None, timeout: float | None = None
    ) -> tuple[bytes | None, bytes | None]:
        """Send ``input`` to the init, read its stdout and stderr to their end, wait for
        it; ``(stdout, stderr)``: ``Popen.communicate`` for the streams :meth:`create`
        gave this handle (``PIPE``, or the terminal as stdout), served together so that
        neither can fill up and block the other. Each output is ``None`` unless it is
        such a stream. A :class:`ProcessTimeoutError` carries the output so far (the
        init runs on, as after ``Popen.communicate(timeout=...)``); call it again to go
        on. The container must be started for anything to come."""
        timeout = wait_seconds(self.id, timeout)
        deadline = deadline_after(timeout)
        if self._communication is None:
            self._communication = Communication(
                self.id,
                stdin=self.stdin,
                stdout=self.stdout,
                stderr=self.stderr,
                console=self.console,
            )

        # A frozen container (a kill of every process whose caller died, say) would never
        # end its output: finished first.
        with contextlib.suppress(ContainerNotFoundError):  # (its output may still be read)
            self._ready_to_wait(timeout)

        def timed_out() -> ProcessTimeoutError:
            returncode = self._init_status_if_known()
            return ProcessTimeoutError(
                self.id, self._init_args(), timeout or 0.0, returncode=returncode
            )

        def wait(remaining: float | None) -> int:
            remaining = self._ready_to_wait(remaining)
            return self._wait_for_init(self._sandbox_to_wait_on("communicate with"), remaining)

        return self._communication.communicate(input, deadline, wait=wait, timed_out=timed_out)

    def _init_args(self) -> builtins.list[str]:
        """The init's program and arguments, as the spec gives them."""
        args = (self._record.spec.get("process") or {}).get("args") or []
        return [str(arg) for arg in args]

    def _init_status_if_known(self) -> int | None:
        """The init's exit status if it has exited, ``None`` if not or not known."""
        sandbox = self._launched or self.sandbox
        try:
            return None if sandbox is None else sandbox.wait(self.id, 0)
        except (SandboxrtError, OSError):
            return None

    def _wait_for_init(
        self, sandbox: Sandbox, timeout: float | None, *, kills: bool = False
    ) -> int:
        """``sandbox.wait`` for our init; past ``timeout``, a :class:`ProcessTimeoutError`
        (a ``WaitTimeoutError`` and a ``subprocess.TimeoutExpired``, as ``Popen.wait``
        raises), naming the init's args; ``kills``: the caller then kills it."""
        try:
            return sandbox.wait(self.id, timeout)
        except WaitTimeoutError:
            raise ProcessTimeoutError(
                self.id, self._init_args(), timeout or 0.0, killed=kills
            ) from None

    def _sandbox_to_wait_on(self, operation: str) -> Sandbox:
        """The sandbox; a container still being created (by another process) has none
        yet: :class:`InvalidStateError`, as for any operation its status refuses."""
        sandbox = self.sandbox
        if sandbox is None:
            status = effective_status(self._record, None).value
            raise InvalidStateError(operation, self.id, status, reason="it has no sandbox yet")
        return sandbox

    @_naming_resource_errors("kill")
    def kill(
        self, sig: int | str = _signal.SIGTERM, *, all: bool = False, foreground: bool = False
    ) -> None:
        """Send ``sig`` to the init, or with ``all=True`` to every process of the container.

        ``sig`` is a number or a name, as ``runc kill`` takes it (``"TERM"``,
        ``"SIGKILL"``); anything else is an :class:`InvalidArgumentError`.

        The init is not PID 1 (the supervisor is, as with ``docker run --init``),
        so the kernel does not shield it: a signal it has no handler for acts as
        by default (``SIGTERM`` ends it), where runc's init, PID 1, ignores it.

        With ``foreground=True`` it goes to the foreground process group of the
        init's terminal instead (``process.terminal``; like ``runsc kill --fg``).

        ``all=True`` is allowed on a stopped container, to clean up leftovers.
        It goes through the container's cgroup, so forks cannot escape:
        ``SIGKILL`` kills every process and returns once none is left; other
        signals reach every process but the supervisor. Without a cgroup the
        supervisor signals the processes of its PID namespace (or its
        descendants).

        A paused container takes signals as ``runc kill`` does: they stay
        pending until :meth:`resume`. ``SIGKILL`` (with or without ``all``)
        also thaws it, since frozen processes do not die on cgroup v1: the
        container reads ``running`` until its init's death is recorded, then
        ``stopped``.
        """
        if all and foreground:
            raise InvalidArgumentError(self.id, "kill: all and foreground exclude each other")
        sig = signal_number(sig, self.id)
        with self._locked() as sandbox:
            status = effective_status(self._record, sandbox)
            require(Operation.KILL_ALL if all else Operation.KILL, self.id, status)
            paused = status is Status.PAUSED
            # Through the cgroup, it may freeze it for a moment: should our caller die
            # meanwhile, the next holder of the lock finds it said and thaws it. (Said if
            # the store can: a kill does not wait on a full disk. A paused container is
            # frozen, as its record says, whatever becomes of us.)
            freezing = (
                all and not paused and _cgroup.freezes_to_signal(self._record.cgroup, self.id, sig)
            )
            if freezing:
                freezing = self._mark_pending("kill", required=False)
            try:
                self._signal(sandbox, sig, all=all, paused=paused, foreground=foreground)
            finally:
                if freezing:
                    self._unmark_pending()
                if paused and sig == _signal.SIGKILL:
                    _cgroup.thaw(self._record.cgroup, self.id)
                    self._record = self._record.with_status(Status.RUNNING)
                    self._store.save(self._record)

    def _mark_pending(self, operation: str, *, required: bool = True, **details: Any) -> bool:
        """Save that ``operation`` is under way, by this process (``pending``); whether it
        is. One that may go on without (``required=False``) logs a store that fails."""
        by = attrs.asdict(this_process())
        try:
            self._save_pending({"operation": operation, "by": by, **details})
        except (SandboxrtError, OSError) as exc:
            if required:
                raise
            log.warning('container "%s": its %s goes on unsaid: %s', self.id, operation, exc)
            return False
        return True

    def _unmark_pending(self) -> None:
        """The operation marked is over. A store that fails to say so is logged: while
        this process lives, the next holder of the lock clears the mark; once it has
        exited, it takes it for one that died half-way (an update then done after all,
        which its caller was told failed: a disk full at both saves, decision 68)."""
        try:
            self._save_pending({})
        except (SandboxrtError, OSError) as exc:
            log.warning('container "%s": its record still says it is busy: %s', self.id, exc)

    def _save_pending(self, pending: dict[str, Any]) -> None:
        record = attrs.evolve(self._record, pending=pending)
        self._store.save(record)
        self._record = record  # (once saved: a mark the store refused is not ours to keep)

    def _finish_pending(self, *, updates: bool = True) -> None:
        """Under the lock: an operation marked ``pending`` (see :class:`ContainerRecord`)
        whose process died half-way left the container apart from its record. A kill's
        frozen cgroup is thawed (its signals are not sent again); an update is written and
        saved, if ``updates`` (not in a destroy) and the container may still be updated,
        else only unmarked. A mark whose process lives is one whose end could not be
        saved: it is cleared (a kill's cgroup thawed all the same)."""
        pending = self._record.pending
        if not pending:
            return
        operation = pending.get("operation")
        by = pending.get("by")
        try:
            died = not alive(ProcessIdentity(**(by if isinstance(by, dict) else {})))
        except (TypeError, ValueError):  # (no process named: a mark of another make)
            died = True
        if operation == "kill" and not self._thawed_after_a_kill():
            return  # (the mark stays: the next holder of the lock tries again)
        if died and operation == "update" and updates:
            if self._finish_update(pending):
                return
        elif died:
            log.warning('container "%s": its %s died half-way', self.id, operation)
        self._unmark_pending()

    def _thawed_after_a_kill(self) -> bool:
        """Thaw the cgroup a kill of every process left frozen; whether it is (or gone)."""
        try:
            _cgroup.thaw(self._record.cgroup, self.id)
        except MissingFeatureError:
            return True
        except SystemCallError as exc:
            if exc.errno in (errno.ENOENT, errno.ENODEV):
                return True
            log.warning('container "%s": its cgroup stays frozen: %s', self.id, exc)
            return False
        return True

    def _finish_update(self, pending: dict[str, Any]) -> bool:
        """Do the update a dead caller left half-way, unless the container may no longer be
        updated; whether it was done (else it is logged, and to be unmarked)."""
        try:
            status = effective_status(self._record, self.sandbox)
            if status not in (Status.CREATED, Status.RUNNING, Status.PAUSED):
                raise InvalidStateError("update", self.id, status.value)
            self._update_locked(pending["changes"])  # (which saves it done)
        except Exception as exc:  # (a bad mark too: it is not retried)
            log.warning(
                'container "%s": an update of it died half-way and could not be finished '
                "(%s): its cgroup may hold some of its values, its record none",
                self.id,
                exc,
            )
            return False
        log.warning('container "%s": an update of it died half-way: finished now', self.id)
        return True

    def _signal(
        self, sandbox: Sandbox | None, sig: int, *, all: bool, paused: bool, foreground: bool
    ) -> None:
        """:meth:`kill` under the lock, the status checked."""
        if all and self._record.cgroup is not None:
            running = sandbox is not None and sandbox.is_running()
            _cgroup.signal_all(
                self._record.cgroup,
                self.id,
                sig,
                spare=sandbox.pid if sandbox is not None and running else None,
                timeout=self._destroy_timeout(),
                paused=paused,
            )
            return
        if sandbox is None or not sandbox.is_running():
            return
        try:
            sandbox.signal(self.id, sig, all=all, foreground=foreground)
        except (SandboxDiedError, InitError):
            if not self._stopped_meanwhile(Operation.KILL_ALL if all else Operation.KILL, sandbox):
                raise

    @_naming_resource_errors("pause")
    def pause(self) -> None:
        """Freeze every process of the (running) container, like ``runc pause``.

        Goes through the cgroup freezer (v1 ``freezer.state``, v2
        ``cgroup.freeze``) and returns once every process is frozen; the
        status ``paused`` is recorded. The supervisor stays outside the
        cgroup, so :meth:`state`, :meth:`stats`, :meth:`wait`, :meth:`kill`
        and :meth:`destroy` keep working; :meth:`exec` is refused. Raises
        :class:`InvalidStateError` unless running, :class:`MissingFeatureError`
        without a cgroup freezer. No hooks run.
        """
        with self._locked() as sandbox:
            status = effective_status(self._record, sandbox, ask=True)
            require(Operation.PAUSE, self.id, status)
            if self._record.status is Status.CREATED:  # (started by a caller killed since)
                self._record = self._record.with_status(status)
            # Recorded first: a caller killed while it freezes leaves a container that
            # says paused (which resume thaws), never a frozen one that says running.
            self._record = self._record.with_status(Status.PAUSED)
            self._store.save(self._record)
            try:
                _cgroup.freeze(self._record.cgroup, self.id, timeout=self._destroy_timeout())
            except BaseException as exc:  # (a freeze half-way, an interrupt: running)
                if not isinstance(exc, MissingFeatureError):  # (else nothing was frozen)
                    with contextlib.suppress(SystemCallError):
                        _cgroup.thaw(self._record.cgroup, self.id)
                self._record = self._record.with_status(Status.RUNNING)
                self._store.save(self._record)
                raise
            if effective_status(self._record, sandbox) is Status.STOPPED:
                # It stopped meanwhile (a pod's root exited, whose supervisor thaws the
                # members it kills, maybe before this froze): nothing stays frozen.
                with contextlib.suppress(SystemCallError):
                    _cgroup.thaw(self._record.cgroup, self.id)
                self._record = self._record.with_status(Status.STOPPED)
                self._store.save(self._record)
                require(Operation.PAUSE, self.id, Status.STOPPED)

    @_naming_resource_errors("resume")
    def resume(self) -> None:
        """Thaw a paused container (``runc resume``): its processes run on, signals
        sent meanwhile are delivered. Raises :class:`InvalidStateError` unless paused."""
        with self._locked() as sandbox:
            require(Operation.RESUME, self.id, effective_status(self._record, sandbox))
            _cgroup.thaw(self._record.cgroup, self.id)
            self._record = self._record.with_status(Status.RUNNING)
            self._store.save(self._record)

    # -- processes of the container -----------------------------------------------------
    #
    # Pids are those of the sandbox's PID namespace (the supervisor is 1 there), as
    # ``Process.pid`` and ``runsc`` give them; ``ProcessInfo.host_pid`` is the host's.

    @_naming_resource_errors("wait for a process of")
    def wait_pid(self, pid: int, timeout: float | None = None) -> int:
        """Wait for process ``pid`` of the container to exit; its exit code (``-N``: signal N).

        ``pid`` is the init or a process exec'd into the container, in the
        sandbox's PID namespace (``Process.pid``, ``ProcessInfo.pid``). Works
        from any process that can load the container, and again with the same
        answer while the supervisor keeps the status (the latest 4096 waited
        ones). Raises :class:`ProcessNotFoundError` for any other pid and
        :class:`ProcessTimeoutError` after ``timeout`` seconds. Once the
        sandbox is gone, the statuses it kept are read from its runtime
        directory (the init's, and those of exec'd processes that exited
        before it), until :meth:`destroy`; any other pid reads ``-9`` (its
        processes died with it, and which pids were its is no longer known).
        """
        pid = _process_pid(self.id, pid)
        timeout = wait_seconds(self.id, timeout)
        remaining = self._ready_to_wait(timeout)
        sandbox = self._sandbox_to_wait_on("wait for a process of")
        try:
            code = sandbox.wait_process(self.id, pid, remaining)
        except TimeoutError:
            raise ProcessTimeoutError(self.id, [], timeout or 0.0, pid=pid) from None
        assert code is not None
        return code

    @_naming_resource_errors("signal a process of")
    def signal_process(
        self, pid: int, sig: int | str, *, group: bool = False, foreground: bool = False
    ) -> None:
        """Send ``sig`` to process ``pid`` of the container (sandbox PID namespace).

        Any process of the container is accepted: the supervisor checks that
        ``pid`` is in the container's cgroup (without one: among its own
        descendants), never itself or a process of the host, and signals it
        through a pidfd; else :class:`ProcessNotFoundError`. ``group`` signals
        its process group; ``foreground`` the foreground process group of the
        terminal ``pid`` holds (the init with ``process.terminal``, or a
        process exec'd with ``tty=True``). In a paused container the signal waits
        for :meth:`resume`, ``SIGKILL`` too on cgroup v1 (v2 delivers it to frozen
        processes): only :meth:`kill` thaws.
        """
        pid = _process_pid(self.id, pid)
        number = signal_number(sig, self.id)
        self._refresh()
        sandbox = self.sandbox
        require(Operation.KILL, self.id, effective_status(self._record, sandbox))
        assert sandbox is not None
        try:
            sandbox.signal_process(self.id, pid, number, group=group, foreground=foreground)
        except SandboxDiedError:
            if not self._stopped_meanwhile(Operation.KILL, sandbox):
                raise

    @_naming_resource_errors("list the processes of")
    def processes(self) -> builtins.list[ProcessInfo]:
        """The container's processes now, like ``runc ps``, sorted by pid.

        Read from ``/proc`` on this side: the members of the container's
        cgroup (without one: the supervisor's descendants). The supervisor,
        PID 1 of the sandbox and not the container's, is left out; the
        container's init is the supervisor's child (``ppid`` 1).
        """
        self._refresh()
        sandbox = self.sandbox
        running = sandbox is not None and sandbox.is_running()
        supervisor = sandbox.pid if sandbox is not None and running else None
        if self._record.cgroup is not None:
            try:
                host_pids = cgroups.load(self._record.cgroup, container_id=self.id).pids()
            except SystemCallError as err:
                self._raise_unless_destroyed(err)
                host_pids = []  # (being destroyed: its processes are gone with the cgroup)
        elif supervisor is not None:
            host_pids = procfs.descendants(supervisor)
        else:
            host_pids = []
        return process_infos(host_pids, supervisor)

    def forward_signals(
        self,
        process: Process | int | None = None,
        signals: Sequence[int | str] = DEFAULT_FORWARDED,
        *,
        foreground: bool = False,
    ) -> SignalForwarder:
        """A context manager that relays this process's ``signals`` to a container process.

        The target is the container's init (``None``), an exec'd
        :class:`Process`, or a pid (sandbox PID namespace); with
        ``foreground`` the foreground process group of its terminal. The
        previous handlers come back on exit. Main thread only
        (``RuntimeError`` otherwise). SIGWINCH resizes the target's pty to the
        caller's terminal when both exist (the pty is the :class:`Process`'s
        ``console`` or, for the init, :attr:`console`); otherwise it is relayed.
        Relays go straight to the supervisor, without the container's lock. Signals
        are numbers or names, as :meth:`kill` takes them; SIGKILL, SIGSTOP and SIGCHLD
        cannot be relayed (:class:`InvalidArgumentError`).
        """
        numbers = [signal_number(sig, self.id) for sig in signals]
        refused = [_signal.Signals(n).name for n in numbers if n in REFUSED_SIGNALS]
        if refused or 0 in numbers:
            what = ", ".join(refused) or "0 (no signal)"
            raise InvalidArgumentError(self.id, f"these signals cannot be forwarded: {what}")
        self._refresh()
        sandbox = self.sandbox
        require(Operation.KILL, self.id, effective_status(self._record, sandbox))
        assert sandbox is not None
        console = self.console
        if isinstance(process, Process):
            target = process
            console = process.console

            def send(sig: int) -> None:
                target.send_signal(sig, foreground=foreground)

        elif process is None:

            def send(sig: int) -> None:
                sandbox.signal(self.id, sig, foreground=foreground)

        else:
            pid = _process_pid(self.id, process)
            console = None

            def send(sig: int) -> None:
                sandbox.signal_process(self.id, pid, sig, foreground=foreground)

        name = f"container {self.id!r}" + (f" process {process}" if process is not None else "")
        return SignalForwarder(send, numbers, console=console, target=name)

    # -- exec'd processes ------------------------------------------------------------

    @_naming_resource_errors("exec")
    def exec(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | Sequence[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        user: UserArg | None = None,
        tty: bool = False,
        console_size: tuple[int, int] | None = None,
        stdin: StdioArg = None,
        stdout: StdioArg = None,
        stderr: StdioArg = None,
        timeout: float | None = None,
    ) -> Process:
        """Run ``args`` in the container (created or running) and return its :class:`Process`.

        The process is the spec's ``process`` (user, capabilities,
        ``noNewPrivileges``, seccomp, rlimits, umask, env, cwd) with these
        overrides: ``env`` (a mapping or ``KEY=value`` strings) replaces the
        environment; ``cwd`` is an absolute path in the container; ``user`` is
        a uid, ``(uid, gid)`` (taken as is), or ``"user[:group]"`` with names
        or ids, looked up in the container's own ``/etc/passwd`` and
        ``/etc/group`` as ``runc exec --user`` does (a user found there brings
        its primary gid and, without a group, the groups listing it as
        supplementary ones; an unknown name raises :class:`ExecError`). It
        joins the container's namespaces, root and cgroup, leads a process
        group of its own, and ``args[0]`` is looked up in the env's ``PATH``.

        ``stdin``, ``stdout`` and ``stderr`` take what ``subprocess.Popen``
        takes (``None`` passes this process's own). With ``tty=True`` they
        must be left out: the process gets a new pty of the container and
        ``Process.console`` is its master; ``console_size`` is its ``(rows, columns)``
        from the start (else the spec's ``process.consoleSize``, else 0x0, as with
        runc, until the caller sizes it). ``timeout`` is a deadline after which
        the process and its process group are killed (see :class:`Process`).

        Returns once the program runs; raises :class:`ExecError` when it could
        not be started (a missing binary...), :class:`InvalidStateError`
        unless the container is created or running (not paused). Works from any process
        that can load the container: everything goes through its control socket.
        """
        if tty and any(arg is not None for arg in (stdin, stdout, stderr)):
            raise InvalidArgumentError(
                self.id, "with tty=True, stdin, stdout and stderr are the terminal: use console"
            )
        timeout = wait_seconds(self.id, timeout)
        if timeout is not None and not timeout > 0:
            raise InvalidArgumentError(self.id, f"timeout must be positive, not {timeout!r}")
        spec = self._record.spec
        if cwd is not None:
            cwd = os.fspath(cwd)
        overrides: dict[str, Any] = {"env": env, "cwd": cwd, "user": user, "terminal": tty}
        if console_size is not None:
            overrides["console_size"] = console_size
        with arguments_of(self.id):
            plan = self._exec_plan(args, overrides)  # (before the lock: a bad one waits not)
            stdio = None if tty else StdioPlan(stdin, stdout, stderr)
        try:
            with self._locked() as sandbox:
                require(Operation.EXEC, self.id, effective_status(self._record, sandbox))
                assert sandbox is not None
                if self._record.spec is not spec:  # the id names another container now
                    plan = self._exec_plan(args, overrides)
                if stdio is not None:
                    give_pipes_to_mapped_root(stdio, self._record.id_maps)
                try:
                    pid, master, serial, connection = sandbox.exec_connected(
                        self.id, plan, stdio.child_fds if stdio else []
                    )
                except SandboxDiedError:
                    if not self._stopped_meanwhile(Operation.EXEC, sandbox):
                        raise
        except BaseException:
            if stdio is not None:
                stdio.close_all()
            raise
        console = None
        if stdio is not None:
            stdio.close_child_ends()
        if master is not None:
            os.set_inheritable(master, False)
            console = PtyMaster(master)
        return Process(
            container_id=self.id,
            sandbox=sandbox,
            pid=pid,
            args=plan.args,
            stdin=stdio.stdin if stdio else None,
            stdout=stdio.stdout if stdio else None,
            stderr=stdio.stderr if stdio else None,
            console=console,
            timeout=timeout,
            connection=connection,
            serial=serial,
        )

    @overload
    def exec_run(
        self,
        args: Sequence[str],
        *,
        input: bytes | None = None,
        text: Literal[False] | None = None,
        encoding: None = None,
        errors: None = None,
        universal_newlines: Literal[False] | None = None,
        **options: Unpack[ExecRunOptions],
    ) -> subprocess.CompletedProcess[bytes]: ...
    @overload
    def exec_run(
        self,
        args: Sequence[str],
        *,
        input: bytes | str | None = None,
        text: Literal[True],
        encoding: str | None = None,
        errors: str | None = None,
        universal_newlines: bool | None = None,
        **options: Unpack[ExecRunOptions],
    ) -> subprocess.CompletedProcess[str]: ...
    @overload
    def exec_run(
        self,
        args: Sequence[str],
        *,
        input: bytes | str | None = None,
        text: bool | None = None,
        encoding: str,
        errors: str | None = None,
        universal_newlines: bool | None = None,
        **options: Unpack[ExecRunOptions],
    ) -> subprocess.CompletedProcess[str]: ...
    @overload
    def exec_run(
        self,
        args: Sequence[str],
        *,
        input: bytes | str | None = None,
        text: bool | None = None,
        encoding: str | None = None,
        errors: str,
        universal_newlines: bool | None = None,
        **options: Unpack[ExecRunOptions],
    ) -> subprocess.CompletedProcess[str]: ...
    @overload
    def exec_run(
        self,
        args: Sequence[str],
        *,
        input: bytes | str | None = None,
        text: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        universal_newlines: Literal[True],
        **options: Unpack[ExecRunOptions],
    ) -> subprocess.CompletedProcess[str]: ...
    @overload
    def exec_run(
        self,
        args: Sequence[str],
        *,
        input: bytes | str | None = None,
        text: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        universal_newlines: bool | None = None,
        **options: Unpack[ExecRunOptions],
    ) -> subprocess.CompletedProcess[Any]: ...
    def exec_run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | Sequence[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        user: UserArg | None = None,
        tty: bool = False,
        console_size: tuple[int, int] | None = None,
        stdin: StdioArg = None,
        input: bytes | str | None = None,
        stdout: StdioArg = None,
        stderr: StdioArg = None,
        capture_output: bool = False,
        check: bool = False,
        timeout: float | None = None,
        text: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        universal_newlines: bool | None = None,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``args`` in the container to completion, as ``subprocess.run`` does.

        Takes :meth:`exec`'s arguments and ``input``, ``capture_output``,
        ``check``, ``timeout`` and the text mode's ``text`` (or
        ``universal_newlines``), ``encoding`` and ``errors`` like
        ``subprocess.run``: returns a ``CompletedProcess`` (``args``,
        ``returncode``, ``stdout``, ``stderr``; output is bytes when captured,
        ``str`` in text mode, where ``input`` is a ``str`` too). With ``check``,
        a non-zero exit raises :class:`ProcessError` (a
        ``subprocess.CalledProcessError``). After ``timeout`` seconds the
        process and its process group are killed and :class:`ProcessTimeoutError`
        (a ``subprocess.TimeoutExpired``, with the output so far, as bytes) is
        raised. With ``tty``, the terminal's output is captured in ``stdout``.
        """
        timeout = wait_seconds(self.id, timeout)
        text_mode = TextMode.of(self.id, text, encoding, errors, universal_newlines)
        if text_mode is not None:
            input = text_mode.encode(self.id, input)
        elif isinstance(input, str):
            raise TypeError("input must be bytes unless text, encoding or errors is given")
        if input is not None:
            if stdin is not None:
                raise InvalidArgumentError(
                    self.id, "stdin and input arguments may not both be used"
                )
            stdin = None if tty else subprocess.PIPE
        if capture_output:
            if stdout is not None or stderr is not None:
                raise InvalidArgumentError(
                    self.id, "stdout and stderr arguments may not be used with capture_output"
                )
            stdout = stderr = subprocess.PIPE
            if tty:
                stdout = stderr = None
        process = self.exec(
            args,
            env=env,
            cwd=cwd,
            user=user,
            tty=tty,
            console_size=console_size,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )
        with process:
            try:
                out, err = process.communicate(input, timeout=timeout)
            except ProcessTimeoutError as timed_out:
                # As subprocess.run: killed and waited for, with the output so far (what a
                # process out of its group, setsid, holds open may never end). Its group
                # is killed even when it had exited (what is left of it holds the output).
                process.kill(group=True)
                code = process.wait()
                exited = timed_out.returncode  # (at the time-out, its output held open)
                raise ProcessTimeoutError(
                    self.id,
                    process.args,
                    timeout or 0.0,
                    pid=process.pid,
                    output=timed_out.output,
                    stderr=timed_out.stderr,
                    killed=exited is None and code == -_signal.SIGKILL,
                    returncode=exited,
                ) from None
            except BaseException:
                process.kill(group=True)
                raise
        returncode = process.returncode
        assert returncode is not None
        output: tuple[Any, Any] = (out, err)
        if text_mode is not None:
            output = text_mode.decode(out), text_mode.decode(err)
        if check and returncode:
            raise ProcessError(self.id, process.args, returncode, *output)
        return subprocess.CompletedProcess(process.args, returncode, *output)

    @_naming_resource_errors("read the stats of")
    def stats(self) -> Stats:
        """The resource usage of the container, in every status until :meth:`destroy`:
        once it stopped, what its processes used in all (CPU time, peak memory, OOM
        kills), as ``wait4`` gives a child's usage after its exit (``runc events``
        refuses a stopped container).

        Raises :class:`MissingFeatureError` for a container without a cgroup, and
        :class:`InvalidStateError` for a stopped one whose cgroup is gone (its sandbox
        died and removed it, or a destroy is under way).
        """
        self._refresh()
        status = effective_status(self._record, self.sandbox)
        require(Operation.STATS, self.id, status)
        if self._record.cgroup is None:
            raise MissingFeatureError("container stats", f'container "{self.id}" has no cgroup')
        try:
            cgroup = cgroups.load(self._record.cgroup, container_id=self.id)
            stats = cgroup.stats()
            # (a file of a directory gone reads as nothing: not a container that used none)
            gone = not all(directory.is_dir() for directory in cgroup.directories)
        except SystemCallError as err:
            self._raise_unless_destroyed(err)
            gone = True
        if gone:
            self._refresh()  # (ContainerNotFoundError once the record went too)
            status = effective_status(self._record, self.sandbox)
            raise InvalidStateError(
                "read the stats of", self.id, status.value, reason="its cgroup is gone"
            )
        return Stats.from_cgroup(stats)

    @_naming_resource_errors("update")
    def update(self, resources: Mapping[str, Any]) -> None:
        """Change the container's resource limits, as ``runc update --resources`` does.

        ``resources`` is an OCI ``linux.resources`` object holding the fields to
        change, e.g. ``{"memory": {"limit": 256 << 20}, "pids": {"limit": 64}}``;
        every other field stays. What ``runc update`` changes may change: memory
        ``limit``, ``reservation`` and ``swap``; cpu ``shares``, ``quota``,
        ``period``, ``burst``, ``cpus`` and ``mems``; blockIO ``weight``; pids
        ``limit``; and ``unified`` (cgroup v2 files). Anything else (device rules,
        say) is an :class:`InvalidArgumentError`. The spec with the new values is
        checked as at creation (:class:`SpecError`), the values are written to the
        container's cgroup and kept in its record (:attr:`spec` shows them). A value
        the kernel refuses (on cgroup v1, a memory limit below what the container
        holds and cannot give back) is a :class:`SystemCallError`: every file the
        update wrote gets back what it held, and the record stays as it was. A value
        a spec takes for unset (0, ``""``, ``None``) is refused, as it would change
        nothing (but a CPU ``burst`` of 0: none); -1 is no limit.

        Created, running or paused containers only (:class:`InvalidStateError`);
        :class:`MissingFeatureError` for one without a cgroup.
        """
        with arguments_of(self.id):
            changes = resources_update.checked_changes(resources)
        with self._locked() as sandbox:
            require(Operation.UPDATE, self.id, effective_status(self._record, sandbox))
            self._update_locked(changes)

    def _update_locked(self, changes: dict[str, Any]) -> None:
        """:meth:`update` under the lock, the status checked."""
        if self._record.cgroup is None:
            reason = f'container "{self.id}" has no cgroup'
            raise MissingFeatureError("updating resources", reason)
        document = resources_update.updated_document(self._record.spec, changes)
        with arguments_of(self.id):
            resources_update.check_not_overridden(document, changes)
        with naming_container(self.id):
            load_spec(document)  # checked as a config.json is
            problems = document_problems(document)
            if problems:
                raise SpecError(problems)
            _cgroup.resources_for(document)  # (and as a cgroup's resources are)
            wanted = Resources.from_oci(resources_update.to_write(document, changes))
        cgroup = cgroups.load(self._record.cgroup, container_id=self.id)
        with arguments_of(self.id):
            resources_update.check_placed(changes, _controllers(cgroup))
        updated = attrs.evolve(self._record, spec=document, pending={})
        # (a Ctrl-C half-way would leave a cgroup the record does not describe; a caller
        # killed half-way, the next holder of the lock finishes: ``pending``)
        with interrupts_deferred():
            self._mark_pending("update", changes=changes)
            self._apply_update(cgroup, wanted, updated)

    def _apply_update(self, cgroup: Cgroup, wanted: Resources, updated: ContainerRecord) -> None:
        """:meth:`_update_locked`'s end: ``wanted`` written, ``updated`` saved; what was
        written given back if either fails (and the update no longer ``pending``)."""
        journal = cgroups.WriteJournal()
        saving = False
        try:
            # (a SpecError named here: a block device it does not know; what is missing,
            # by the method's decorator)
            with journal.recording(), naming_container(self.id):
                cgroup.apply(wanted)
            saving = True
            self._store.save(updated)
        except BaseException:
            if saving and self._saved_despite(updated):  # (a durable save, failed after)
                self._record = updated
                raise
            failed = journal.undo()
            if failed:
                log.warning(
                    'container "%s": what a failed update wrote was not all given back: %s',
                    self.id, "; ".join(failed),
                )  # fmt: skip
            self._unmark_pending()
            raise
        self._record = updated

    def _saved_despite(self, record: ContainerRecord) -> bool:
        """Whether ``record``'s spec is the one stored, after its save raised (a durable
        store whose ``fsync`` failed once the record was in place, say)."""
        try:
            return self._store.load(self.id).spec == record.spec
        except (SandboxrtError, OSError):
            return False

    def _raise_unless_destroyed(self, err: SystemCallError) -> None:
        """After ``err`` reading the container's cgroup: re-raise it unless the cgroup is
        gone (a destroy racing us), and :class:`ContainerNotFoundError` once the record
        is gone too."""
        if err.errno not in (errno.ENODEV, errno.ENOENT):
            raise err
        self._refresh()

    def export_changes(
        self, dest: str | os.PathLike[str] | IO[bytes], *, max_bytes: int | None = None
    ) -> None:
        """Write what the container changed in its overlay root to ``dest`` as a tar layer.

        ``dest`` is a path (created or truncated) or a binary file object open
        for writing (a pipe or socket will do: the stream is written in one
        pass, file contents in chunks). The stream is an uncompressed PAX tar
        of the overlay's upper layer in the OCI image-layer form: relative
        paths, modes, numeric owners, mtimes, symlinks, hard links and extended
        attributes as they are; a deleted file or directory is a
        ``.wh.<name>`` entry and a directory that replaced a lower one holds a
        ``.wh..wh..opq`` entry. Mount points the runtime made for the spec's
        mounts show up as added directories. Works on created, running and
        paused containers and from any process that can load the container;
        files the container writes meanwhile may or may not be included.

        ``max_bytes`` bounds the file data written, over all files, as
        :meth:`ContainerFiles.copy_out` does (a sparse file of a terabyte costs the
        container nothing and the tar its whole size): past it, a
        :class:`ContainerFileError` (``EFBIG``) naming the file, and a ``dest``
        path made here is removed.

        Raises :class:`NoOverlayError` for a container created without
        ``Config(overlay=True)`` and :class:`InvalidStateError` once it has
        stopped (the upper layer went with its sandbox).
        """
        check_max_bytes(self.id, max_bytes)
        if not self.config.overlay:
            raise NoOverlayError(self.id, "export the changes of")
        gone = "its overlay's upper layer went with its sandbox"
        with self._locked() as sandbox:
            status = effective_status(self._record, sandbox)
            if sandbox is None or status not in LIVE:
                raise InvalidStateError("export the changes of", self.id, str(status), reason=gone)
            try:
                upper = sandbox.overlay_upper(self.id)
            except SandboxDiedError:
                status = effective_status(self._record, sandbox)
                if status is Status.STOPPED:
                    raise InvalidStateError(
                        "export the changes of", self.id, str(status), reason=gone
                    ) from None
                raise
        # Outside the lock: the fd keeps the layer alive, and a long export must not
        # hold up other operations (a destroy meanwhile just ends the container).
        owners = self._owners_inside()
        try:
            if isinstance(dest, str | os.PathLike):
                made = not os.path.lexists(dest)
                with open(dest, "wb") as f:
                    try:
                        _changes.write_layer(upper, f, owners=owners, max_bytes=max_bytes)
                    except (_changes.LayerTooLargeError, _changes.UnrepresentableError):
                        # Half a layer is none: a file made here goes; one that was there
                        # was overwritten, as open(dest, "wb") does (never a link's or a
                        # node's: those are left).
                        if made:
                            unlink_if_same(dest, os.fstat(f.fileno()))
                        raise
            else:
                _changes.write_layer(upper, dest, owners=owners, max_bytes=max_bytes)
        except _changes.LayerTooLargeError as exc:
            reason = f"export_changes stopped past max_bytes ({max_bytes})"
            raise file_error(self.id, "/" + exc.path, errno.EFBIG, reason) from None
        except _changes.UnrepresentableError as exc:
            reason = "a layer cannot hold a file named as a whiteout (.wh.): it would delete"
            raise file_error(self.id, "/" + exc.path, errno.EINVAL, reason) from None
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            # The walk holds an fd per directory level: a layer nested deeper than this
            # process may open files (the container's doing) cannot be exported.
            what = "export the changes (nested deeper than this process's open-file limit)"
            raise SystemCallError(what, exc, container_id=self.id) from None
        finally:
            os.close(upper)

    @_naming_resource_errors("destroy")
    def destroy(self) -> None:
        """Kill everything of the container (paused ones too) and remove all it left;
        a no-op when gone."""
        try:
            # (a Ctrl-C half-way would leave the record, with half of what it names gone;
            # the wait for the lock may be interrupted)
            with self._locked(corrupt_ok=True, updates=False), interrupts_deferred():
                teardown(self)
        except ContainerNotFoundError:
            pass
        # What a repr shows from now on (``status`` asks the store, which has no record).
        self._record = attrs.evolve(self._record, status=Status.STOPPED)

    # -- internals ---------------------------------------------------------------------

    def _refresh(self) -> None:
        record = self._store.load(self.id)
        if record.spec == self._record.spec:
            # Keep our spec object: its serialised form is cached (see records.py).
            record = attrs.evolve(record, spec=self._record.spec)
        else:  # (the id was destroyed and used again)
            self._exec_base = None
        self._record = record

    def _stopped_meanwhile(self, operation: Operation, sandbox: Sandbox | None) -> bool:
        """After the sandbox failed ``operation``: whether the container stopped
        meanwhile, and then it is answered as if it had stopped before the call (the
        :class:`InvalidStateError` of an operation a stopped container refuses)."""
        if effective_status(self._record, sandbox) is not Status.STOPPED:
            return False
        require(operation, self.id, Status.STOPPED)
        return True

    def _exec_plan(self, args: Sequence[str], overrides: dict[str, Any]) -> ExecPlan:
        """The plan of ``args`` exec'd into this container (:func:`exec_plan` of its spec)."""
        if self._exec_base is None:
            self._exec_base = exec_plan(self._record.spec, ["-"], compile_seccomp=compile_bpf)
        return exec_plan(
            self._record.spec, args, compile_seccomp=compile_bpf, base=self._exec_base, **overrides
        )

    def _file_server(self) -> Gofer:
        """The gofer, for the file API, started (under the lock) if it was not yet:
        :class:`InvalidStateError` unless the container is created, running or paused."""
        self._refresh()
        record = self._record
        require(Operation.FILES, self.id, effective_status(record, self.sandbox))
        if record.gofer is None:
            with self._locked() as sandbox:
                require(Operation.FILES, self.id, effective_status(self._record, sandbox))
                assert sandbox is not None
                if self._record.gofer is None:
                    try:
                        self._start_gofer(sandbox)
                    except SandboxDiedError:  # it stopped meanwhile
                        require(Operation.FILES, self.id, effective_status(self._record, sandbox))
                        raise
            record = self._record
        assert record.gofer is not None
        home = runtime_dir(self._store, self.sandbox_id)
        return Gofer(self.id, record.gofer, socket_path(home, self.id))

    def _grant_oom_score(self) -> None:
        """Set the spec's ``oomScoreAdj`` on a pod member's init (found in its cgroup)
        from here: in the sandbox's own user namespace its ``/proc`` file is the host
        root's until it execs (its root container's was set before the namespace was
        made: ``limits.grant_ahead``). Where this cannot, the init tries and says."""
        value = (self._record.spec.get("process") or {}).get("oomScoreAdj")
        if value is None or self._record.cgroup is None:
            return
        with contextlib.suppress(SandboxrtError, OSError):
            for pid in cgroups.load(self._record.cgroup, container_id=self.id).pids():
                procfs.set_oom_score_adj(int(value), pid)

    def _maps(self) -> tuple[tuple[idmap.Extent, ...], tuple[idmap.Extent, ...]] | None:
        """The extents of the sandbox's own user namespace (see the record), or None."""
        if self._record.id_maps is None:
            return None
        uid_map, gid_map = self._record.id_maps
        return idmap.extents_from_text(uid_map), idmap.extents_from_text(gid_map)

    def _owner_on_host(self) -> tuple[int, int, bool]:
        """The host uid and gid the files the gofer makes for the container get: its
        process's, through the sandbox's own user namespace if it has one (then
        ``True``). Ids it does not map stay as they are (its spec is refused before)."""
        user = (self._record.spec.get("process") or {}).get("user") or {}
        uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
        maps = self._maps()
        if maps is None:
            return uid, gid, False
        host_uid, host_gid = idmap.to_host(maps[0], uid), idmap.to_host(maps[1], gid)
        return (
            uid if host_uid is None else host_uid,
            gid if host_gid is None else host_gid,
            True,
        )

    def _owners_inside(self) -> Callable[[int, int], tuple[int, int]] | None:
        """What turns host ids into the container's (the kernel's overflow id, 65534, for
        one its namespace does not map), when its sandbox has a user namespace of its own."""
        maps = self._maps()
        if maps is None:
            return None
        uids, gids = maps

        def inside(uid: int, gid: int) -> tuple[int, int]:
            inside_uid, inside_gid = idmap.to_container(uids, uid), idmap.to_container(gids, gid)
            return (
                idmap.OVERFLOW_ID if inside_uid is None else inside_uid,
                idmap.OVERFLOW_ID if inside_gid is None else inside_gid,
            )

        return inside

    def _hand_over_gofer(self, pending: PendingGofer, sandbox: Sandbox) -> Gofer | None:
        """Start the gofer launched with the container: it serves from now on (None when
        the sandbox is gone already: a quick ``run``)."""
        uid, gid, mapped = self._owner_on_host()
        # Its saved ids let the container user's host uid signal it: only where that
        # uid's processes cannot see it (outside the sandbox's own PID namespace).
        mapped = mapped and own_pid_namespace(sandbox.supervisor.pid)
        try:
            return pending.start(
                self.id,
                supervisor=sandbox.supervisor,
                runtime_dir=sandbox.runtime_dir,
                control_socket=sandbox.control_socket,
                uid=uid,
                gid=gid,
                subcontainer=self.is_subcontainer,
                mapped=mapped,
            )
        except BaseException:
            pending.abort()
            raise

    def _start_gofer(self, sandbox: Sandbox) -> None:
        """Start a gofer for a container recorded without one, and record it (under the
        lock)."""
        pending = PendingGofer(None, self.id)
        serving = self._hand_over_gofer(pending, sandbox)
        if serving is None:
            raise InvalidStateError("use the files of", self.id, str(Status.STOPPED))
        self._record = attrs.evolve(self._record, gofer=serving.identity)
        self._store.save(self._record)

    def _locked(
        self, *, corrupt_ok: bool = False, updates: bool = True, lock_timeout: float | None = None
    ) -> _Locked:
        return _Locked(self, corrupt_ok=corrupt_ok, updates=updates, lock_timeout=lock_timeout)

    def _destroy_timeout(self) -> float:
        return configured_timeout(self._record, "destroy_timeout", 10.0)

    def _hooks(self, phase: str) -> builtins.list[dict[str, Any]]:
        hooks = self._record.spec.get("hooks") or {}
        found = hooks.get(phase) if isinstance(hooks, dict) else None
        if found is None:
            return []
        if not isinstance(found, builtins.list) or not all(isinstance(h, dict) for h in found):
            # (validated at creation: the record was altered on disk since)
            raise CorruptMetadataError(self.id, f"its spec's {phase} hooks are not a list")
        return found

    def _state_dict(self, status: Status, pid: int | None = None) -> dict[str, Any]:
        sandbox = self.sandbox
        if pid is None and sandbox is not None and status is not Status.STOPPED:
            pid = sandbox.pid
        return OCIState(
            oci_version=DEFAULT_OCI_VERSION,
            id=self.id,
            status=status,
            pid=pid,
            bundle=self.bundle,
            annotations=dict(self._record.annotations),
        ).to_dict()

    def _run_runtime_hooks(self, sandbox: Sandbox) -> dict[str, Any]:
        state = self._state_dict(Status.CREATING, pid=sandbox.pid)
        for phase in ("prestart", "createRuntime"):
            hooks.run_hooks(
                self._hooks(phase), state, phase=phase, container_id=self.id, cwd=self.bundle
            )
        return state

    def _hand_over_console(self, master: int, console: socket.socket | None) -> None:
        os.set_inheritable(master, False)  # received over SCM_RIGHTS without close-on-exec
        if console is None:
            self.console = PtyMaster(master)
            return
        try:
            socket.send_fds(console, [b"/dev/ptmx"], [master])
        except OSError as exc:
            problem = f"cannot send the console to {console.getpeername()}: {exc}"
            raise InvalidArgumentError(self.id, problem) from None
        finally:
            os.close(master)


class _Locked:
    """Holds the container's lock and yields its freshly loaded sandbox; with
    ``corrupt_ok``, a stored record that cannot be read leaves the container its own
    (read before: what a destroy then tears down)."""

    def __init__(
        self,
        container: Container,
        *,
        corrupt_ok: bool = False,
        updates: bool = True,
        lock_timeout: float | None = None,
    ) -> None:
        self._container = container
        self._corrupt_ok = corrupt_ok
        #: Whether an update a dead caller left half-way is finished (not in a destroy).
        self._updates = updates
        timeout = configured_timeout(container._record, "lock_timeout", None)  # None: the store's
        if lock_timeout is not None:  # (at most that: a waiter's own time)
            timeout = lock_timeout if timeout is None else min(timeout, lock_timeout)
        self._lock = container._store.lock(container.id, timeout=timeout)

    def __enter__(self) -> Sandbox | None:
        self._lock.__enter__()
        try:
            try:
                self._container._refresh()
            except CorruptMetadataError as exc:
                if not self._corrupt_ok:
                    raise
                log.warning("%s: the record read before is used", exc)
            self._container._finish_pending(updates=self._updates)
        except ContainerNotFoundError as exc:
            # Gone: drop the lock file this lock just made, as destroy did.
            self._container._store.delete(self._container.id)
            self._lock.__exit__(type(exc), exc, exc.__traceback__)
            raise
        except BaseException as exc:
            self._lock.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self._container.sandbox

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)  # type: ignore[arg-type]


def _settle(launcher: Launcher | None) -> None:
    """Let ``launcher`` (the default one for ``None``) do the work it put off while a
    container was being made, if it has such a ``settle()`` (decision 53). What that
    raises is logged: the operation it follows is over, and may be failing already."""
    settle = getattr(launcher if launcher is not None else default_launcher(), "settle", None)
    if callable(settle):
        try:
            settle()
        except Exception as exc:
            log.warning("the launcher's settle() failed: %s: %s", type(exc).__name__, exc)


def _controllers(cgroup: Cgroup) -> frozenset[str] | None:
    """The v1 controllers of the hierarchies ``cgroup`` is in (``None`` on cgroup v2,
    where it has every controller its parent gives)."""
    if cgroup.driver != "v1":
        return None
    return frozenset(c for placement in cgroup.placements for c in placement.controllers)


def _process_pid(container_id: str, pid: int) -> int:
    """``pid`` as a process's pid: never 0 or less (a process group, or "the init" to the
    supervisor's protocol)."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"a pid must be an int, not {type(pid).__name__}")
    if not 0 < pid <= _PID_MAX_LIMIT:
        raise ProcessNotFoundError(container_id, pid)
    return pid


#: No pid is above this (the kernel's ``PID_MAX_LIMIT``, 2**22 on 64-bit machines).
_PID_MAX_LIMIT = 2**22
