"""From an OCI spec to the plan a sandbox and its init carry out. Pure."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os.path
import posixpath
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from sandboxrt._core import idmap
from sandboxrt._core.abi import SCHED_FLAGS, SCHED_POLICIES, SECCOMP_FILTER_FLAGS
from sandboxrt._core.mount_options import PROPAGATION, UNSUPPORTED_OPTIONS, parse_mount_options
from sandboxrt._core.protocol import (
    CapabilityPlan,
    ContainerPlan,
    DevicePlan,
    ExecPlan,
    InitPlan,
    MountPlan,
    ProcessPlan,
    SandboxPlan,
    SeccompPlan,
)
from sandboxrt._core.spec_default import check_args
from sandboxrt._core.spec_validate import CAPABILITY_NUMBERS, c_string_problem, sysctl_problems
from sandboxrt._core.users import MAX_ID, parse_user_spec
from sandboxrt.errors import MissingFeatureError, SpecError

log = logging.getLogger("sandboxrt")

__all__ = [
    "EXITS_DIR",
    "SeccompCompiler",
    "UserArg",
    "build_container_plan",
    "build_plan",
    "container_exit_file",
    "control_socket_path",
    "exec_plan",
    "gofer_log",
    "gofer_socket",
    "id_file_name",
    "sandbox_paths",
]

#: Compiles a spec's ``linux.seccomp`` to classic BPF (``struct sock_filter[]`` bytes).
#: The pure core cannot: the library passes ``sandboxrt._os.seccomp.compile_bpf``.
SeccompCompiler = Callable[[Mapping[str, Any]], bytes]


def id_file_name(container_id: str) -> str:
    """``container_id`` as a file name (at most 40 characters): long ids are cut and
    get a hash of the whole, after a ``~``, which no id may hold: a short id can never
    name the files of a long one."""
    if len(container_id) <= 40:
        return container_id
    return container_id[:24] + "~" + hashlib.sha256(container_id.encode()).hexdigest()[:15]


#: The directory of a sandbox's runtime directory where its supervisor records exit
#: statuses: the only place it writes, and in a user namespace of its own, the only one
#: its root owns (the runtime directory stays the host root's).
EXITS_DIR = "exits"


def sandbox_paths(runtime_root: str, sandbox_id: str) -> tuple[str, str, str]:
    """``(runtime_dir, control_socket, exit_file)`` of a sandbox under ``runtime_root``."""
    runtime_dir = os.path.join(runtime_root, id_file_name(sandbox_id))
    exit_file = container_exit_file(runtime_dir, sandbox_id, sandbox_id)
    return runtime_dir, control_socket_path(runtime_dir), exit_file


def control_socket_path(runtime_dir: str) -> str:
    """The supervisor's control socket, in its sandbox's runtime directory."""
    return os.path.join(runtime_dir, "ctl")


def container_exit_file(runtime_dir: str, sandbox_id: str, container_id: str) -> str:
    """Where the exit status of container ``container_id`` of a sandbox is recorded, in
    :data:`EXITS_DIR`: ``exit`` for the root container (whose id is the sandbox's),
    ``exit-<id>`` else."""
    name = "exit" if container_id == sandbox_id else "exit-" + id_file_name(container_id)
    return os.path.join(runtime_dir, EXITS_DIR, name)


def gofer_socket(runtime_dir: str, container_id: str) -> str:
    """Where the gofer of ``container_id`` listens, in its sandbox's runtime directory:
    one per container of a pod, and short enough for ``sun_path`` whatever the id."""
    return _gofer_file(runtime_dir, container_id, "sock")


def gofer_log(runtime_dir: str, container_id: str) -> str:
    """Where the gofer of ``container_id`` writes what went wrong, beside its socket."""
    return _gofer_file(runtime_dir, container_id, "log")


def _gofer_file(runtime_dir: str, container_id: str, suffix: str) -> str:
    digest = hashlib.sha256(container_id.encode()).hexdigest()[:12]
    return os.path.join(runtime_dir, f"gofer-{digest}.{suffix}")


def _mount_plan(mount: Mapping[str, Any], bundle: str) -> MountPlan:
    kind = mount.get("type") or ""
    unsupported = sorted(UNSUPPORTED_OPTIONS.intersection(mount.get("options") or []))
    if mount.get("uidMappings") or mount.get("gidMappings"):
        raise MissingFeatureError(
            f"idmapped mounts (uidMappings, gidMappings on {mount['destination']})",
            "leave the mappings out of the spec",
            unsupported=True,
        )
    if unsupported:
        raise MissingFeatureError(
            f"the mount option {', '.join(unsupported)} (on {mount['destination']})",
            "leave it out of the spec",
            unsupported=True,
        )
    options = parse_mount_options(mount.get("options") or [], kind)
    source = mount.get("source") or ""
    if options.is_bind and source and not source.startswith("/"):
        source = os.path.join(bundle, source)
    return MountPlan(
        # Normalised: "//dev" or "/dev/." is /dev (which a bind leaves without defaults).
        destination="/" + posixpath.normpath(mount["destination"]).lstrip("/"),
        type="bind" if options.is_bind else kind,
        source=source,
        flags=options.flags,
        data=options.data,
        propagation=list(options.propagation),
        bind=options.is_bind,
        attr_set=options.attr_set,
        attr_clr=options.attr_clr,
    )


def _capability_plan(caps: Mapping[str, Any] | None) -> CapabilityPlan:
    """The five sets as numbers; absent capabilities are five empty sets (as runc).

    An unknown name is left out, with a warning, as OCI asks ("Runtimes SHOULD NOT
    fail"). Sets the kernel could never grant are a ``SpecError``: an inheritable
    capability outside the bounding set, an ambient one not both permitted
    and inheritable.
    """
    caps = caps or {}
    problems: list[tuple[str, str]] = []
    sets: dict[str, list[int]] = {}
    for key in _CAPABILITY_SETS:
        numbers = set()
        for i, name in enumerate(caps.get(key) or []):
            if name in CAPABILITY_NUMBERS:
                numbers.add(CAPABILITY_NUMBERS[name])
            else:
                where = f"process.capabilities.{key}[{i}]"
                log.warning("%s: unknown capability %r left out", where, name)
        sets[key] = sorted(numbers)
    for i, name in enumerate(caps.get("inheritable") or []):
        if name in CAPABILITY_NUMBERS and CAPABILITY_NUMBERS[name] not in sets["bounding"]:
            where = f"process.capabilities.inheritable[{i}]"
            problems.append((where, f"{name} is not in the bounding set"))
    for i, name in enumerate(caps.get("effective") or []):
        if name in CAPABILITY_NUMBERS and CAPABILITY_NUMBERS[name] not in sets["permitted"]:
            where = f"process.capabilities.effective[{i}]"
            problems.append((where, f"{name} is not in the permitted set"))
    raisable = set(sets["permitted"]) & set(sets["inheritable"])
    for i, name in enumerate(caps.get("ambient") or []):
        if name in CAPABILITY_NUMBERS and CAPABILITY_NUMBERS[name] not in raisable:
            where = f"process.capabilities.ambient[{i}]"
            problems.append((where, f"{name} must be in the permitted and inheritable sets too"))
    if problems:
        raise SpecError(problems)
    return CapabilityPlan(**sets)


#: The capability sets of ``process.capabilities``.
_CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def _console_size(size: Mapping[str, Any] | None) -> list[int]:
    """``process.consoleSize`` as ``[rows, columns]``; empty when not given (or 0x0)."""
    if not size or not (size.get("height") or size.get("width")):
        return []
    return [int(size.get("height") or 0), int(size.get("width") or 0)]


def _rlimit_value(value: int) -> int:
    """An rlimit as ``setrlimit`` takes it from Python: ``RLIM_INFINITY`` (2**64-1, what
    Docker writes for "unlimited") is -1 there; no limit of 2**63 or more differs from
    it in the kernel, and Python cannot pass one (a signed 64-bit value)."""
    return -1 if value >= 2**63 else value


def _refuse_host_sysctls(
    spec: Mapping[str, Any], container_id: str, owned: Collection[str], whose: str
) -> None:
    """A ``SpecError`` for sysctls of a namespace the container does not really own: the
    spec's check saw its ``linux.namespaces``, but ``Config(network="host")`` drops its
    network namespace, and a pod's container runs in its sandbox's namespaces."""
    sysctls = (spec.get("linux") or {}).get("sysctl") or {}
    problems = sysctl_problems(sysctls, owned, whose=whose)
    if problems:
        raise SpecError(problems, source=f'container "{container_id}"')


def _refuse_ptrace(spec: Mapping[str, Any], container_id: str, *, pod: bool = False) -> None:
    """A ``SpecError`` if the container's processes could hold ``CAP_SYS_PTRACE``.

    They share a PID namespace with the supervisor, which keeps the runtime's
    capabilities and fds on host directories (its runtime directory, its cgroups, the
    standard library's). Making it not dumpable keeps out only those without
    ``CAP_SYS_PTRACE``: with it, ``/proc/<its pid>/fd`` opens those directories, and
    ``PTRACE_ATTACH`` runs code as the supervisor. Any set counts, the bounding set
    too: a process of uid 0 gets the bounding set as it execs. ``pod``: a container
    joining a sandbox, whose namespaces its root decided.
    """
    caps = (spec.get("process") or {}).get("capabilities") or {}
    sets = [key for key in _CAPABILITY_SETS if "CAP_SYS_PTRACE" in (caps.get(key) or [])]
    if not sets:
        return
    way_out = "" if pod else ", or share the host's PID namespace"
    problem = (
        f"CAP_SYS_PTRACE (in {', '.join(sets)}) would let the container's processes reach "
        "into the sandbox's supervisor, which shares their PID namespace and holds the "
        f"runtime's privileges and fds on host directories: drop it{way_out}"
    )
    raise SpecError([("process.capabilities", problem)], source=f'container "{container_id}"')


def _seccomp_plan(
    seccomp: Mapping[str, Any] | None, *, no_new_privileges: bool, compile_seccomp: SeccompCompiler
) -> SeccompPlan | None:
    if not seccomp:
        return None
    if seccomp.get("defaultAction") == "SCMP_ACT_NOTIFY" or any(
        rule.get("action") == "SCMP_ACT_NOTIFY" for rule in seccomp.get("syscalls") or []
    ):
        raise MissingFeatureError(
            "seccomp user notification (SCMP_ACT_NOTIFY)",
            "a listener for it is missing",
            unsupported=True,
        )
    flags = 0
    for flag in seccomp.get("flags") or []:
        flags |= SECCOMP_FILTER_FLAGS[flag]
    rules = seccomp.get("syscalls") or []
    pretends = (
        seccomp.get("defaultAction") == "SCMP_ACT_ERRNO" and seccomp.get("defaultErrnoRet") == 0
    ) or any(rule.get("action") == "SCMP_ACT_ERRNO" and rule.get("errnoRet") == 0 for rule in rules)
    return SeccompPlan(
        bpf=compile_seccomp(seccomp).hex(),
        flags=flags,
        early=not no_new_privileges,
        pretends=pretends,
    )


#: The ``IOPRIO_CLASS_*`` values of ``ioprio_set(2)``.
_IO_PRIORITY_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}


def _io_priority(value: Mapping[str, Any] | None) -> int | None:
    """``process.ioPriority`` (checked by the spec's validation) as ``ioprio_set`` takes it."""
    if not value:
        return None
    return _IO_PRIORITY_CLASSES[value["class"]] << 13 | int(value.get("priority", 0))


def _scheduler(value: Mapping[str, Any] | None) -> list[int] | None:
    """``process.scheduler`` (checked by the spec's validation) as ``sched_setattr`` takes it."""
    if not value:
        return None
    flags = 0
    for name in value.get("flags") or ():
        flags |= SCHED_FLAGS[name]
    fields = ("nice", "priority", "runtime", "deadline", "period")
    return [SCHED_POLICIES[value["policy"]], flags, *(int(value.get(k) or 0) for k in fields)]


def _process_plan(
    spec: Mapping[str, Any], args: Sequence[str], *, compile_seccomp: SeccompCompiler
) -> ProcessPlan:
    """The spec's ``process`` (with ``linux.seccomp``) as the plan a process applies to
    become it: shared by the container's init and every exec'd process."""
    process = spec.get("process") or {}
    user = process.get("user") or {}
    linux = spec.get("linux") or {}
    no_new_privileges = bool(process.get("noNewPrivileges", False))
    return ProcessPlan(
        args=list(args),
        env=list(process.get("env") or []),
        cwd=process.get("cwd") or "/",
        uid=int(user.get("uid", 0)),
        gid=int(user.get("gid", 0)),
        # (Each once, as runc gives them: the kernel keeps a list as it is given.)
        additional_gids=list(dict.fromkeys(int(g) for g in user.get("additionalGids") or [])),
        umask=user.get("umask"),
        rlimits=[
            [r["type"], _rlimit_value(r["soft"]), _rlimit_value(r["hard"])]
            for r in process.get("rlimits") or []
        ],
        oom_score_adj=process.get("oomScoreAdj"),
        io_priority=_io_priority(process.get("ioPriority")),
        scheduler=_scheduler(process.get("scheduler")),
        no_new_privileges=no_new_privileges,
        terminal=bool(process.get("terminal", False)),
        console_size=_console_size(process.get("consoleSize")),
        capabilities=_capability_plan(process.get("capabilities")),
        seccomp=_seccomp_plan(
            linux.get("seccomp"),
            no_new_privileges=no_new_privileges,
            compile_seccomp=compile_seccomp,
        ),
    )


def _fields(plan: ProcessPlan) -> dict[str, Any]:
    """The fields of a :class:`ProcessPlan`, to build one of its subclasses from it."""
    return {field.name: getattr(plan, field.name) for field in dataclasses.fields(ProcessPlan)}


#: Spec fields sandboxrt does not apply yet: a container given one would run without
#: what it asks for (a confinement, a time offset...), so it is refused, as runc refuses
#: an AppArmor profile on a host without AppArmor.
_UNSUPPORTED_FIELDS = (
    ("process", "apparmorProfile"),
    ("process", "selinuxLabel"),
    ("linux", "mountLabel"),
    ("linux", "intelRdt"),
    ("linux", "memoryPolicy"),
    ("linux", "netDevices"),
)


#: ``linux.resources`` fields no cgroup driver of sandboxrt writes yet: refused when they
#: ask for anything (runc refuses those its host cannot apply: hugetlb, rdma, unified on v1).
_UNAPPLIED_RESOURCES = (
    ("network",),
    ("rdma",),
    ("cpu", "realtimeRuntime"),
    ("cpu", "realtimePeriod"),
    ("memory", "kernelTCP"),
)


def _asks(value: Any) -> bool:
    """Whether a resource value asks for anything: not absent, zero, false or empty (as
    Docker writes ``"blockIO": {"weight": 0}`` for no weight)."""
    if isinstance(value, Mapping):
        return any(_asks(v) for v in value.values())
    return bool(value)


def _refuse_unsupported(
    container_id: str, process: Mapping[str, Any], linux: Mapping[str, Any]
) -> None:
    sections = {"process": process, "linux": linux}
    fields = [f"{part}.{key}" for part, key in _UNSUPPORTED_FIELDS if sections[part].get(key)]
    resources = linux.get("resources")
    for path in _UNAPPLIED_RESOURCES if isinstance(resources, Mapping) else ():
        value: Any = resources
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if _asks(value):
            fields.append(".".join(("linux.resources", *path)))
    personality = linux.get("personality")
    if personality and (personality.get("domain") != "LINUX" or personality.get("flags")):
        fields.append("linux.personality")  # (LINUX without flags is what every process has)
    if fields:
        raise MissingFeatureError(
            f'{", ".join(fields)} (container "{container_id}")',
            "leave it out of the spec",
            unsupported=True,
        )


def _init_plan(
    container_id: str,
    spec: Mapping[str, Any],
    bundle: str,
    *,
    compile_seccomp: SeccompCompiler,
    overlay_size: int = 0,
) -> InitPlan:
    process = spec.get("process") or {}
    linux = spec.get("linux") or {}
    _refuse_unsupported(container_id, process, linux)
    hooks = spec.get("hooks") or {}
    root = spec.get("root") or {}
    rootfs = root.get("path", "rootfs")
    if not rootfs.startswith("/"):
        rootfs = os.path.join(bundle, rootfs)
    if not process.get("args"):
        raise SpecError([("process.args", "expected a non-empty list of strings")])
    propagation = linux.get("rootfsPropagation")
    return InitPlan(
        **_fields(_process_plan(spec, process["args"], compile_seccomp=compile_seccomp)),
        container_id=container_id,
        rootfs=os.path.normpath(rootfs),
        readonly_root=bool(root.get("readonly", False)),
        overlay_size=overlay_size,
        mounts=[_mount_plan(m, bundle) for m in spec.get("mounts") or []],
        devices=[
            DevicePlan(
                path=d["path"],
                type=d["type"],
                major=d.get("major", 0),
                minor=d.get("minor", 0),
                mode=d.get("fileMode", 0o666),
                uid=d.get("uid", 0),
                gid=d.get("gid", 0),
            )
            for d in linux.get("devices") or []
        ],
        sysctl=dict(linux.get("sysctl") or {}),
        masked_paths=list(linux.get("maskedPaths") or []),
        readonly_paths=list(linux.get("readonlyPaths") or []),
        rootfs_propagation=PROPAGATION[propagation] if propagation else 0,
        pause_for_hooks=any(hooks.get(k) for k in ("prestart", "createRuntime", "createContainer")),
        create_container_hooks=list(hooks.get("createContainer") or []),
        start_container_hooks=list(hooks.get("startContainer") or []),
    )


#: What ``user`` of :func:`exec_plan` accepts: a uid, ``(uid, gid)``, or a
#: ``"user[:group]"`` string of names or ids (see ``sandboxrt._core.users``).
UserArg = int | str | tuple[int, int]


def _parse_user(user: UserArg) -> dict[str, Any]:
    """The plan fields a ``user`` sets: ``(uid, gid)`` exactly, anything else to be looked
    up in the container (``user``), with ids as fallbacks that the lookup replaces."""
    if isinstance(user, tuple):
        if len(user) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in user):
            raise TypeError(f"user as a tuple must be (uid, gid), not {user!r}")
        if not all(0 <= i <= MAX_ID for i in user):
            raise ValueError(f"user {user!r}: ids must be between 0 and {MAX_ID}")
        return {"uid": user[0], "gid": user[1], "additional_gids": [], "user": ""}
    if isinstance(user, bool) or not isinstance(user, int | str):
        raise TypeError(
            f"user must be a uid, (uid, gid) or a 'user[:group]' string, not {type(user).__name__}"
        )
    if isinstance(user, int) and not 0 <= user <= MAX_ID:
        raise ValueError(f"user {user!r}: ids must be between 0 and {MAX_ID}")
    ids = [int(p) if p.isascii() and p.isdigit() else 0 for p in parse_user_spec(str(user))]
    return {"uid": ids[0], "gid": ids[1], "additional_gids": [], "user": str(user)}


def _env_list(env: Mapping[str, str] | Sequence[str]) -> list[str]:
    if isinstance(env, str | bytes):
        raise TypeError("env must be a mapping or a sequence of 'KEY=value' strings")
    if isinstance(env, Mapping):
        for key, value in env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                kinds = f"{type(key).__name__}: {type(value).__name__}"
                raise TypeError(f"env keys and values must be str, not {kinds} ({key!r})")
        entries = [f"{key}={value}" for key, value in env.items()]
        bad = [f"{key}={value}" for key, value in env.items() if not key or "=" in key]
    else:
        entries = list(env)
        for entry in entries:
            if not isinstance(entry, str):
                raise TypeError(f"env entries must be str, not {type(entry).__name__}")
        bad = [e for e in entries if "=" not in e or e.startswith("=")]
    if bad or any("\0" in e for e in entries):
        raise ValueError(f"malformed environment entries: {bad or entries}")
    _check_encodable("env", entries)
    return entries


def _check_encodable(what: str, texts: Sequence[str]) -> None:
    """A ``ValueError`` for text no C string carries (:func:`c_string_problem`)."""
    for text in texts:
        problem = c_string_problem(text)
        if problem is not None:
            raise ValueError(f"{what} {text!r} {problem}")


def exec_plan(
    spec: Mapping[str, Any],
    args: Sequence[str],
    *,
    env: Mapping[str, str] | Sequence[str] | None = None,
    cwd: str | None = None,
    user: UserArg | None = None,
    terminal: bool = False,
    console_size: Sequence[int] | None = None,
    compile_seccomp: SeccompCompiler,
    base: ProcessPlan | None = None,
) -> ExecPlan:
    """The plan of a process exec'd into a container made from ``spec``.

    It is the spec's ``process`` (user, capabilities, ``noNewPrivileges``,
    seccomp, rlimits, umask, OOM score, env, cwd) with ``args`` and the
    caller's overrides: ``env`` replaces the spec's environment when given;
    ``cwd`` must be absolute; ``user`` replaces the spec's uid, gid and
    additional gids: ``(uid, gid)`` exactly, any other form (``1000``,
    ``"1000:1000"``, ``"nobody"``, ``"name:group"``) is looked up in the
    container's own ``/etc/passwd`` and ``/etc/group`` by the exec'd process,
    as ``runc exec --user`` does (``sandboxrt._core.users``). The spec's
    ``terminal`` is ignored: ``terminal`` says; ``console_size`` (``(rows, columns)``,
    a terminal's only) replaces its ``consoleSize``. ``base``: an earlier plan from the same
    ``spec`` (its ``process`` part is taken from there rather than derived again: the
    seccomp program's cache lookup alone costs tens of microseconds).
    """
    check_args(args)
    if any("\0" in a for a in args):
        raise ValueError("args must not contain NUL characters")
    _check_encodable("argument", args)
    if base is None:
        base = _process_plan(spec, args, compile_seccomp=compile_seccomp)
    else:
        base = ProcessPlan(**{**_fields(base), "args": list(args)})
    overrides: dict[str, Any] = {"terminal": bool(terminal)}
    if env is not None:
        overrides["env"] = _env_list(env)
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd:
            raise ValueError(f"cwd must be an absolute path, not {cwd!r}")
        _check_encodable("cwd", [cwd])
        overrides["cwd"] = cwd
    if user is not None:
        overrides.update(_parse_user(user))
    if console_size is not None:
        overrides["console_size"] = _checked_console_size(console_size, terminal)
    return ExecPlan(**{**_fields(base), **overrides})


def _checked_console_size(size: Sequence[int], terminal: bool) -> list[int]:
    """``size`` as a plan's ``[rows, columns]``: two numbers a ``struct winsize`` holds."""
    if not terminal:
        raise ValueError("console_size is the size of a terminal: it needs tty=True")
    if (
        isinstance(size, str | bytes)
        or len(size) != 2
        or not all(type(n) is int and 0 <= n <= 0xFFFF for n in size)
    ):
        raise ValueError(f"console_size must be (rows, columns) from 0 to 65535, not {size!r}")
    return [size[0], size[1]]


def build_plan(
    *,
    container_id: str,
    sandbox_id: str,
    spec: Mapping[str, Any],
    bundle: str,
    runtime_root: str,
    compile_seccomp: SeccompCompiler,
    overlay_size: int = 0,
) -> SandboxPlan:
    """The plan of a new sandbox whose root container is ``container_id``.

    ``compile_seccomp`` turns ``linux.seccomp`` into the BPF program the init
    loads: a required hook, so that no plan ever leaves a filter out.
    ``overlay_size`` (bytes) makes the root an overlay of the rootfs with a
    tmpfs upper layer of that size; 0 mounts the rootfs itself.
    """
    if overlay_size < 0:
        raise ValueError(f"overlay_size must not be negative, not {overlay_size}")
    linux = spec.get("linux") or {}
    namespaces = [[ns["type"], ns.get("path") or ""] for ns in linux.get("namespaces") or []]
    kinds = dict(namespaces)
    if "mount" not in kinds:
        raise SpecError([("linux.namespaces", "a mount namespace is required")])
    if kinds["mount"]:
        raise MissingFeatureError(
            f"joining a mount namespace by path ({kinds['mount']})",
            "each container's root is built in a mount namespace of its own: leave the path out",
            unsupported=True,
        )
    # A new user namespace's maps, or those a joined one has (as the spec says them, and
    # the supervisor checks once it joined): what owners on the host are.
    uid_map = idmap.extents_from_spec(linux.get("uidMappings")) if "user" in kinds else ()
    gid_map = idmap.extents_from_spec(linux.get("gidMappings")) if "user" in kinds else ()
    _refuse_host_sysctls(spec, container_id, kinds, "the container's own")
    if "pid" in kinds:  # the supervisor is in the container's PID namespace
        _refuse_ptrace(spec, container_id)
    runtime_dir, control_socket, exit_file = sandbox_paths(runtime_root, sandbox_id)
    return SandboxPlan(
        sandbox_id=sandbox_id,
        runtime_dir=runtime_dir,
        control_socket=control_socket,
        exit_file=exit_file,
        namespaces=namespaces,
        init=_init_plan(
            container_id,
            spec,
            bundle,
            compile_seccomp=compile_seccomp,
            overlay_size=overlay_size,
        ),
        # (In a UTS namespace joined by path too, as runc: the library refuses the
        # runtime's own.)
        hostname=spec.get("hostname") if "uts" in kinds else None,
        domainname=spec.get("domainname") if "uts" in kinds else None,
        uid_map=idmap.map_text(uid_map),
        gid_map=idmap.map_text(gid_map),
        time_offsets=_time_offsets(linux.get("timeOffsets")),
    )


def _time_offsets(offsets: Mapping[str, Any] | None) -> str:
    """``linux.timeOffsets`` (checked by the spec's validation: a new time namespace has
    them) as ``/proc/PID/timens_offsets`` takes them."""
    return "".join(
        f"{clock} {int(o.get('secs') or 0)} {int(o.get('nanosecs') or 0)}\n"
        for clock, o in (offsets or {}).items()
    )


def build_container_plan(
    *,
    container_id: str,
    sandbox_id: str,
    spec: Mapping[str, Any],
    bundle: str,
    runtime_dir: str,
    compile_seccomp: SeccompCompiler,
    overlay_size: int = 0,
    sandbox_namespaces: Collection[str] = ("pid", "network", "ipc", "uts", "mount"),
) -> ContainerPlan:
    """The plan of container ``container_id`` joining sandbox ``sandbox_id`` (a pod).

    ``runtime_dir`` is the sandbox's. The container shares the sandbox's PID,
    network, IPC, UTS (and user) namespaces whatever its spec's
    ``linux.namespaces`` say (CRI runtimes list the pause container's there);
    only a new ``cgroup`` one (no path) counts: the container gets a cgroup
    namespace rooted at its own cgroup. ``hostname`` and ``domainname`` are the
    sandbox's. ``sandbox_namespaces``: the namespace types the sandbox has of its
    own, new or joined by path (its root's ``linux.namespaces``), rather than the
    host's: its sysctls must belong to one of them.
    """
    if container_id == sandbox_id:
        raise ValueError(f"container {container_id!r} is the root of its sandbox")
    _refuse_host_sysctls(spec, container_id, sandbox_namespaces, "its sandbox's own")
    if "pid" in sandbox_namespaces:  # (the supervisor's)
        _refuse_ptrace(spec, container_id, pod=True)
    linux = spec.get("linux") or {}
    if linux.get("timeOffsets"):
        problem = "a pod's container shares its sandbox's time namespace, and its offsets"
        raise SpecError([("linux.timeOffsets", problem)], source=f'container "{container_id}"')
    new = {ns["type"] for ns in linux.get("namespaces") or [] if not ns.get("path")}
    return ContainerPlan(
        sandbox_id=sandbox_id,
        init=_init_plan(
            container_id,
            spec,
            bundle,
            compile_seccomp=compile_seccomp,
            overlay_size=overlay_size,
        ),
        exit_file=container_exit_file(runtime_dir, sandbox_id, container_id),
        new_cgroup_namespace="cgroup" in new,
    )
