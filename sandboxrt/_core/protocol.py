"""The typed messages between the library and the sandbox supervisor.

Pure data: frozen dataclasses that turn into JSON objects and back. The
socket code that carries them (with file descriptors alongside) is in
``sandboxrt._os.channel``. Standard library only: the supervisor imports it.

Two conversations use these types:

* bootstrap, over a socket pair made at launch: the library sends a
  :class:`SandboxPlan` with the init's stdio fds; the launched process answers
  with :class:`Launched` (the supervisor's host pid), then the supervisor
  reports :class:`Progress` steps until the container is created;
* control, over the sandbox's Unix socket: one :class:`Request` a message,
  one :class:`Reply` each.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Self, TypeVar

from sandboxrt._core import abi

__all__ = [
    "DEFAULT_UMASK",
    "EXEC_EXITS_FILE",
    "EXEC_EXITS_KEPT",
    "MAX_MESSAGE",
    "PROCESS_FIELDS",
    "CapabilityPlan",
    "Claim",
    "ContainerPlan",
    "DevicePlan",
    "ExecExits",
    "ExecPlan",
    "ExitStatus",
    "InitPlan",
    "Launched",
    "MountPlan",
    "ProcessPlan",
    "Progress",
    "Reply",
    "Request",
    "SandboxPlan",
    "SeccompPlan",
    "decode",
    "encode",
    "register",
]

#: The umask of a container process whose spec sets none (runc's, and the file API's).
DEFAULT_UMASK = 0o022

#: The largest message either side accepts, in bytes.
MAX_MESSAGE = 4 * 1024 * 1024

T = TypeVar("T", bound="_Message")


class _Message:
    """Mixin: JSON encoding of a (nested) frozen dataclass."""

    kind: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        data = _plain_dataclass(type(self), self)
        data["kind"] = self.kind
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Self:
        return typing.cast("Self", _build(cls, data))


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data: like ``dataclasses.asdict``, without its deep copies."""
    names = _NAMES.get(type(value))
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _NAMES[type(value)] = [f.name for f in dataclasses.fields(value)]
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


#: The field names of every dataclass :func:`_plain` met.
_NAMES: dict[type[Any], list[str]] = {}


def _plain_dataclass(cls: type[Any], value: Any) -> dict[str, Any]:
    """A dataclass ``value`` of type ``cls`` as JSON-ready data, through encoders made
    once per field from its type (see :func:`_encoder`): what JSON takes as it is
    (strings, numbers, lists and tuples of them) is not copied."""
    fields = _ENCODERS.get(cls)
    if fields is None:
        hints = _hints(cls)
        fields = _ENCODERS[cls] = [
            (f.name, _encoder(hints[f.name])) for f in dataclasses.fields(cls)
        ]
    return {
        name: getattr(value, name) if encode is None else encode(getattr(value, name))
        for name, encode in fields
    }


#: Per dataclass: its fields and the encoder of each (None: taken as it is).
_ENCODERS: dict[type[Any], list[tuple[str, Callable[[Any], Any] | None]]] = {}
_AS_IS = (str, int, float, bool, type(None))


def _encoder(hint: Any) -> Callable[[Any], Any] | None:
    """What makes a value of type ``hint`` JSON-ready; None when JSON takes it as it is.
    Types it cannot see into (``Any``, ``object``) go through :func:`_plain`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _AS_IS:
        return None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return functools.partial(_plain_dataclass, hint)
    if origin in (list, tuple, collections.abc.Sequence) and args:
        items = [_encoder(a) for a in args if a is not Ellipsis]
        if all(item is None for item in items):
            return None
        if len(items) == 1 and items[0] is not None:
            item = items[0]
            return lambda value: [item(v) for v in value]
    str_keys = origin in (dict, collections.abc.Mapping) and args[:1] == (str,)
    if str_keys and _encoder(args[1]) is None:
        return None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        encoders = [_encoder(a) for a in inner]
        if all(e is None for e in encoders):
            return None
        if len(inner) == 1 and encoders[0] is not None:
            one = encoders[0]
            return lambda value: None if value is None else one(value)
    return _plain


def _build(cls: type[Any], data: Any) -> Any:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    fields = _FIELDS.get(cls)
    if fields is None:
        hints = _hints(cls)
        fields = [(f.name, _converter(hints[f.name])) for f in dataclasses.fields(cls)]
        _FIELDS[cls] = fields
    kwargs = {}
    for name, convert in fields:
        if name in data:
            kwargs[name] = convert(data[name])
    return cls(**kwargs)


#: Per dataclass: its fields and the converter of each (see :func:`_converter`).
_FIELDS: dict[type[Any], list[tuple[str, Callable[[Any], Any]]]] = {}


def _same(value: Any) -> Any:
    return value


def _converter(hint: Any) -> Callable[[Any], Any]:
    """What turns a decoded JSON value into a value of type ``hint`` (made once per hint):
    nested dataclasses are built, lists converted item by item, anything else kept."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return functools.partial(_build, hint)
    if origin in (list, tuple) and args:
        item = _converter(args[0])
        if item is _same:
            return _same
        return lambda value: [item(v) for v in value] if isinstance(value, list) else value
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            return _same
        one = _converter(inner[0])
        return _same if one is _same else lambda value: None if value is None else one(value)
    return _same


@dataclasses.dataclass(frozen=True)
class MountPlan:
    """One mount, ready for ``mount(2)``: options already parsed."""

    destination: str
    type: str
    source: str
    flags: int = 0
    data: str = ""
    propagation: list[int] = dataclasses.field(default_factory=list)
    bind: bool = False
    #: A bind mount's source as a detached mount (``open_tree``, made on the host side):
    #: its index among the tree fds that follow the init's stdio (see
    #: :meth:`InitPlan.tree_sources`); -1: bind ``source`` by path.
    tree: int = -1
    #: ``MOUNT_ATTR_*`` the recursive options (``rro``...) set and clear, on the mount and
    #: every mount beneath it.
    attr_set: int = 0
    attr_clr: int = 0


@dataclasses.dataclass(frozen=True)
class DevicePlan:
    """A device node to create in the container's /dev."""

    path: str
    type: str
    major: int
    minor: int
    mode: int = 0o666
    uid: int = 0
    gid: int = 0


@dataclasses.dataclass(frozen=True)
class CapabilityPlan:
    """The five capability sets of the container's process, as capability numbers."""

    bounding: list[int] = dataclasses.field(default_factory=list)
    effective: list[int] = dataclasses.field(default_factory=list)
    inheritable: list[int] = dataclasses.field(default_factory=list)
    permitted: list[int] = dataclasses.field(default_factory=list)
    ambient: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class SeccompPlan:
    """``linux.seccomp`` compiled in the library: the init loads it with ``seccomp(2)``."""

    #: The classic BPF program (``struct sock_filter[]``, 8 bytes each), in hex.
    bpf: str
    #: ``SECCOMP_FILTER_FLAG_*`` bits from ``linux.seccomp.flags``.
    flags: int = 0
    #: Load before the init drops any privilege: without ``no_new_privs``, installing a
    #: filter needs ``CAP_SYS_ADMIN``. Otherwise it goes in last, just before ``execve``.
    early: bool = False
    #: A rule answers some system call with success without running it (``SCMP_ACT_ERRNO``
    #: with ``errnoRet`` 0): an exec agent, which spawns under the profile, could not tell
    #: its own steps (``chdir``, ``setsid``) done, so such execs go the slow way.
    pretends: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcessPlan:
    """A process to become, derived from the spec's ``process``: what the container's init
    and every exec'd process apply the same way (``sandboxrt._proc.init``)."""

    args: list[str]
    env: list[str] = dataclasses.field(default_factory=list)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = dataclasses.field(default_factory=list)
    #: ``process.user.umask``; unset, :data:`DEFAULT_UMASK`.
    umask: int | None = None
    rlimits: list[list[Any]] = dataclasses.field(default_factory=list)
    oom_score_adj: int | None = None
    #: ``process.ioPriority`` as ``ioprio_set(2)`` takes it (class << 13 | priority).
    io_priority: int | None = None
    #: ``process.scheduler`` as ``sched_setattr(2)`` takes it: policy, flags, nice,
    #: priority, runtime, deadline, period.
    scheduler: list[int] | None = None
    no_new_privileges: bool = False
    terminal: bool = False
    #: ``process.consoleSize`` as ``[rows, columns]`` of the terminal; empty: not given.
    console_size: list[int] = dataclasses.field(default_factory=list)
    #: None leaves the process's capabilities as they are; a plan from a spec always has one.
    capabilities: CapabilityPlan | None = None
    #: None: no seccomp filter.
    seccomp: SeccompPlan | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecPlan(ProcessPlan, _Message):
    """A process to run in a living container (``Container.exec``): the container's
    ``process`` with the caller's overrides. The supervisor forks it into the init's
    namespaces; it applies the plan as the init does and execs."""

    kind: ClassVar[str] = "exec-plan"

    #: A user to look up in the container's own ``/etc/passwd`` and ``/etc/group`` once the
    #: process is in its root (``"name"``, ``"uid"``, ``"name:group"``, ``"uid:gid"``...,
    #: see ``sandboxrt._core.users``); the result replaces ``uid``, ``gid`` and
    #: ``additional_gids``. Empty: those are used as they are.
    user: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class InitPlan(ProcessPlan, _Message):
    """Everything the container's init needs, derived from the spec."""

    kind: ClassVar[str] = "init-plan"

    container_id: str
    rootfs: str
    readonly_root: bool = False
    #: Bytes: the root is an overlay of the rootfs (read-only lower) and a tmpfs of this
    #: size (upper); 0: the rootfs itself is the root.
    overlay_size: int = 0
    mounts: list[MountPlan] = dataclasses.field(default_factory=list)
    devices: list[DevicePlan] = dataclasses.field(default_factory=list)
    default_devices: bool = True
    sysctl: dict[str, str] = dataclasses.field(default_factory=dict)
    masked_paths: list[str] = dataclasses.field(default_factory=list)
    readonly_paths: list[str] = dataclasses.field(default_factory=list)
    rootfs_propagation: int = 0
    #: Stop after the mounts so the library can run prestart/createRuntime hooks.
    pause_for_hooks: bool = False
    create_container_hooks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    start_container_hooks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: The ``cgroup.procs`` file of the container's cgroup in every hierarchy (host paths,
    #: a subcontainer's: their directories come as fds with the plan). The init and every
    #: exec'd process join it first thing after the fork, through files the supervisor
    #: opens beneath those, so all the container's processes are born inside; the
    #: supervisor stays outside, and keeps serving while the container is frozen.
    cgroup_procs: list[str] = dataclasses.field(default_factory=list)
    #: The library makes the cgroup while the sandbox starts, and sends it in a
    #: ``cgroup`` :class:`Progress` step (its ``cgroup.procs`` files named, their
    #: directories as ``O_PATH`` fds) or cancels, once it is made: the init joins it
    #: after its mounts, before ``pivot_root`` (and before the prestart hooks, or
    #: reporting ``created``).
    await_cgroup: bool = False
    #: Start the program as soon as the container is created (``run``): the init goes on
    #: to exec after ``created``, with no start request; the supervisor reports
    #: ``started`` (or ``error``) right after ``created``.
    autostart: bool = False
    #: The rootfs comes as a detached mount (tree 0, made on the host side, like the
    #: bind mounts' trees): the init attaches it and never resolves :attr:`rootfs`.
    rootfs_tree: bool = False

    def root_key(self) -> dict[str, Any]:
        """What shapes the container's root (every field but :data:`PROCESS_FIELDS`): two
        plans with equal keys build the same root from the same host files."""
        key = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in PROCESS_FIELDS
        }
        if self.readonly_root:  # its cwd is made before the root turns read-only
            key["cwd"] = self.cwd
        return key

    def tree_sources(self) -> list[tuple[str, bool]]:
        """``(host path, recursive)`` of each detached mount the init gets after its stdio
        fds, in order: the rootfs (with :attr:`rootfs_tree`), then the bind sources that
        name a tree, by :attr:`MountPlan.tree`."""
        binds = sorted((m for m in self.mounts if m.tree >= 0), key=lambda m: m.tree)
        found = [(self.rootfs, True)] if self.rootfs_tree else []
        return found + [(m.source, bool(m.flags & abi.MS_REC)) for m in binds]

    def speculative(self) -> InitPlan:
        """This plan's root alone, to build ahead of a plan like it (no cgroup, no hooks)."""
        return dataclasses.replace(self, cgroup_procs=[], await_cgroup=False)


#: The fields of an :class:`InitPlan` that shape the process, not the root it runs in.
#: A root built ahead for one plan (``supervisor.warm``) serves another whose fields
#: differ in these only; a field added to the plan shapes the root until listed here.
PROCESS_FIELDS = frozenset(
    {field.name for field in dataclasses.fields(ProcessPlan)}
    | {"container_id", "start_container_hooks", "cgroup_procs", "await_cgroup", "autostart"}
)


@dataclasses.dataclass(frozen=True)
class SandboxPlan(_Message):
    """What a new sandbox must be: its namespaces, identity and first container."""

    kind: ClassVar[str] = "sandbox-plan"

    sandbox_id: str
    runtime_dir: str
    control_socket: str
    exit_file: str
    #: ``[type, path]`` pairs: an empty path makes a new namespace, a path joins one.
    namespaces: list[list[str]]
    init: InitPlan
    hostname: str | None = None
    domainname: str | None = None
    #: With a new user namespace: its ``uid_map`` and ``gid_map`` (text as the kernel
    #: takes it), written before any other namespace is made, so that all are its; with
    #: one joined by path, what the spec says its maps are (checked once joined).
    uid_map: str = ""
    gid_map: str = ""
    #: ``linux.timeOffsets`` as ``/proc/PID/timens_offsets`` takes them (with a new time
    #: namespace): written before any process enters it.
    time_offsets: str = ""
    #: The sandbox ends with its creator: when the socket it was launched on closes (the
    #: creating process exited, however), its containers are killed (a ``MemoryStore``'s,
    #: which no other process can reach; ``run``'s are, by its exit-status socket). Then,
    #: as no one else knows them, the supervisor removes what the creator's destroy would
    #: have: the containers' cgroups (the levels named by the ``cgroup`` step's
    #: ``orphaned``, and :attr:`ContainerPlan.cgroup_orphaned`) and its runtime directory.
    tied: bool = False
    #: With :attr:`tied`: the runtime directory's parent is the creator's own (a
    #: ``MemoryStore``'s temporary directory), with this lock file in it, which the
    #: processes that may use the store hold (``stores.memory_dirs``): removed too, once
    #: nothing else is left in it and none holds it.
    runtime_root_lock: str = ""


@dataclasses.dataclass(frozen=True)
class ContainerPlan(_Message):
    """A container joining a living sandbox (a pod's subcontainer).

    It shares the sandbox's PID, network, IPC and UTS namespaces; its init,
    forked by the supervisor on a ``create-container`` request, makes a mount
    namespace of its own (and a cgroup namespace, when asked) as a root
    container's init does.
    """

    kind: ClassVar[str] = "container-plan"

    sandbox_id: str
    init: InitPlan
    #: Where the supervisor records the container's exit status (atomic JSON).
    exit_file: str
    new_cgroup_namespace: bool = False
    #: A detached copy of the host's root comes last with the request (after the stdio
    #: fds, the trees and an ``O_PATH`` fd of each of ``init.cgroup_procs``' directories):
    #: the supervisor's root is minimal (decision 33), and createContainer hooks or a
    #: rootfs by path need the host's view.
    host_tree: bool = False
    #: For each of ``init.cgroup_procs``, the names of the cgroup's levels (bottom up)
    #: that the supervisor of a ``tied`` sandbox removes once its creator is gone (see
    #: :attr:`SandboxPlan.tied`).
    cgroup_orphaned: list[list[str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Launched(_Message):
    """The launched process forked the supervisor: its pid on the host, and its start
    time (``/proc/PID/stat`` field 22), read by its parent while it could not be reaped."""

    kind: ClassVar[str] = "launched"

    pid: int
    start_ticks: int = 0
    #: From the fork server, unasked: a warm gofer (its bootstrap socket alongside), not a
    #: warm sandbox.
    gofer: bool = False


@dataclasses.dataclass(frozen=True)
class Progress(_Message):
    """A step of sandbox creation, or its failure.

    ``step`` is ``"mounted"`` (runtime hooks may run now), ``"created"`` (init
    waits for start; a pty master may come with it) or ``"error"``; from the
    library, ``"cgroup"`` (``details["procs"]``: the cgroup to join, see
    :attr:`InitPlan.await_cgroup`), ``"go"`` or ``"cancel"``. Between the init and
    the supervisor only: ``"overlay"``, with an fd on the overlay root's upper
    directory, which the supervisor keeps.
    """

    kind: ClassVar[str] = "progress"

    step: str
    error: str = ""
    error_type: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Claim(_Message):
    """To an init that built its root ahead (``warm.RootAhead``): go on as ``plan``'s.

    The first ``cgroup_fds`` fds alongside are the cgroup files it joins by itself (the
    rest, its stdio); ``cgroupns``: it then makes a cgroup namespace. One message, so
    that the init wakes once.
    """

    kind: ClassVar[str] = "claim"

    plan: InitPlan
    cgroup_fds: int = 0
    cgroupns: bool = False


#: Where (in the runtime directory's ``exits``) a supervisor records :class:`ExecExits`:
#: a name no container's exit file takes.
EXEC_EXITS_FILE = "execs"
#: The most statuses it records there (the latest): with ids of 1024 characters, some
#: 4.3 MB.
EXEC_EXITS_KEPT = 4096


@dataclasses.dataclass(frozen=True)
class ExecExits(_Message):
    """The exit statuses of exec'd processes a supervisor still kept when its sandbox
    ended, each ``(serial, pid, container id, returncode)`` (pid 0: a later exec of the
    same container was given that pid)."""

    kind: ClassVar[str] = "exec-exits"

    exits: tuple[tuple[int, int, str, int], ...] = ()

    def status_of(self, container_id: str, pid: int, serial: int) -> int | None:
        """The status of the exec with ``serial`` (``0``: the latest one with ``pid``)."""
        for kept_serial, kept_pid, owner, returncode in self.exits:
            if owner == container_id and (
                kept_serial == serial if serial else pid and kept_pid == pid
            ):
                return returncode
        return None


@dataclasses.dataclass(frozen=True)
class ExitStatus(_Message):
    """How a process ended, as ``subprocess`` reports it: ``-N`` for signal N."""

    kind: ClassVar[str] = "exit-status"

    returncode: int
    #: The process's pid in the sandbox's PID namespace (0: not recorded).
    pid: int = 0


@dataclasses.dataclass(frozen=True)
class Request(_Message):
    """A control request. ``op`` is one of :attr:`OPS`.

    ``upper`` asks for the overlay root's upper directory: the reply carries an
    fd on it (``O_RDONLY | O_DIRECTORY``), or fails with ``NoOverlay``.
    """

    kind: ClassVar[str] = "request"
    OPS: ClassVar[frozenset[str]] = frozenset(
        {
            "ping",
            "start",
            "wait",
            "signal",
            "exec",
            "launch",
            "prewarm",
            "prewarm-gofer",
            "gofers",
            "create-container",
            "destroy-container",
            "upper",
            "gofer",
            "root",
        }
    )

    op: str
    #: The container of the sandbox the request is about; empty: the root container.
    container_id: str = ""
    signal: int = 0
    all: bool = False
    #: The OCI state for hooks the supervisor runs on the library's behalf.
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: ``exec``: the process to run (its stdin, stdout, stderr fds come alongside, none
    #: with a terminal).
    exec: ExecPlan | None = None
    #: ``wait``/``signal``: this process (an exec'd one, or the init) rather than the init;
    #: a pid in the sandbox's PID namespace, as ``exec`` replied it. 0: the init.
    pid: int = 0
    #: ``signal`` with ``pid``: the process's whole process group (exec'd processes lead
    #: one of their own), so what it forked goes too.
    group: bool = False
    #: ``wait``: answer at once; ``returncode`` is None while the process runs.
    nohang: bool = False
    #: ``wait``/``signal`` with ``pid``: the exec's serial (its reply's ``serial`` detail),
    #: so that a pid the kernel gave another exec since is never taken for it; 0: the
    #: process that has ``pid`` now.
    serial: int = 0
    #: ``launch`` to the fork server: the next warm sandbox may build this plan's root
    #: ahead; to a warm sandbox: the host's mount table has not changed since it built
    #: a root ahead, so that root may serve (see ``supervisor.warm``).
    speculation: bool = False
    #: ``signal``: the foreground process group of the terminal that ``pid`` (the init
    #: when 0, or an exec'd process with a tty) holds, as ``tcgetpgrp`` names it.
    foreground: bool = False
    #: ``create-container``: the subcontainer to make (its stdio fds come alongside, none
    #: with a terminal). The supervisor answers with :class:`Progress` steps, as at launch.
    container: ContainerPlan | None = None

    def __post_init__(self) -> None:
        if self.op not in self.OPS:
            raise ValueError(f"unknown request {self.op!r}")


@dataclasses.dataclass(frozen=True)
class Reply(_Message):
    """The answer to one :class:`Request`."""

    kind: ClassVar[str] = "reply"

    ok: bool
    error: str = ""
    error_type: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    returncode: int | None = None
    #: ``exec``: the new process's pid in the sandbox's PID namespace (a pty master comes
    #: alongside when it has a terminal).
    pid: int = 0


_KINDS: dict[str, type[_Message]] = {
    cls.kind: cls
    for cls in (
        InitPlan,
        ExecPlan,
        SandboxPlan,
        ContainerPlan,
        Launched,
        Progress,
        Claim,
        ExecExits,
        ExitStatus,
        Request,
        Reply,
    )
}


def _resolve_hints(cls: type[Any]) -> None:
    for hint in _hints(cls).values():
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
                _resolve_hints(candidate)


# Resolved once here, so that processes forked from a warm fork server (supervisors,
# inits) do not evaluate annotations again at their first message.
for _cls in _KINDS.values():
    _resolve_hints(_cls)


def register(*classes: type[_Message]) -> None:
    """Make more message types known to :func:`decode` (another conversation's messages)."""
    for cls in classes:
        if _KINDS.setdefault(cls.kind, cls) is not cls:
            raise ValueError(f"message kind {cls.kind!r} is taken")
        _resolve_hints(cls)


def encode(message: _Message) -> bytes:
    """One message as the bytes of one datagram."""
    return json.dumps(message.to_wire(), separators=(",", ":")).encode()


def decode(raw: bytes, expected: type[T]) -> T:
    """Parse one datagram; ``ValueError`` unless it is a well-formed ``expected``."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON message: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("a message must be a JSON object")
    kind = data.pop("kind", None)
    if not isinstance(kind, str) or _KINDS.get(kind) is not expected:
        raise ValueError(f"expected a {expected.kind!r} message, got {kind!r}")
    try:
        return expected.from_wire(data)
    except TypeError as exc:
        raise ValueError(f"malformed {expected.kind!r} message: {exc}") from exc
