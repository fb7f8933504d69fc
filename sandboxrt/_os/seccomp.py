"""seccomp filters compiled to classic BPF by the system's libseccomp, through ctypes.

Runs in the library process only: the init loads the compiled program with
``seccomp(2)`` (:func:`sandboxrt._os.syscalls.seccomp_set_filter`) and never
needs libseccomp. Standard library only; libseccomp is loaded on first use,
not at import. The spec's ``linux.seccomp`` section becomes BPF in two steps:

* :func:`build_filter` makes the libseccomp context: default action,
  architectures, flags and rules;
* :meth:`Filter.export` has libseccomp generate the program
  (``seccomp_export_bpf``): the ``struct sock_filter`` array the kernel takes.

:func:`compile_bpf` does both and caches the program per process, keyed by
the section's canonical JSON, the libseccomp version and the machine, so a
profile (the default one above all) is compiled once per process.

Choices, as runc makes them but where noted: syscall names this libseccomp does
not know are skipped, and so are its unknown architectures (runc refuses those;
a call from one is killed all the same, as from any architecture the filter
does not list); what it refuses (two rules with the same conditions and other
actions, an errno of 4095 or more) is a :class:`SpecError`; a system call newer than any it
knows (on the native architecture) fails with ``ENOSYS``, not the default
action, so that a program falls back as on an older kernel
(:func:`enosys_stub`, unless the default action allows); rules whose action is the default
action are skipped; conditions on the same argument within one rule are
OR-ed (one rule each, as libseccomp refuses two on one argument), others
AND-ed; ``SCMP_ACT_ERRNO`` and ``SCMP_ACT_TRACE`` without ``errnoRet``
return ``EPERM``. The init sets ``no_new_privs`` itself, from
``process.noNewPrivileges``.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import hashlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from sandboxrt._forksafe import ForkSafeLock
from sandboxrt.errors import MissingFeatureError, SpecError

__all__ = [
    "ACTIONS",
    "FLAG_ATTRIBUTES",
    "MAX_INSTRUCTIONS",
    "OPERATORS",
    "Filter",
    "StubArch",
    "action_value",
    "arch_name",
    "build_filter",
    "compile_bpf",
    "enosys_stub",
    "load_library",
]

#: OCI action name → libseccomp ``SCMP_ACT_*`` value (the low 16 bits carry the errno).
ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
    "SCMP_ACT_NOTIFY": 0x7FC00000,
}

#: OCI operator name → libseccomp ``enum scmp_compare``.
OPERATORS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

#: OCI ``linux.seccomp.flags`` → libseccomp ``enum scmp_filter_attr`` set to 1.
FLAG_ATTRIBUTES: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": 4,
    "SECCOMP_FILTER_FLAG_LOG": 6,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 7,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 10,
}

_NR_SCMP_ERROR = -1
_LIBRARY_NAMES: tuple[str, ...] = ("libseccomp.so.2",)
_library: ctypes.CDLL | None = None
#: How many compiled programs :func:`compile_bpf` keeps (least recently used go first).
_CACHE_SIZE = 16
_cache: collections.OrderedDict[tuple[str, str, str], bytes] = collections.OrderedDict()
_cache_lock = ForkSafeLock()


class _ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    """``struct scmp_version``."""

    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def action_value(action: str, errno_ret: int | None = None) -> int:
    """The libseccomp value of an OCI action; ``ERRNO``/``TRACE`` carry ``errno_ret`` or EPERM."""
    try:
        value = ACTIONS[action]
    except KeyError:
        raise ValueError(f"unknown seccomp action {action!r}") from None
    if action in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        value |= (errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF
    return value


def arch_name(arch: str) -> str:
    """libseccomp's name of an OCI architecture: ``SCMP_ARCH_X86_64`` → ``x86_64``."""
    return arch.removeprefix("SCMP_ARCH_").lower()


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    ctx, u32, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    signatures: dict[str, tuple[list[Any], Any]] = {
        "seccomp_init": ([u32], ctx),
        "seccomp_release": ([ctx], None),
        "seccomp_export_bpf": ([ctx, i32], i32),
        "seccomp_version": ([], ctypes.POINTER(_Version)),
        "seccomp_attr_set": ([ctx, i32, u32], i32),
        "seccomp_arch_add": ([ctx, u32], i32),
        "seccomp_arch_resolve_name": ([ctypes.c_char_p], u32),
        "seccomp_syscall_resolve_name": ([ctypes.c_char_p], i32),
        "seccomp_syscall_resolve_name_arch": ([u32, ctypes.c_char_p], i32),
        "seccomp_arch_native": ([], u32),
        "seccomp_rule_add_array": ([ctx, u32, i32, ctypes.c_uint, ctypes.POINTER(_ArgCmp)], i32),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype
    return lib


def load_library() -> ctypes.CDLL:
    """The system's libseccomp; :class:`MissingFeatureError` if it cannot be loaded."""
    global _library
    if _library is not None:
        return _library
    errors = []
    for name in _LIBRARY_NAMES:
        try:
            _library = _bind(ctypes.CDLL(name, use_errno=True))
            return _library
        except (OSError, AttributeError) as exc:
            errors.append(str(exc))
    from ctypes.util import find_library  # slow (it may run ldconfig): only as a fallback

    found = find_library("seccomp")
    if found is not None:
        try:
            _library = _bind(ctypes.CDLL(found, use_errno=True))
            return _library
        except (OSError, AttributeError) as exc:
            errors.append(str(exc))
    raise MissingFeatureError(
        "libseccomp",
        "linux.seccomp needs the system's libseccomp.so.2 (apt-get install libseccomp2)"
        + (f"; {'; '.join(errors)}" if errors else ""),
    )


def _check(result: int, what: str) -> None:
    if result < 0:
        raise OSError(-result, f"{what}: {os.strerror(-result)}")


def _refused(result: int, where: str, what: str) -> None:
    """A :class:`SpecError` at ``where`` if libseccomp refused part of a profile (a
    negative ``result``), as runc refuses it."""
    if result < 0:
        raise SpecError([(where, f"{what} (libseccomp: {os.strerror(-result)})")])


class Filter:
    """A built libseccomp filter: :meth:`export` its BPF program, then :meth:`release` it."""

    def __init__(self, lib: ctypes.CDLL, ctx: int) -> None:
        self._lib = lib
        self._ctx: int | None = ctx

    def export(self) -> bytes:
        """The filter as classic BPF: ``struct sock_filter`` records, 8 bytes each."""
        if self._ctx is None:
            raise ValueError("the seccomp filter was released")
        fd = os.memfd_create("sandboxrt-seccomp", os.MFD_CLOEXEC)
        try:
            _check(self._lib.seccomp_export_bpf(self._ctx, fd), "seccomp_export_bpf")
            size = os.fstat(fd).st_size
            chunks = []
            offset = 0
            while offset < size:
                chunk = os.pread(fd, size - offset, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
        finally:
            os.close(fd)
        program = b"".join(chunks)
        if not program or len(program) % 8:
            raise OSError(errno.EINVAL, f"seccomp_export_bpf wrote {len(program)} bytes")
        return program

    def release(self) -> None:
        """Free the libseccomp context (idempotent)."""
        if self._ctx is not None:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None


def _conditions(args: Sequence[Mapping[str, Any]]) -> list[list[_ArgCmp]]:
    """The ``scmp_arg_cmp`` arrays of one OCI rule: one per rule libseccomp needs."""
    cmps = [
        _ArgCmp(
            arg["index"],
            OPERATORS[arg["op"]],
            arg["value"] & 2**64 - 1,
            (arg.get("valueTwo") or 0) & 2**64 - 1,
        )
        for arg in args
    ]
    if len({arg["index"] for arg in args}) == len(args):
        return [cmps]
    return [[cmp] for cmp in cmps]


def build_filter(section: Mapping[str, Any]) -> Filter:
    """Compile a spec's ``linux.seccomp`` with libseccomp into a :class:`Filter`."""
    lib = load_library()
    default = action_value(section["defaultAction"], section.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SpecError([("linux.seccomp.defaultAction", "libseccomp refuses it")])
    result = Filter(lib, ctx)
    try:
        for arch in section.get("architectures") or []:
            token = lib.seccomp_arch_resolve_name(arch_name(arch).encode())
            if token == 0:
                continue  # unknown to this libseccomp
            rc = lib.seccomp_arch_add(ctx, token)
            if rc != -errno.EEXIST:
                _refused(rc, "linux.seccomp.architectures", f"libseccomp refuses {arch}")
        # The flags do not change the program (the init passes them to seccomp(2)), but
        # setting them asks libseccomp whether this kernel supports them.
        for flag in section.get("flags") or []:
            if lib.seccomp_attr_set(ctx, FLAG_ATTRIBUTES[flag], 1) < 0:
                raise MissingFeatureError(
                    f"seccomp flag {flag}", "this libseccomp or kernel does not support it"
                )
        for index, rule in enumerate(section.get("syscalls") or []):
            action = action_value(rule["action"], rule.get("errnoRet"))
            if action == default:
                continue
            for cmps in _conditions(rule.get("args") or []):
                array = (_ArgCmp * max(1, len(cmps)))(*cmps)
                for name in rule["names"]:
                    number = lib.seccomp_syscall_resolve_name(os.fsencode(name))
                    if number == _NR_SCMP_ERROR:
                        continue  # unknown syscall name
                    rc = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array)
                    why = (  # (one with the same conditions and another action: runc's words)
                        "conflicts with an earlier rule" if rc == -errno.EEXIST else "is refused"
                    )
                    _refused(rc, f"linux.seccomp.syscalls[{index}]", f"its rule for {name} {why}")
    except BaseException:
        result.release()
        raise
    return result


#: Classic BPF opcodes (``linux/filter.h``) and ``struct seccomp_data`` offsets.
_LD_ABS_W, _JEQ_K, _JGT_K, _JGE_K, _RET_K = 0x20, 0x15, 0x25, 0x35, 0x06
_DATA_NR, _DATA_ARCH = 0, 4
_SECCOMP_RET_ERRNO = 0x00050000
#: The most instructions the kernel takes in a filter (``BPF_MAXINSNS``).
MAX_INSTRUCTIONS = 4096
#: ``AUDIT_ARCH_X86_64``, whose x32 system calls carry this bit in their number, and
#: libseccomp's token for x32 (``SCMP_ARCH_X32``), which has no audit arch of its own.
_AUDIT_ARCH_X86_64 = 0xC000003E
_SCMP_ARCH_X32 = 0x4000003E
_X32_SYSCALL_BIT = 0x40000000

#: One architecture of the stub: its audit arch, the highest number libseccomp knows
#: there, and (x86_64) the highest x32 one, if the filter takes x32 calls.
StubArch = tuple[int, int, int | None]


def enosys_stub(arches: Sequence[StubArch]) -> bytes:
    """BPF to put before a filter (runc's "patchbpf"): a system call of one of ``arches``
    numbered above the highest that the filter's libseccomp knows there returns
    ``ENOSYS``, as on a kernel without it, rather than the filter's default action; any
    other goes on to the filter, which loads what it needs itself. On x86_64, numbers
    with the x32 bit are x32's (up to ``-1``): judged against x32's highest, if given,
    else left to the filter."""
    # (code, k, where to go if true, if false): labels, or None for the next instruction.
    code: list[tuple[int, int, str | None, str | None]] = [(_LD_ABS_W, _DATA_ARCH, None, None)]
    for i, (audit_arch, highest, highest_x32) in enumerate(arches):
        later = f"arch{i + 1}" if i + 1 < len(arches) else "filter"
        code.append((_JEQ_K, audit_arch, None, later))
        code.append((_LD_ABS_W, _DATA_NR, None, None))
        if audit_arch == _AUDIT_ARCH_X86_64:
            code.append((_JGE_K, _X32_SYSCALL_BIT, f"x32-{i}", None))
        code.append((_JGT_K, highest, "enosys", "filter"))
        if audit_arch == _AUDIT_ARCH_X86_64 and highest_x32 is not None:
            code.append((_JGT_K, _X32_SYSCALL_BIT | highest_x32, "enosys", "filter"))
        elif audit_arch == _AUDIT_ARCH_X86_64:  # (the filter takes no x32 call: its say)
            code.append((_JGE_K, 0, "filter", "filter"))
    code.append((_RET_K, _SECCOMP_RET_ERRNO | errno.ENOSYS, None, None))
    # Where each label is: an architecture's check, x32's, the return, the filter.
    labels, arch = {"filter": len(code), "enosys": len(code) - 1}, 0
    for index, (op, _, jt, _) in enumerate(code):
        if op == _JEQ_K:
            labels[f"arch{arch}"] = index
            arch += 1
        if op == _JGE_K and jt is not None and jt.startswith("x32-"):
            labels[jt] = index + 2  # (after the native range check)

    def offset(index: int, label: str | None) -> int:
        return 0 if label is None else labels[label] - index - 1

    return b"".join(
        op.to_bytes(2, "little") + bytes((offset(i, jt), offset(i, jf))) + k.to_bytes(4, "little")
        for i, (op, k, jt, jf) in enumerate(code)
    )


def _highest_named(lib: ctypes.CDLL, arch: int, names: Sequence[str]) -> int | None:
    """The highest number ``names`` (the profile's system calls) have on ``arch`` (a
    token), without x32's bit; None if none has one there. As runc takes it: calls
    past the profile's newest are newer than its author knew, whatever their numbering
    (ARM's private calls from 0xf0000, MIPS's from 4000)."""
    numbers = [lib.seccomp_syscall_resolve_name_arch(arch, os.fsencode(name)) for name in names]
    known = [number & ~_X32_SYSCALL_BIT for number in numbers if number >= 0]
    return max(known) if known else None


def _stub_arches(lib: ctypes.CDLL, section: Mapping[str, Any]) -> list[StubArch]:
    """The architectures of the stub: the native one and the profile's (x32 folded into
    x86_64, whose audit arch its calls carry), each with the highest number the
    profile names there (one where it names none is left out: all to the filter)."""
    tokens = [lib.seccomp_arch_native()]
    for name in section.get("architectures") or []:
        token = lib.seccomp_arch_resolve_name(arch_name(name).encode())
        if token and token not in tokens:
            tokens.append(token)
    names = sorted({name for rule in section.get("syscalls") or [] for name in rule["names"]})
    x32 = _highest_named(lib, _SCMP_ARCH_X32, names) if _SCMP_ARCH_X32 in tokens else None
    arches: list[StubArch] = []
    for token in tokens:
        highest = _highest_named(lib, token, names)
        if token != _SCMP_ARCH_X32 and highest is not None:
            arches.append((token, highest, x32 if token == _AUDIT_ARCH_X86_64 else None))
    return arches


def _library_version(lib: ctypes.CDLL) -> str:
    version = lib.seccomp_version().contents
    return f"{version.major}.{version.minor}.{version.micro}"


def compile_bpf(section: Mapping[str, Any]) -> bytes:
    """A spec's ``linux.seccomp`` as a classic BPF program, compiled once per process.

    The cache key is the SHA-256 of the section's canonical JSON, with the
    libseccomp version and the machine: what decides the program.
    """
    lib = load_library()
    canonical = json.dumps(section, sort_keys=True, separators=(",", ":"))
    key = (
        hashlib.sha256(canonical.encode()).hexdigest(),
        _library_version(lib),
        platform.machine(),
    )
    with _cache_lock:
        program = _cache.get(key)
        if program is not None:
            _cache.move_to_end(key)
            return program
    built = build_filter(section)
    try:
        program = built.export()
    finally:
        built.release()
    if len(program) > MAX_INSTRUCTIONS * 8:
        problem = (
            f"compiles to {len(program) // 8} BPF instructions; the kernel takes {MAX_INSTRUCTIONS}"
        )
        raise SpecError([("linux.seccomp", problem)])
    arches = _stub_arches(lib, section)
    if section["defaultAction"] not in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG") and arches:
        stub = enosys_stub(arches)
        if len(stub) + len(program) <= MAX_INSTRUCTIONS * 8:  # (else the filter as it is)
            program = stub + program
    with _cache_lock:
        _cache[key] = program
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return program
