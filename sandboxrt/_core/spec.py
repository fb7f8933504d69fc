"""The OCI runtime spec (``config.json``, runtime-spec 1.0 to 1.3) as typed attrs classes.

Attributes are snake_case; their JSON keys are the spec's camelCase spelling
(derived by :func:`json_key`). Optional fields default to ``None`` and are
omitted when dumping. Keys the model does not know are kept, at every level, in
the ``extra`` mapping of the object holding them and written back by
:func:`dump_spec`, so a load/dump round trip loses nothing.

Loading is strict about JSON types (``true`` is not an integer, ``"sh"`` is not
a list) and reports every problem as a :class:`~sandboxrt.errors.SpecError`
naming its JSON path, e.g. ``process.user.uid: expected an integer, got a
string``. The OCI MUSTs are then checked by
:func:`~sandboxrt._core.spec_validate.validate_spec`.
"""

from __future__ import annotations

import copy
import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

import attrs
import cattrs
import cattrs.cols
from cattrs.errors import ClassValidationError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from sandboxrt._core.spec_validate import MAX_SPEC_BYTES, validate_spec
from sandboxrt.errors import SpecError

__all__ = [
    "CPU",
    "Box",
    "CPUAffinity",
    "Capabilities",
    "Device",
    "DeviceCgroup",
    "Hook",
    "Hooks",
    "HugepageLimit",
    "IDMapping",
    "IOPriority",
    "IntelRdt",
    "InterfacePriority",
    "Linux",
    "LinuxBlockIO",
    "Memory",
    "MemoryPolicy",
    "Mount",
    "Namespace",
    "NetDevice",
    "Network",
    "Personality",
    "Pids",
    "Process",
    "Rdma",
    "Resources",
    "Rlimit",
    "Root",
    "Scheduler",
    "Seccomp",
    "SeccompArg",
    "Spec",
    "SpecObject",
    "Syscall",
    "ThrottleDevice",
    "TimeOffset",
    "User",
    "WeightDevice",
    "converter",
    "dump_spec",
    "json_key",
    "load_spec",
    "read_spec_file",
    "write_spec_file",
]

# JSON keys that are not the plain camelCase of the attribute name.
_SPECIAL_KEYS = {
    "block_io": "blockIO",
    "class_id": "classID",
    "clos_id": "closID",
    "container_id": "containerID",
    "disable_oom_killer": "disableOOMKiller",
    "enable_cmt": "enableCMT",
    "enable_mbm": "enableMBM",
    "exec_cpu_affinity": "execCPUAffinity",
    "host_id": "hostID",
    "kernel_tcp": "kernelTCP",
    "throttle_read_iops_device": "throttleReadIOPSDevice",
    "throttle_write_iops_device": "throttleWriteIOPSDevice",
}
# Field metadata key: what a type error on this field says was expected.
_EXPECT = "sandboxrt.expect"
# Where the unknown keys of an object travel through the generated structure function.
_EXTRA_SLOT = "\x00extra"


def json_key(attribute: str) -> str:
    """Return the config.json key of a model attribute (``oom_score_adj`` -> ``oomScoreAdj``)."""
    if attribute in _SPECIAL_KEYS:
        return _SPECIAL_KEYS[attribute]
    first, *rest = attribute.rstrip("_").split("_")
    return first + "".join(word.capitalize() for word in rest)


@attrs.frozen(kw_only=True)
class SpecObject:
    """Base of every spec object: ``extra`` holds the JSON keys the model does not know."""

    extra: dict[str, Any] = attrs.field(factory=dict, repr=False)


@attrs.frozen(kw_only=True)
class Box(SpecObject):
    """``process.consoleSize``."""

    height: int
    width: int


@attrs.frozen(kw_only=True)
class User(SpecObject):
    """``process.user``."""

    uid: int
    gid: int
    umask: int | None = None
    additional_gids: list[int] | None = None
    username: str | None = None


@attrs.frozen(kw_only=True)
class Capabilities(SpecObject):
    """``process.capabilities``: capability names per set."""

    bounding: list[str] | None = None
    effective: list[str] | None = None
    inheritable: list[str] | None = None
    permitted: list[str] | None = None
    ambient: list[str] | None = None


@attrs.frozen(kw_only=True)
class Rlimit(SpecObject):
    """One entry of ``process.rlimits``."""

    type: str
    hard: int
    soft: int


@attrs.frozen(kw_only=True)
class Scheduler(SpecObject):
    """``process.scheduler`` (runtime-spec 1.2)."""

    policy: str
    nice: int | None = None
    priority: int | None = None
    flags: list[str] | None = None
    runtime: int | None = None
    deadline: int | None = None
    period: int | None = None


@attrs.frozen(kw_only=True)
class IOPriority(SpecObject):
    """``process.ioPriority`` (runtime-spec 1.2)."""

    class_: str
    priority: int


@attrs.frozen(kw_only=True)
class CPUAffinity(SpecObject):
    """``process.execCPUAffinity`` (runtime-spec 1.2)."""

    initial: str | None = None
    final: str | None = None


@attrs.frozen(kw_only=True)
class Process(SpecObject):
    """``process``: the container's init process."""

    terminal: bool | None = None
    console_size: Box | None = None
    user: User
    args: list[str] = attrs.field(metadata={_EXPECT: "a non-empty list of strings"})
    env: list[str] | None = None
    cwd: str
    capabilities: Capabilities | None = None
    rlimits: list[Rlimit] | None = None
    no_new_privileges: bool | None = None
    apparmor_profile: str | None = None
    oom_score_adj: int | None = None
    scheduler: Scheduler | None = None
    selinux_label: str | None = None
    io_priority: IOPriority | None = None
    exec_cpu_affinity: CPUAffinity | None = None


@attrs.frozen(kw_only=True)
class Root(SpecObject):
    """``root``: the container's root filesystem (``path`` relative to the bundle)."""

    path: str
    readonly: bool | None = None


@attrs.frozen(kw_only=True)
class IDMapping(SpecObject):
    """A uid or gid mapping of a user namespace or an idmapped mount."""

    container_id: int
    host_id: int
    size: int


@attrs.frozen(kw_only=True)
class Mount(SpecObject):
    """One entry of ``mounts``."""

    destination: str
    type: str | None = None
    source: str | None = None
    options: list[str] | None = None
    uid_mappings: list[IDMapping] | None = None
    gid_mappings: list[IDMapping] | None = None


@attrs.frozen(kw_only=True)
class Hook(SpecObject):
    """One lifecycle hook: ``path`` run with ``args`` (its whole argv) and ``env``."""

    path: str
    args: list[str] | None = None
    env: list[str] | None = None
    timeout: int | None = None


@attrs.frozen(kw_only=True)
class Hooks(SpecObject):
    """``hooks``: the hook lists of each lifecycle phase."""

    prestart: list[Hook] | None = None
    create_runtime: list[Hook] | None = None
    create_container: list[Hook] | None = None
    start_container: list[Hook] | None = None
    poststart: list[Hook] | None = None
    poststop: list[Hook] | None = None


@attrs.frozen(kw_only=True)
class Namespace(SpecObject):
    """One entry of ``linux.namespaces``; ``path`` joins an existing namespace."""

    type: str
    path: str | None = None


@attrs.frozen(kw_only=True)
class TimeOffset(SpecObject):
    """A value of ``linux.timeOffsets``."""

    secs: int | None = None
    nanosecs: int | None = None


@attrs.frozen(kw_only=True)
class Device(SpecObject):
    """One entry of ``linux.devices``: a device node created in the container."""

    path: str
    type: str
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@attrs.frozen(kw_only=True)
class NetDevice(SpecObject):
    """A value of ``linux.netDevices`` (runtime-spec 1.3)."""

    name: str | None = None


@attrs.frozen(kw_only=True)
class DeviceCgroup(SpecObject):
    """One entry of ``linux.resources.devices``: a device cgroup rule."""

    allow: bool
    type: str | None = None
    major: int | None = None
    minor: int | None = None
    access: str | None = None


@attrs.frozen(kw_only=True)
class Memory(SpecObject):
    """``linux.resources.memory`` (bytes; ``-1`` means unlimited)."""

    limit: int | None = None
    reservation: int | None = None
    swap: int | None = None
    kernel: int | None = None
    kernel_tcp: int | None = None
    swappiness: int | None = None
    disable_oom_killer: bool | None = None
    use_hierarchy: bool | None = None
    check_before_update: bool | None = None


@attrs.frozen(kw_only=True)
class CPU(SpecObject):
    """``linux.resources.cpu``."""

    shares: int | None = None
    quota: int | None = None
    burst: int | None = None
    period: int | None = None
    realtime_runtime: int | None = None
    realtime_period: int | None = None
    cpus: str | None = None
    mems: str | None = None
    idle: int | None = None


@attrs.frozen(kw_only=True)
class Pids(SpecObject):
    """``linux.resources.pids``."""

    limit: int | None = None


@attrs.frozen(kw_only=True)
class WeightDevice(SpecObject):
    """One entry of ``linux.resources.blockIO.weightDevice``."""

    major: int
    minor: int
    weight: int | None = None
    leaf_weight: int | None = None


@attrs.frozen(kw_only=True)
class ThrottleDevice(SpecObject):
    """One entry of the ``linux.resources.blockIO.throttle*Device`` lists."""

    major: int
    minor: int
    rate: int


@attrs.frozen(kw_only=True)
class LinuxBlockIO(SpecObject):
    """``linux.resources.blockIO``."""

    weight: int | None = None
    leaf_weight: int | None = None
    weight_device: list[WeightDevice] | None = None
    throttle_read_bps_device: list[ThrottleDevice] | None = None
    throttle_write_bps_device: list[ThrottleDevice] | None = None
    throttle_read_iops_device: list[ThrottleDevice] | None = None
    throttle_write_iops_device: list[ThrottleDevice] | None = None


@attrs.frozen(kw_only=True)
class HugepageLimit(SpecObject):
    """One entry of ``linux.resources.hugepageLimits``."""

    page_size: str
    limit: int


@attrs.frozen(kw_only=True)
class InterfacePriority(SpecObject):
    """One entry of ``linux.resources.network.priorities``."""

    name: str
    priority: int


@attrs.frozen(kw_only=True)
class Network(SpecObject):
    """``linux.resources.network``."""

    class_id: int | None = None
    priorities: list[InterfacePriority] | None = None


@attrs.frozen(kw_only=True)
class Rdma(SpecObject):
    """A value of ``linux.resources.rdma``."""

    hca_handles: int | None = None
    hca_objects: int | None = None


@attrs.frozen(kw_only=True)
class Resources(SpecObject):
    """``linux.resources``: cgroup settings."""

    devices: list[DeviceCgroup] | None = None
    memory: Memory | None = None
    cpu: CPU | None = None
    pids: Pids | None = None
    block_io: LinuxBlockIO | None = None
    hugepage_limits: list[HugepageLimit] | None = None
    network: Network | None = None
    rdma: dict[str, Rdma] | None = None
    unified: dict[str, str] | None = None


@attrs.frozen(kw_only=True)
class SeccompArg(SpecObject):
    """One entry of ``linux.seccomp.syscalls[].args``."""

    index: int
    value: int
    value_two: int | None = None
    op: str


@attrs.frozen(kw_only=True)
class Syscall(SpecObject):
    """One entry of ``linux.seccomp.syscalls``."""

    names: list[str]
    action: str
    errno_ret: int | None = None
    args: list[SeccompArg] | None = None


@attrs.frozen(kw_only=True)
class Seccomp(SpecObject):
    """``linux.seccomp``."""

    default_action: str
    default_errno_ret: int | None = None
    architectures: list[str] | None = None
    flags: list[str] | None = None
    listener_path: str | None = None
    listener_metadata: str | None = None
    syscalls: list[Syscall] | None = None


@attrs.frozen(kw_only=True)
class IntelRdt(SpecObject):
    """``linux.intelRdt``."""

    clos_id: str | None = None
    schemata: list[str] | None = None
    l3_cache_schema: str | None = None
    mem_bw_schema: str | None = None
    enable_cmt: bool | None = None
    enable_mbm: bool | None = None
    enable_monitoring: bool | None = None


@attrs.frozen(kw_only=True)
class MemoryPolicy(SpecObject):
    """``linux.memoryPolicy`` (runtime-spec 1.3)."""

    mode: str
    nodes: str | None = None
    flags: list[str] | None = None


@attrs.frozen(kw_only=True)
class Personality(SpecObject):
    """``linux.personality``."""

    domain: str
    flags: list[str] | None = None


@attrs.frozen(kw_only=True)
class Linux(SpecObject):
    """``linux``: the Linux-specific configuration."""

    uid_mappings: list[IDMapping] | None = None
    gid_mappings: list[IDMapping] | None = None
    sysctl: dict[str, str] | None = None
    resources: Resources | None = None
    cgroups_path: str | None = None
    namespaces: list[Namespace] | None = None
    devices: list[Device] | None = None
    net_devices: dict[str, NetDevice] | None = None
    seccomp: Seccomp | None = None
    rootfs_propagation: str | None = None
    masked_paths: list[str] | None = None
    readonly_paths: list[str] | None = None
    mount_label: str | None = None
    intel_rdt: IntelRdt | None = None
    memory_policy: MemoryPolicy | None = None
    personality: Personality | None = None
    time_offsets: dict[str, TimeOffset] | None = None


@attrs.frozen(kw_only=True)
class Spec(SpecObject):
    """A whole config.json. Tweak it with :func:`attrs.evolve` or :meth:`with_args`."""

    oci_version: str
    process: Process | None = None
    root: Root | None = None
    hostname: str | None = None
    domainname: str | None = None
    mounts: list[Mount] | None = None
    hooks: Hooks | None = None
    annotations: dict[str, str] | None = None
    linux: Linux | None = None

    def with_args(self, args: Sequence[str]) -> Spec:
        """Return a copy whose ``process.args`` is ``args``."""
        if self.process is None:
            raise SpecError([("process", "missing: cannot set process.args")])
        return attrs.evolve(self, process=attrs.evolve(self.process, args=list(args)))


# --- the converter ---------------------------------------------------------------------------


class _Mismatch(TypeError):
    """A JSON value of the wrong type; ``expected`` reads like "an integer"."""

    def __init__(self, expected: str, value: object) -> None:
        super().__init__(f"expected {expected}, got {_json_kind(value)}")
        self.expected = expected
        self.value = value


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


_SCALARS: dict[type, tuple[str, str]] = {
    bool: ("a boolean", "booleans"),
    int: ("an integer", "integers"),
    str: ("a string", "strings"),
}


def _describe(tp: Any, *, plural: bool = False) -> str:
    """Describe a model type the way an error message says what was expected."""
    if tp in _SCALARS:
        return _SCALARS[tp][1 if plural else 0]
    args = get_args(tp)
    if get_origin(tp) is list:
        return ("lists of " if plural else "a list of ") + _describe(args[0], plural=True)
    if get_origin(tp) is dict:
        return ("objects of " if plural else "an object of ") + _describe(args[1], plural=True)
    return "objects" if plural else "an object"


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, SpecObject)


def _is_list(tp: Any) -> bool:
    return get_origin(tp) is list


def _is_dict(tp: Any) -> bool:
    return get_origin(tp) is dict


def _scalar_hook(kind: type) -> Callable[[Any, Any], Any]:
    expected = _describe(kind)

    def structure(value: Any, _: Any) -> Any:
        if type(value) is not kind:  # no bool for int, no int for bool
            raise _Mismatch(expected, value)
        return value

    return structure


def _checked(
    accept: type | tuple[type, ...], expected: str, inner: Callable[[Any, Any], Any]
) -> Callable[[Any, Any], Any]:
    """Wrap a structure hook so that values not of type ``accept`` are refused."""

    def structure(value: Any, tp: Any) -> Any:
        if not isinstance(value, accept):
            raise _Mismatch(expected, value)
        return inner(value, tp)

    return structure


def _expecting(expected: str, inner: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Wrap a structure hook so that a type error on the value itself says ``expected``."""

    def structure(value: Any, tp: Any) -> Any:
        try:
            return inner(value, tp)
        except _Mismatch as exc:
            if exc.value is value:
                raise _Mismatch(expected, value) from None
            raise

    return structure


def _list_hook(tp: Any) -> Callable[[Any, Any], Any]:
    inner = cattrs.cols.list_structure_factory(tp, converter)
    return _checked((list, tuple), _describe(tp), inner)


def _dict_hook(tp: Any) -> Callable[[Any, Any], Any]:
    inner = cattrs.cols.mapping_structure_factory(tp, converter)
    return _checked(Mapping, _describe(tp), inner)


def _model_fields(cl: type[SpecObject]) -> list[attrs.Attribute[Any]]:
    attrs.resolve_types(cl)
    return [f for f in attrs.fields(cl) if f.name != "extra"]


def _structure_model(cl: type[SpecObject]) -> Callable[[Any, Any], SpecObject]:
    """Structure ``cl`` from a JSON object; unknown keys go to ``extra``."""
    overrides: dict[str, Any] = {}
    for field in _model_fields(cl):
        hook = None
        if _EXPECT in field.metadata:
            hook = _expecting(field.metadata[_EXPECT], converter.get_structure_hook(field.type))
        overrides[field.name] = override(rename=json_key(field.name), struct_hook=hook)
    inner = make_dict_structure_fn(
        cl,
        converter,
        _cattrs_forbid_extra_keys=False,
        extra=override(rename=_EXTRA_SLOT, struct_hook=lambda value, _: value),
        **overrides,
    )
    known = {json_key(field.name) for field in _model_fields(cl)}

    def structure(value: Any, _: Any) -> SpecObject:
        if not isinstance(value, Mapping):
            raise _Mismatch("an object", value)
        data = {key: item for key, item in value.items() if key in known}
        data[_EXTRA_SLOT] = {key: item for key, item in value.items() if key not in known}
        return inner(data, cl)

    return structure


def _unstructure_model(cl: type[SpecObject]) -> Callable[[Any], dict[str, Any]]:
    """Unstructure ``cl`` to a JSON object without ``None`` fields, with ``extra`` merged in."""
    renames: dict[str, Any] = {f.name: override(rename=json_key(f.name)) for f in _model_fields(cl)}
    inner = make_dict_unstructure_fn(
        cl, converter, _cattrs_omit_if_default=True, extra=override(omit=True), **renames
    )

    def unstructure(obj: SpecObject) -> dict[str, Any]:
        data = inner(obj)
        for key, item in obj.extra.items():
            data.setdefault(key, copy.deepcopy(item))
        return data

    return unstructure


converter = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)
"""The one converter between config.json data and the model."""

for _kind in _SCALARS:
    converter.register_structure_hook(_kind, _scalar_hook(_kind))
converter.register_structure_hook_factory(_is_list, _list_hook)
converter.register_structure_hook_factory(_is_dict, _dict_hook)
converter.register_structure_hook_factory(_is_model, _structure_model)
converter.register_unstructure_hook_factory(_is_model, _unstructure_model)


# --- errors ----------------------------------------------------------------------------------


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if path and not isinstance(key, str):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else str(key)


def _problems(exc: BaseException, path: str = "") -> list[tuple[str, str]]:
    """Flatten a cattrs structuring error into ``(json_path, message)`` pairs."""
    if isinstance(exc, ClassValidationError):
        keys = {field.name: json_key(field.name) for field in attrs.fields(exc.cl)}
        noted, bare = exc.group_exceptions()
        found = [p for sub, note in noted for p in _problems(sub, _join(path, keys[note.name]))]
        return found + [p for sub in bare for p in _problems(sub, path)]
    if isinstance(exc, IterableValidationError):
        noted_items, bare_items = exc.group_exceptions()
        found = []
        for sub, item_note in noted_items:
            index = item_note.index
            where = _join(path, index) if isinstance(index, int) else f"{path}[{json.dumps(index)}]"
            found += _problems(sub, where)
        return found + [p for sub in bare_items for p in _problems(sub, path)]
    if isinstance(exc, KeyError):
        return [(path, "missing required field")]
    return [(path, str(exc))]


# --- public functions ------------------------------------------------------------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def load_spec(
    data: Mapping[str, Any] | str | bytes, *, validate: bool = True, source: str | None = None
) -> Spec:
    """Build a :class:`Spec` from config.json text or its parsed object.

    Raises :class:`SpecError` listing every problem with its JSON path; unless
    ``validate`` is false the OCI MUSTs are checked too. ``source`` (a file
    name) prefixes the error message.
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data, parse_constant=_reject_constant)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise SpecError([("", f"invalid JSON: {exc}")], source=source) from None
        except RecursionError:
            raise SpecError([("", "invalid JSON: nested too deeply")], source=source) from None
    try:
        if isinstance(data, Mapping):  # (not sharing unknown values with the caller)
            data = copy.deepcopy(dict(data))
        spec = converter.structure(data, Spec)
    except (ClassValidationError, _Mismatch) as exc:
        raise SpecError(_problems(exc), source=source) from None
    except RecursionError:
        raise SpecError([("", "nested too deeply")], source=source) from None
    if validate:
        try:
            validate_spec(spec)
        except SpecError as exc:
            raise SpecError(exc.problems, source=source) from None
    return spec


def dump_spec(spec: Spec) -> dict[str, Any]:
    """Return the config.json object of ``spec`` (``None`` fields omitted, extra keys kept)."""
    data: dict[str, Any] = converter.unstructure(spec, Spec)
    return data


#: The most of a config.json :func:`read_spec_file` reads: room for the indentation of a
#: spec that a sandbox takes (:data:`MAX_SPEC_BYTES` of JSON without spaces).
MAX_SPEC_FILE_BYTES = 8 * MAX_SPEC_BYTES


def read_spec_file(path: str | os.PathLike[str], *, validate: bool = True) -> Spec:
    """Read and load a config.json file; an unreadable file is a :class:`SpecError` too."""
    try:
        # Never waited on (a FIFO), nor read past what a sandbox takes (a device, a huge
        # file): those are refused as the document is.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SpecError([("", "not a regular file")], source=str(path))
            text = f.read(MAX_SPEC_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError([("", f"cannot read: {exc.strerror or exc}")], source=str(path)) from None
    if len(text) > MAX_SPEC_FILE_BYTES:  # (what a sandbox takes is counted without spaces)
        size = f"{info.st_size} bytes, over the {MAX_SPEC_FILE_BYTES} read of a config.json"
        raise SpecError([("", f"the spec is too large: {size}")], source=str(path))
    return load_spec(text, validate=validate, source=str(path))


def write_spec_file(path: str | os.PathLike[str], spec: Spec) -> None:
    """Write ``spec`` as a config.json file atomically (temporary file, then rename)."""
    target = Path(path)
    text = json.dumps(dump_spec(spec), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
