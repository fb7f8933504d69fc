"""Device rules as a cgroup v2 eBPF program (``BPF_PROG_TYPE_CGROUP_DEVICE``), as pure data.

cgroup v2 has no devices controller: a program attached to the cgroup decides
every device access (``open`` for read/write, ``mknod``) from the device's type,
major and minor and the access asked for; returning 0 fails it with ``EPERM``.

The rules keep cgroup v1's meaning, as runc's device filter does
(:func:`device_policy` emulates v1): they apply in order, so a later rule wins
over an earlier one; a type ``a`` rule resets everything (deny: nothing is
allowed but what follows, allow: everything is); ``None`` major or minor is a
wildcard; access is letters of ``rwm``. The policy starts as deny-all. Each
remaining exception is one block of the program. An allow exception matches an
access that it fully covers (as v1's allow list: ``rw`` needs a rule with both);
a deny exception matches an access that overlaps it (as v1's deny list). A deny
rule that would punch a hole in a wildcard exception (deny ``c 1:3`` after allow
``c *:*``) is refused with :class:`SpecError`: v1 silently ignores it.

Standard library only; no syscalls (``sandboxrt._os.syscalls`` loads the
program, ``sandboxrt._os.cgroups.v2`` attaches it).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from typing import Protocol

from sandboxrt.errors import SpecError

__all__ = [
    "ACC_MKNOD",
    "ACC_READ",
    "ACC_WRITE",
    "DEV_BLOCK",
    "DEV_CHAR",
    "LICENSE",
    "DeviceException",
    "DevicePolicy",
    "DeviceRuleLike",
    "Insn",
    "assemble",
    "compile_rules",
    "device_policy",
    "encode",
]

#: ``BPF_DEVCG_ACC_*``: the access bits in the upper half of ``access_type``.
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
#: ``BPF_DEVCG_DEV_*``: the device type in the lower half of ``access_type``.
DEV_BLOCK, DEV_CHAR = 1, 2
_ALL_ACCESS = ACC_MKNOD | ACC_READ | ACC_WRITE
_ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}
#: The program's license string (no GPL-only helper is called).
LICENSE = "Apache-2.0"

# eBPF opcodes (linux/bpf_common.h, linux/bpf.h).
_LDX, _ALU32, _JMP, _JMP32 = 0x01, 0x04, 0x05, 0x06
_W, _MEM = 0x00, 0x60
_K, _X = 0x00, 0x08
_AND, _RSH, _MOV = 0x50, 0x70, 0xB0
_JEQ, _JNE, _EXIT = 0x10, 0x50, 0x90
# Registers: R0 the verdict, R1 the context (then scratch), R2-R5 the access's fields.
_R0, _R1, _TYPE, _ACCESS, _MAJOR, _MINOR = 0, 1, 2, 3, 4, 5


class DeviceRuleLike(Protocol):
    """One device rule (``sandboxrt._os.cgroups.DeviceRule`` is one)."""

    @property
    def allow(self) -> bool: ...
    @property
    def type(self) -> str: ...
    @property
    def major(self) -> int | None: ...
    @property
    def minor(self) -> int | None: ...
    @property
    def access(self) -> str: ...


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceException:
    """An exception to the default: a device type, major and minor (``None``: any), access."""

    type: int
    major: int | None
    minor: int | None
    access: int


@dataclasses.dataclass(frozen=True, slots=True)
class DevicePolicy:
    """What a rule list comes to: a default and the exceptions to it, in a stable order."""

    default_allow: bool
    exceptions: tuple[DeviceException, ...] = ()


def _bits(access: str) -> int:
    bits = 0
    for letter in access:
        bits |= _ACCESS_BITS[letter]
    return bits


def device_policy(rules: Iterable[DeviceRuleLike]) -> DevicePolicy:
    """Apply ``rules`` in order, as cgroup v1 does, starting from deny-all."""
    default_allow = False
    table: dict[tuple[int, int | None, int | None], int] = {}
    for rule in rules:
        if rule.type == "a":
            default_allow, table = rule.allow, {}
            continue
        kind = _TYPES[rule.type]
        key = (kind, rule.major, rule.minor)
        access = _bits(rule.access)
        if rule.allow != default_allow:
            table[key] = table.get(key, 0) | access
            continue
        for wider in ((kind, None, rule.minor), (kind, rule.major, None), (kind, None, None)):
            if wider != key and table.get(wider, 0) & access:
                raise SpecError(
                    [
                        (
                            "linux.resources.devices",
                            f"rule {_show(rule)} cannot take effect: it would punch a hole "
                            f"in the wider rule {_show_key(wider, table[wider])}",
                        )
                    ]
                )
        left = table.pop(key, 0) & ~access
        if left:
            table[key] = left
    order = sorted(table, key=lambda k: (_num(k[1]), _num(k[2]), k[0]))
    return DevicePolicy(default_allow, tuple(DeviceException(*key, table[key]) for key in order))


def _num(value: int | None) -> int:
    return -1 if value is None else value


def _show(rule: DeviceRuleLike) -> str:
    verb = "allow" if rule.allow else "deny"
    return f"{verb} {rule.type} {_star(rule.major)}:{_star(rule.minor)} {rule.access}"


def _show_key(key: tuple[int, int | None, int | None], access: int) -> str:
    kind = "b" if key[0] == DEV_BLOCK else "c"
    letters = "".join(c for c, bit in _ACCESS_BITS.items() if access & bit)
    return f"{kind} {_star(key[1])}:{_star(key[2])} {letters}"


def _star(value: int | None) -> str:
    return "*" if value is None else str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Insn:
    """One eBPF instruction (``struct bpf_insn``)."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        """The 8 bytes the kernel reads (little-endian, as on every supported machine)."""
        regs = (self.src << 4) | self.dst
        return struct.pack("<BBhI", self.code, regs, self.off, self.imm & 0xFFFFFFFF)


def _load(dst: int, offset: int) -> Insn:
    return Insn(_LDX | _MEM | _W, dst, _R1, offset)


def _exit_with(verdict: bool) -> list[Insn]:
    return [Insn(_ALU32 | _MOV | _K, _R0, imm=int(verdict)), Insn(_JMP | _EXIT)]


def _block(exception: DeviceException, allow: bool) -> list[Insn]:
    """Return ``allow`` if the access matches ``exception``; else fall through."""
    tests: list[Insn] = [Insn(_JMP32 | _JNE | _K, _TYPE, imm=exception.type)]
    if exception.access != _ALL_ACCESS:
        tests += [
            Insn(_ALU32 | _MOV | _X, _R1, _ACCESS),
            Insn(_ALU32 | _AND | _K, _R1, imm=exception.access),
        ]
        if allow:  # the access asked for must be covered: (access & rule) != access skips
            tests.append(Insn(_JMP32 | _JNE | _X, _R1, _ACCESS))
        else:  # any overlap denies: (access & rule) == 0 skips
            tests.append(Insn(_JMP32 | _JEQ | _K, _R1, imm=0))
    if exception.major is not None:
        tests.append(Insn(_JMP32 | _JNE | _K, _MAJOR, imm=exception.major))
    if exception.minor is not None:
        tests.append(Insn(_JMP32 | _JNE | _K, _MINOR, imm=exception.minor))
    length = len(tests) + 2
    # Every test jumps to the first instruction after the block when it fails.
    block = [
        dataclasses.replace(insn, off=length - (i + 1)) if insn.code & 0x07 == _JMP32 else insn
        for i, insn in enumerate(tests)
    ]
    return block + _exit_with(allow)


def assemble(policy: DevicePolicy) -> tuple[Insn, ...]:
    """The program of ``policy``: read the context, one block per exception, the default."""
    insns = [
        _load(_TYPE, 0),
        Insn(_ALU32 | _AND | _K, _TYPE, imm=0xFFFF),
        _load(_ACCESS, 0),
        Insn(_ALU32 | _RSH | _K, _ACCESS, imm=16),
        _load(_MAJOR, 4),
        _load(_MINOR, 8),
    ]
    for exception in policy.exceptions:
        insns += _block(exception, not policy.default_allow)
    insns += _exit_with(policy.default_allow)
    return tuple(insns)


def encode(insns: Iterable[Insn]) -> bytes:
    """The program as the kernel takes it (``struct bpf_insn[]``)."""
    return b"".join(insn.encode() for insn in insns)


def compile_rules(rules: Iterable[DeviceRuleLike]) -> bytes:
    """``rules`` as an encoded ``BPF_PROG_TYPE_CGROUP_DEVICE`` program."""
    return encode(assemble(device_policy(rules)))
