"""Check a loaded spec against the OCI runtime-spec MUSTs (and runc's own refusals).

:func:`validate_spec` raises one :class:`~sandboxrt.errors.SpecError` listing
every problem as ``(json_path, message)``. The vocabularies it checks against
(capability names, rlimit types, namespace types, seccomp actions...) are
exported for the modules that act on a spec.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sandboxrt._core import idmap
from sandboxrt._core.abi import RLIMIT_NUMBERS, SCHED_FLAGS, SCHED_POLICIES
from sandboxrt._core.cri import annotation_problems
from sandboxrt._core.mount_options import UNSUPPORTED_OPTIONS, parse_mount_options
from sandboxrt._core.users import MAX_ID
from sandboxrt.errors import SpecError

if TYPE_CHECKING:
    from sandboxrt._core.spec import IDMapping, Linux, Process, Resources, Scheduler, Spec

__all__ = [
    "CAPABILITIES",
    "CAPABILITY_NUMBERS",
    "DEVICE_TYPES",
    "MAX_SPEC_BYTES",
    "NAMESPACE_TYPES",
    "RLIMITS",
    "ROOTFS_PROPAGATIONS",
    "SECCOMP_ACTIONS",
    "SECCOMP_ARCHITECTURES",
    "SECCOMP_FLAGS",
    "SECCOMP_OPERATORS",
    "SUPPORTED_VERSIONS",
    "c_string_problem",
    "document_problems",
    "spec_problems",
    "sysctl_namespace",
    "sysctl_problems",
    "validate_spec",
]

_CAPABILITY_ORDER = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)

CAPABILITY_NUMBERS: Mapping[str, int] = MappingProxyType(
    {"CAP_" + name: number for number, name in enumerate(_CAPABILITY_ORDER)}
)
"""Linux capability name -> number (``CAP_CHOWN`` = 0 ... ``CAP_CHECKPOINT_RESTORE`` = 40)."""

CAPABILITIES: frozenset[str] = frozenset(CAPABILITY_NUMBERS)
"""The 41 Linux capability names a spec may use."""

RLIMITS: frozenset[str] = frozenset(RLIMIT_NUMBERS)
"""The POSIX/Linux rlimit types of ``process.rlimits[].type``."""

NAMESPACE_TYPES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"})
DEVICE_TYPES = frozenset({"c", "b", "u", "p"})
ROOTFS_PROPAGATIONS = frozenset(
    {"private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"}
)
SECCOMP_ACTIONS = frozenset(
    "SCMP_ACT_" + name
    for name in [
        "KILL",
        "KILL_PROCESS",
        "KILL_THREAD",
        "TRAP",
        "ERRNO",
        "TRACE",
        "ALLOW",
        "LOG",
        "NOTIFY",
    ]
)
SECCOMP_OPERATORS = frozenset(
    "SCMP_CMP_" + name for name in ["NE", "LT", "LE", "EQ", "GE", "GT", "MASKED_EQ"]
)
SECCOMP_ARCHITECTURES = frozenset(
    "SCMP_ARCH_" + name
    for name in [
        "X86",
        "X86_64",
        "X32",
        "ARM",
        "AARCH64",
        "MIPS",
        "MIPS64",
        "MIPS64N32",
        "MIPSEL",
        "MIPSEL64",
        "MIPSEL64N32",
        "PPC",
        "PPC64",
        "PPC64LE",
        "S390",
        "S390X",
        "PARISC",
        "PARISC64",
        "RISCV64",
        "LOONGARCH64",
        "M68K",
        "SH",
        "SHEB",
    ]
)
SECCOMP_FLAGS = frozenset(
    "SECCOMP_FILTER_FLAG_" + name for name in ["TSYNC", "LOG", "SPEC_ALLOW", "WAIT_KILLABLE_RECV"]
)
SUPPORTED_VERSIONS = "1.0.0 to 1.3.x"

_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*)?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?"
)
_UINT32 = 2**32 - 1
_IO_PRIORITY_CLASSES = frozenset({"IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE"})
_PERSONALITY_DOMAINS = frozenset({"LINUX", "LINUX32"})

_Problems = list[tuple[str, str]]


def validate_spec(spec: Spec) -> None:
    """Raise :class:`SpecError` listing every OCI MUST that ``spec`` breaks."""
    problems = spec_problems(spec)
    if problems:
        raise SpecError(problems)


#: The largest spec (as JSON) a sandbox takes: what goes to it must fit in one message.
MAX_SPEC_BYTES = 3 * 1024 * 1024


def _byte_length(text: str) -> int:
    """How many bytes ``text`` is on its way to the kernel (``surrogateescape``'s one
    each); a lone surrogate of another kind counts three, as UTF-8 would write it (no C
    string carries it: :func:`document_problems` names it)."""
    try:
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass"))


def c_string_problem(text: str) -> str | None:
    """What keeps ``text`` from being a C string: a NUL byte (cut short at it on its way to
    the kernel: another path, another argument), or a lone surrogate (other than
    ``surrogateescape``'s bytes, which ``os.fsencode`` gives back); ``None`` if nothing."""
    if "\0" in text:
        return "must not hold a NUL byte"
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (a lone surrogate)"
    return None


def document_problems(
    document: Mapping[str, Any], text: str | None = None
) -> list[tuple[str, str]]:
    """What of a spec ``document`` no sandbox can take: a spec over
    :data:`MAX_SPEC_BYTES`, and strings that no C string or UTF-8 text carries: a NUL
    byte (a path or an argument would be cut short at it on its way to the kernel), or a
    lone surrogate (other than ``surrogateescape``'s bytes). ``text``: the document as
    JSON already (the record's, say), for the quick look: both show as escapes there."""
    if text is None:
        text = json.dumps(document)
    if len(text) > MAX_SPEC_BYTES:
        size = f"{len(text)} bytes of JSON, over the {MAX_SPEC_BYTES} a sandbox takes"
        return [("", f"the spec is too large: {size}")]
    if "\\u0000" not in text and "\\ud" not in text:
        return []
    out: _Problems = []
    todo: list[tuple[str, object]] = [("", document)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, str):
            problem = c_string_problem(value)
            if problem is not None:
                out.append((path, problem))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                shown = json.dumps(str(key))[1:-1]  # (a NUL shows escaped)
                at = f"{path}.{shown}" if path else shown
                todo += [(f"{at} (the key)", key), (at, item)]
        elif isinstance(value, list):
            todo += [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    return sorted(out)


def spec_problems(spec: Spec) -> list[tuple[str, str]]:
    """Return the ``(json_path, message)`` problems of ``spec``; empty when it is valid."""
    out: _Problems = []
    _check_version(out, spec.oci_version)
    if spec.root is None:
        out.append(("root", "missing: root.path is required on Linux"))
    elif not spec.root.path:
        out.append(("root.path", "must not be empty"))
    if spec.process is not None:
        _check_process(out, spec.process)
    for i, mount in enumerate(spec.mounts or ()):
        _check_absolute(out, f"mounts[{i}].destination", mount.destination)
        _check_mappings(out, f"mounts[{i}].uidMappings", mount.uid_mappings)
        _check_mappings(out, f"mounts[{i}].gidMappings", mount.gid_mappings)
        parsed = parse_mount_options(
            [o for o in mount.options or () if o not in UNSUPPORTED_OPTIONS], mount.type or ""
        )
        if parsed.is_bind and parsed.data:
            # A bind takes no filesystem data: such an option would be dropped unseen.
            problem = f"{parsed.data} is not an option of a bind mount"
            out.append((f"mounts[{i}].options", problem))
    if spec.hooks is not None:
        hooks = spec.hooks
        phases = (
            ("prestart", hooks.prestart),
            ("createRuntime", hooks.create_runtime),
            ("createContainer", hooks.create_container),
            ("startContainer", hooks.start_container),
            ("poststart", hooks.poststart),
            ("poststop", hooks.poststop),
        )
        for phase, phase_hooks in phases:
            for i, hook in enumerate(phase_hooks or ()):
                where = f"hooks.{phase}[{i}]"
                _check_absolute(out, f"{where}.path", hook.path)
                _check_env(out, f"{where}.env", hook.env)
                if hook.timeout is not None and hook.timeout <= 0:
                    out.append((f"{where}.timeout", f"must be positive, got {hook.timeout}"))
    for key in spec.annotations or {}:
        if not key:
            out.append(("annotations", "keys must not be empty"))
    out.extend(annotation_problems(spec.annotations))
    namespaces = {ns.type for ns in (spec.linux.namespaces or ())} if spec.linux else set()
    sysctls = spec.linux.sysctl or {} if spec.linux else {}
    for name, value in (("hostname", spec.hostname), ("domainname", spec.domainname)):
        if value and "uts" not in namespaces:
            out.append((name, f"cannot set the {name} without a private UTS namespace"))
        if value and f"kernel.{name}" in sysctls:  # (as runc: which would win?)
            out.append((f'linux.sysctl["kernel.{name}"]', f"conflicts with the {name} field"))
        if value and (size := _byte_length(value)) > _HOST_NAME_MAX:
            out.append((name, f"at most {_HOST_NAME_MAX} bytes, got {size}"))
    if spec.linux is not None:
        _check_linux(out, spec.linux)
    _check_mapped_user(out, spec)
    return out


#: The longest host and domain name the kernel takes (``HOST_NAME_MAX``).
_HOST_NAME_MAX = 64


def _check_version(out: _Problems, version: str) -> None:
    match = _SEMVER.fullmatch(version)
    if match is None:
        out.append(("ociVersion", f'expected a SemVer version like "1.2.0", got "{version}"'))
    elif match.group(1) != "1" or int(match.group(2)) > 3:
        out.append(
            ("ociVersion", f'unsupported version "{version}" (supported: {SUPPORTED_VERSIONS})')
        )


def _check_absolute(out: _Problems, path: str, value: str) -> None:
    if not value.startswith("/"):
        out.append((path, f'must be an absolute path, got "{value}"'))


def _check_range(out: _Problems, path: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        out.append((path, f"must be in [{low}, {high}], got {value}"))


def _check_known(out: _Problems, path: str, value: str, known: frozenset[str], what: str) -> None:
    if value not in known:
        out.append((path, f'unknown {what} "{value}"'))


def _check_env(out: _Problems, path: str, env: Sequence[str] | None) -> None:
    for i, entry in enumerate(env or ()):
        if entry.partition("=")[0] == "" or "=" not in entry:
            out.append((f"{path}[{i}]", f'expected "KEY=VALUE", got "{entry}"'))


def _check_mappings(out: _Problems, path: str, mappings: Iterable[IDMapping] | None) -> None:
    for i, mapping in enumerate(mappings or ()):
        _check_range(out, f"{path}[{i}].containerID", mapping.container_id, 0, _UINT32)
        _check_range(out, f"{path}[{i}].hostID", mapping.host_id, 0, _UINT32)
        if mapping.size <= 0:
            out.append((f"{path}[{i}].size", f"must be positive, got {mapping.size}"))


def _check_user_namespace_maps(out: _Problems, linux: Linux) -> None:
    """The mappings of the container's user namespace (a new one's, or those a joined one
    has): what the kernel takes, and the container's root mapped (its supervisor and
    init start as root in it)."""
    for key, mappings, kind in (
        ("uidMappings", linux.uid_mappings, "uid"),
        ("gidMappings", linux.gid_mappings, "gid"),
    ):
        if not mappings:
            continue
        extents = [(m.container_id, m.host_id, m.size) for m in mappings]
        out.extend((f"linux.{key}", problem) for problem in idmap.map_problems(extents))
        if idmap.to_host(extents, 0) is None:
            out.append((f"linux.{key}", f"must map {kind} 0: the sandbox starts as root in it"))


def _check_mapped_user(out: _Problems, spec: Spec) -> None:
    """With a new user namespace, the process's uid and gids must be mapped in it."""
    linux, process = spec.linux, spec.process
    if linux is None or process is None:
        return
    user_ns = next((ns for ns in linux.namespaces or () if ns.type == "user"), None)
    if user_ns is None or (user_ns.path and not linux.uid_mappings):
        return
    uids = [(m.container_id, m.host_id, m.size) for m in linux.uid_mappings or ()]
    gids = [(m.container_id, m.host_id, m.size) for m in linux.gid_mappings or ()]
    user = process.user
    checks = [("process.user.uid", user.uid, uids), ("process.user.gid", user.gid, gids)]
    checks += [
        (f"process.user.additionalGids[{i}]", gid, gids)
        for i, gid in enumerate(user.additional_gids or ())
    ]
    for where, number, extents in checks:
        if extents and isinstance(number, int) and idmap.to_host(extents, number) is None:
            out.append((where, f"{number} is not mapped in the container's user namespace"))
    for i, mount in enumerate(spec.mounts or ()):  # devpts's gid=5, a tmpfs's uid=...
        for option in mount.options or ():
            key, _, value = option.partition("=")
            ids = {"uid": uids, "gid": gids}.get(key)
            if ids and value.isdigit() and idmap.to_host(ids, int(value)) is None:
                problem = f"{option}: {key} {value} is not mapped in the user namespace"
                out.append((f"mounts[{i}].options", problem))


def _check_process(out: _Problems, process: Process) -> None:
    if not process.args:
        out.append(("process.args", "expected a non-empty list of strings"))
    elif not process.args[0]:
        out.append(("process.args[0]", "must not be empty"))
    _check_absolute(out, "process.cwd", process.cwd)
    _check_env(out, "process.env", process.env)
    if process.console_size is not None:  # (a struct winsize holds unsigned shorts)
        _check_range(out, "process.consoleSize.height", process.console_size.height, 0, 0xFFFF)
        _check_range(out, "process.consoleSize.width", process.console_size.width, 0, 0xFFFF)
    user = process.user
    # Not 2**32-1: it is -1 to setresuid and setgroups, "leave unchanged" (root stays root).
    _check_range(out, "process.user.uid", user.uid, 0, MAX_ID)
    _check_range(out, "process.user.gid", user.gid, 0, MAX_ID)
    _check_range(out, "process.user.umask", user.umask, 0, 0o777)
    for i, gid in enumerate(user.additional_gids or ()):
        _check_range(out, f"process.user.additionalGids[{i}]", gid, 0, MAX_ID)
    # An unknown capability is no problem: OCI asks runtimes to warn and go on (the plan
    # leaves it out, saying so), as runc does for one newer than it or the kernel.
    seen: set[str] = set()
    for i, rlimit in enumerate(process.rlimits or ()):
        where = f"process.rlimits[{i}]"
        _check_known(out, f"{where}.type", rlimit.type, RLIMITS, "rlimit type")
        if rlimit.type in seen:
            out.append((f"{where}.type", f'duplicate rlimit type "{rlimit.type}"'))
        seen.add(rlimit.type)
        _check_range(out, f"{where}.hard", rlimit.hard, 0, 2**64 - 1)
        _check_range(out, f"{where}.soft", rlimit.soft, 0, 2**64 - 1)
        if rlimit.soft > rlimit.hard:
            out.append((f"{where}.soft", f"must not exceed hard ({rlimit.soft} > {rlimit.hard})"))
    _check_range(out, "process.oomScoreAdj", process.oom_score_adj, -1000, 1000)
    if process.io_priority is not None:
        prio = process.io_priority
        _check_known(out, "process.ioPriority.class", prio.class_, _IO_PRIORITY_CLASSES, "class")
        _check_range(out, "process.ioPriority.priority", prio.priority, 0, 7)
    if process.scheduler is not None:
        _check_scheduler(out, process.scheduler)


def _check_scheduler(out: _Problems, scheduler: Scheduler) -> None:
    """As the kernel takes ``sched_setattr``: a real-time policy has a priority of 1-99,
    the others none; ``SCHED_ISO`` was never merged."""
    where = "process.scheduler"
    known = frozenset(SCHED_POLICIES) - {"SCHED_ISO"}
    _check_known(out, f"{where}.policy", scheduler.policy, known, "policy")
    _check_range(out, f"{where}.nice", scheduler.nice, -20, 19)
    if scheduler.policy in ("SCHED_FIFO", "SCHED_RR"):
        _check_range(out, f"{where}.priority", scheduler.priority or 0, 1, 99)
    elif scheduler.priority:
        out.append((f"{where}.priority", f"must be 0 for {scheduler.policy}"))
    # (The clamp flags need util_min and util_max, which the spec has no field for.)
    flags = frozenset(SCHED_FLAGS) - {"SCHED_FLAG_UTIL_CLAMP_MIN", "SCHED_FLAG_UTIL_CLAMP_MAX"}
    for i, flag in enumerate(scheduler.flags or ()):
        _check_known(out, f"{where}.flags[{i}]", flag, flags, "flag")
    for name in ("runtime", "deadline", "period"):
        _check_range(out, f"{where}.{name}", getattr(scheduler, name), 0, 2**63 - 1)
    runtime, deadline = scheduler.runtime or 0, scheduler.deadline or 0
    period = scheduler.period or deadline
    if scheduler.policy != "SCHED_DEADLINE":
        for name in ("runtime", "deadline", "period"):
            if getattr(scheduler, name):
                out.append((f"{where}.{name}", "only for SCHED_DEADLINE"))
    elif not 1024 <= runtime <= deadline <= period:
        out.append((where, "SCHED_DEADLINE needs 1024 <= runtime <= deadline <= period (ns)"))


#: Sysctls that belong to a namespace, and which one: any other is global to the host.
_NAMESPACED_SYSCTLS = {
    "kernel.msgmax": "ipc",
    "kernel.msgmnb": "ipc",
    "kernel.msgmni": "ipc",
    "kernel.sem": "ipc",
    "kernel.shmall": "ipc",
    "kernel.shmmax": "ipc",
    "kernel.shmmni": "ipc",
    "kernel.shm_rmid_forced": "ipc",
    "kernel.hostname": "uts",
    "kernel.domainname": "uts",
}
_NAMESPACED_PREFIXES = {"fs.mqueue.": "ipc", "net.": "network"}


def sysctl_namespace(key: str) -> str | None:
    """The namespace type sysctl ``key`` (``net.ipv4.ip_forward`` or with slashes)
    belongs to; None for a sysctl global to the host."""
    name = key.replace("/", ".")
    return _NAMESPACED_SYSCTLS.get(name) or next(
        (kind for prefix, kind in _NAMESPACED_PREFIXES.items() if name.startswith(prefix)), None
    )


def sysctl_problems(
    sysctls: Iterable[str], owned: Collection[str], *, whose: str = "the container's own"
) -> list[tuple[str, str]]:
    """The sysctls (names) that would change the host: global ones, and those of a
    namespace type not in ``owned`` (those the process runs in, new or joined by path).
    The spec's own check (:func:`validate_spec`) and the plan's, which knows the
    namespaces the container really gets (a pod's are its sandbox's, ``whose``), share
    it."""
    problems = []
    for key in sysctls:
        kind = sysctl_namespace(key)
        where = f'linux.sysctl["{key}"]'
        if kind is None:
            problems.append((where, "not namespaced: it would change the host"))
        elif kind not in owned:
            article = "an" if kind[0] in "aeiou" else "a"
            problems.append((where, f"needs {article} {kind} namespace of {whose}"))
    return problems


def _check_sysctls(out: _Problems, linux: Linux) -> None:
    """Only sysctls of a namespace the container owns: others would change the host."""
    owned = {ns.type for ns in linux.namespaces or ()}  # new, or joined: not the host's
    out.extend(sysctl_problems(linux.sysctl or {}, owned))


#: The clocks a time namespace offsets (``/proc/PID/timens_offsets``).
TIME_OFFSET_CLOCKS = frozenset({"monotonic", "boottime"})


def _check_time_offsets(out: _Problems, linux: Linux) -> None:
    """``linux.timeOffsets`` need a new time namespace, and offsets the kernel takes."""
    if not linux.time_offsets:
        return
    time_ns = next((ns for ns in linux.namespaces or () if ns.type == "time"), None)
    if time_ns is None or time_ns.path:
        out.append(("linux.timeOffsets", "given, but there is no new time namespace"))
    for clock, offset in linux.time_offsets.items():
        where = f"linux.timeOffsets.{clock}"
        _check_known(out, where, clock, TIME_OFFSET_CLOCKS, "clock")
        _check_range(out, f"{where}.secs", offset.secs, -(2**63), 2**63 - 1)
        _check_range(out, f"{where}.nanosecs", offset.nanosecs, 0, 999_999_999)


def _check_linux(out: _Problems, linux: Linux) -> None:
    seen: set[str] = set()
    for i, ns in enumerate(linux.namespaces or ()):
        where = f"linux.namespaces[{i}]"
        _check_known(out, f"{where}.type", ns.type, NAMESPACE_TYPES, "namespace type")
        if ns.type in seen:
            out.append((f"{where}.type", f'duplicate namespace type "{ns.type}"'))
        seen.add(ns.type)
        if ns.path is not None:
            _check_absolute(out, f"{where}.path", ns.path)
    _check_mappings(out, "linux.uidMappings", linux.uid_mappings)
    _check_mappings(out, "linux.gidMappings", linux.gid_mappings)
    user_ns = next((ns for ns in linux.namespaces or () if ns.type == "user"), None)
    for key, mappings in (("uidMappings", linux.uid_mappings), ("gidMappings", linux.gid_mappings)):
        if mappings and user_ns is None:
            out.append((f"linux.{key}", "given, but there is no user namespace"))
        if not mappings and user_ns is not None and not user_ns.path:
            out.append((f"linux.{key}", "required to create a new user namespace"))
    if user_ns is not None and (not user_ns.path or linux.uid_mappings or linux.gid_mappings):
        _check_user_namespace_maps(out, linux)
    _check_time_offsets(out, linux)
    for i, dev in enumerate(linux.devices or ()):
        where = f"linux.devices[{i}]"
        _check_absolute(out, f"{where}.path", dev.path)
        _check_known(out, f"{where}.type", dev.type, DEVICE_TYPES, "device type")
        if dev.type in {"c", "b", "u"}:
            for key, number in (("major", dev.major), ("minor", dev.minor)):
                if number is None:
                    out.append((f"{where}.{key}", f'required for device type "{dev.type}"'))
        _check_range(out, f"{where}.fileMode", dev.file_mode, 0, 0o7777)
        _check_range(out, f"{where}.uid", dev.uid, 0, MAX_ID)
        _check_range(out, f"{where}.gid", dev.gid, 0, MAX_ID)
        _check_range(out, f"{where}.major", dev.major, 0, _DEV_MAJOR_MAX)
        _check_range(out, f"{where}.minor", dev.minor, 0, _DEV_MINOR_MAX)
    if linux.resources is not None:
        for i, rule in enumerate(linux.resources.devices or ()):
            where = f"linux.resources.devices[{i}]"
            if rule.type is not None and rule.type not in {"a", "b", "c"}:
                out.append((f"{where}.type", f'unknown device type "{rule.type}"'))
            if rule.access is not None and set(rule.access) - set("rwm"):
                out.append((f"{where}.access", f'expected letters of "rwm", got "{rule.access}"'))
            _check_range(out, f"{where}.major", rule.major, -1, _DEV_MAJOR_MAX)  # -1: any
            _check_range(out, f"{where}.minor", rule.minor, -1, _DEV_MINOR_MAX)
        _check_resource_ranges(out, linux.resources)
    _check_sysctls(out, linux)
    if linux.rootfs_propagation is not None:
        propagation = linux.rootfs_propagation
        _check_known(
            out, "linux.rootfsPropagation", propagation, ROOTFS_PROPAGATIONS, "propagation"
        )
    for key, paths in (
        ("maskedPaths", linux.masked_paths),
        ("readonlyPaths", linux.readonly_paths),
    ):
        for i, path in enumerate(paths or ()):
            _check_absolute(out, f"linux.{key}[{i}]", path)
    if linux.personality is not None:
        domain = linux.personality.domain
        _check_known(out, "linux.personality.domain", domain, _PERSONALITY_DOMAINS, "domain")
    _check_seccomp(out, linux)


#: The numbers a kernel device number holds (``MAJOR``: 12 bits, ``MINOR``: 20).
_DEV_MAJOR_MAX = 2**12 - 1
_DEV_MINOR_MAX = 2**20 - 1
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)
#: The largest errno a seccomp rule may return: libseccomp takes errnos below
#: ``MAX_ERRNO`` (4095), the kernel's bound.
_MAX_ERRNO = 4094


def _check_resource_ranges(out: _Problems, resources: Resources) -> None:
    """The cgroup values in the range of their OCI types (int64, uint64): larger ones
    would wrap (a memory limit of 2**64 + 64 MiB became 64 MiB)."""
    where = "linux.resources"
    memory, cpu, pids = resources.memory, resources.cpu, resources.pids
    if memory is not None:
        for key in ("limit", "reservation", "swap", "kernel", "kernel_tcp"):
            name = "kernelTCP" if key == "kernel_tcp" else key
            _check_range(out, f"{where}.memory.{name}", getattr(memory, key), -1, _INT64[1])
        if memory.swappiness != _UINT64[1]:  # (-1 as a uint64: unset, as runc has it)
            _check_range(out, f"{where}.memory.swappiness", memory.swappiness, 0, 100)
    if cpu is not None:
        for key, name, bounds in (
            ("shares", "shares", _UINT64),
            ("quota", "quota", _INT64),
            ("burst", "burst", _UINT64),
            ("period", "period", _UINT64),
            ("realtime_runtime", "realtimeRuntime", _INT64),
            ("realtime_period", "realtimePeriod", _UINT64),
        ):
            _check_range(out, f"{where}.cpu.{name}", getattr(cpu, key), *bounds)
    if pids is not None:
        _check_range(out, f"{where}.pids.limit", pids.limit, *_INT64)
    for i, limit in enumerate(resources.hugepage_limits or ()):
        _check_range(out, f"{where}.hugepageLimits[{i}].limit", limit.limit, *_UINT64)


def _check_seccomp(out: _Problems, linux: Linux) -> None:
    seccomp = linux.seccomp
    if seccomp is None:
        return
    action = seccomp.default_action
    _check_known(out, "linux.seccomp.defaultAction", action, SECCOMP_ACTIONS, "seccomp action")
    _check_range(out, "linux.seccomp.defaultErrnoRet", seccomp.default_errno_ret, 0, _MAX_ERRNO)
    if action == "SCMP_ACT_NOTIFY":
        out.append(("linux.seccomp.defaultAction", "SCMP_ACT_NOTIFY cannot be the default"))
    for i, arch in enumerate(seccomp.architectures or ()):
        where = f"linux.seccomp.architectures[{i}]"
        _check_known(out, where, arch, SECCOMP_ARCHITECTURES, "seccomp architecture")
    for i, flag in enumerate(seccomp.flags or ()):
        _check_known(out, f"linux.seccomp.flags[{i}]", flag, SECCOMP_FLAGS, "seccomp flag")
    for i, syscall in enumerate(seccomp.syscalls or ()):
        where = f"linux.seccomp.syscalls[{i}]"
        if not syscall.names:
            out.append((f"{where}.names", "expected a non-empty list of strings"))
        _check_known(out, f"{where}.action", syscall.action, SECCOMP_ACTIONS, "seccomp action")
        _check_range(out, f"{where}.errnoRet", syscall.errno_ret, 0, _MAX_ERRNO)
        for j, arg in enumerate(syscall.args or ()):
            _check_range(out, f"{where}.args[{j}].index", arg.index, 0, 5)
            _check_range(out, f"{where}.args[{j}].value", arg.value, *_UINT64)
            _check_range(out, f"{where}.args[{j}].valueTwo", arg.value_two, *_UINT64)
            _check_known(out, f"{where}.args[{j}].op", arg.op, SECCOMP_OPERATORS, "operator")
