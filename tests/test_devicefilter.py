"""The cgroup v2 device program: rule semantics, instruction encoding, and what it decides.

The program is run here by a small interpreter of the instructions it uses,
over every combination of device type, numbers and access, and compared with
cgroup v1's rules written out independently. The kernel's own verdicts are
checked in tests/test_cgroups.py (a real cgroup2 directory).
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxrt import _cgroup
from sandboxrt._core import devicefilter
from sandboxrt._core.devicefilter import (
    ACC_MKNOD,
    ACC_READ,
    ACC_WRITE,
    DEV_BLOCK,
    DEV_CHAR,
    DeviceException,
    DevicePolicy,
    Insn,
    assemble,
    compile_rules,
    device_policy,
)
from sandboxrt._core.spec import dump_spec
from sandboxrt._core.spec_default import default_spec
from sandboxrt._os.cgroups import DeviceRule
from sandboxrt.errors import SpecError

R, W, M = ACC_READ, ACC_WRITE, ACC_MKNOD


def deny_all() -> DeviceRule:
    return DeviceRule(False, "a", None, None, "rwm")


# -- encoding --------------------------------------------------------------------------------


def test_instruction_encoding_is_struct_bpf_insn() -> None:
    # r2 = *(u32 *)(r1 + 4): code 0x61, dst 2 (low nibble), src 1 (high nibble)
    assert Insn(0x61, dst=2, src=1, off=4).encode() == bytes([0x61, 0x12, 4, 0, 0, 0, 0, 0])
    # if w4 != 0xfffffffe goto +3 (JMP32 | JNE | K): the immediate keeps its 32 bits
    assert Insn(0x56, dst=4, off=3, imm=0xFFFFFFFE).encode() == bytes.fromhex("56040300feffffff")
    assert Insn(0x95).encode() == bytes([0x95]) + bytes(7)
    assert struct.unpack("<BBhi", Insn(0x56, off=-2, imm=-1).encode())[2:] == (-2, -1)


def test_the_program_of_one_rule_instruction_by_instruction() -> None:
    policy = DevicePolicy(False, (DeviceException(DEV_CHAR, 1, 5, R),))
    program = [(i.code, i.dst, i.src, i.off, i.imm) for i in assemble(policy)]
    assert program == [
        (0x61, 2, 1, 0, 0),  # r2 = access_type
        (0x54, 2, 0, 0, 0xFFFF),  # w2 &= 0xffff: the device type
        (0x61, 3, 1, 0, 0),  # r3 = access_type
        (0x74, 3, 0, 0, 16),  # w3 >>= 16: the access
        (0x61, 4, 1, 4, 0),  # r4 = major
        (0x61, 5, 1, 8, 0),  # r5 = minor
        (0x56, 2, 0, 7, DEV_CHAR),  # if w2 != char goto default
        (0xBC, 1, 3, 0, 0),  # w1 = w3
        (0x54, 1, 0, 0, R),  # w1 &= r
        (0x5E, 1, 3, 4, 0),  # if w1 != w3 goto default (asked for more than r)
        (0x56, 4, 0, 3, 1),  # if w4 != 1 goto default
        (0x56, 5, 0, 2, 5),  # if w5 != 5 goto default
        (0xB4, 0, 0, 0, 1),  # w0 = 1 (allow)
        (0x95, 0, 0, 0, 0),  # exit
        (0xB4, 0, 0, 0, 0),  # default: w0 = 0 (deny)
        (0x95, 0, 0, 0, 0),
    ]
    assert compile_rules([deny_all(), DeviceRule(True, "c", 1, 5, "r")]) == b"".join(
        i.encode() for i in assemble(policy)
    )


def test_wildcards_and_full_access_need_no_test() -> None:
    policy = DevicePolicy(False, (DeviceException(DEV_CHAR, 136, None, R | W | M),))
    block = assemble(policy)[6:]
    assert [i.code for i in block] == [0x56, 0x56, 0xB4, 0x95, 0xB4, 0x95]
    assert (block[0].off, block[1].off) == (3, 2)  # both skip to the default


def test_deny_exceptions_match_any_overlap() -> None:
    policy = device_policy([DeviceRule(True, "a"), DeviceRule(False, "c", 1, 3, "w")])
    assert policy == DevicePolicy(True, (DeviceException(DEV_CHAR, 1, 3, W),))
    codes = [i.code for i in assemble(policy)[6:10]]
    assert codes == [0x56, 0xBC, 0x54, 0x16]  # ... if w1 == 0 goto next: no overlap


# -- semantics: cgroup v1's, as runc emulates it -------------------------------------------


def test_later_rules_win_and_accesses_merge() -> None:
    rules = [
        deny_all(),
        DeviceRule(True, "c", 1, 3, "r"),
        DeviceRule(True, "c", 1, 3, "w"),  # merges: c 1:3 rw
        DeviceRule(True, "c", 1, 5, "rwm"),
        DeviceRule(False, "c", 1, 5, "w"),  # takes w back: c 1:5 rm
        DeviceRule(True, "b", 8, None, "m"),
        DeviceRule(False, "c", 1, 9, "rwm"),  # nothing to take back
    ]
    assert device_policy(rules) == DevicePolicy(
        False,
        (
            DeviceException(DEV_CHAR, 1, 3, R | W),
            DeviceException(DEV_CHAR, 1, 5, R | M),
            DeviceException(DEV_BLOCK, 8, None, M),
        ),
    )


def test_an_a_rule_resets_everything_before_it() -> None:
    rules = [deny_all(), DeviceRule(True, "c", 1, 3), DeviceRule(True, "a"), deny_all()]
    assert device_policy(rules) == DevicePolicy(False, ())
    assert device_policy([DeviceRule(True, "c", 1, 3), DeviceRule(True, "a")]) == DevicePolicy(
        True, ()
    )
    assert device_policy([]) == DevicePolicy(False, ())  # as runc: deny unless allowed


def test_punching_a_hole_in_a_wildcard_rule_is_refused() -> None:
    rules = [deny_all(), DeviceRule(True, "c", None, None, "rwm"), DeviceRule(False, "c", 1, 3)]
    with pytest.raises(SpecError, match=r"deny c 1:3 rwm .* wider rule c \*:\* mrw"):
        device_policy(rules)
    # A deny of an access the wildcard does not hold is fine.
    partial = [
        deny_all(),
        DeviceRule(True, "c", None, None, "m"),
        DeviceRule(False, "c", 1, 3, "r"),
    ]
    assert device_policy(partial).exceptions == (DeviceException(DEV_CHAR, None, None, M),)


def run(program: tuple[Insn, ...], kind: int, major: int, minor: int, access: int) -> int:
    """Interpret the instructions the assembler emits, as the kernel would run them."""
    ctx = struct.pack("<III", (access << 16) | kind, major, minor)
    regs = [0] * 11
    pc = 0
    while True:
        insn = program[pc]
        pc += 1
        code, dst, src, imm = insn.code, insn.dst, insn.src, insn.imm & 0xFFFFFFFF
        if code == 0x61:
            regs[dst] = struct.unpack_from("<I", ctx, insn.off)[0]
        elif code in (0x54, 0x74, 0xB4, 0xBC):
            value = regs[src] if code == 0xBC else imm
            op = {0x54: lambda a, b: a & b, 0x74: lambda a, b: a >> b}.get(code)
            regs[dst] = (op(regs[dst], value) if op else value) & 0xFFFFFFFF
        elif code in (0x56, 0x5E, 0x16):
            other = regs[src] if code == 0x5E else imm
            taken = (regs[dst] & 0xFFFFFFFF) != other
            pc += insn.off if (taken if code != 0x16 else not taken) else 0
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def v1_allows(policy: DevicePolicy, kind: int, major: int, minor: int, access: int) -> bool:
    """cgroup v1's check (security/device_cgroup.c), written out on its own."""

    def hit(ex: DeviceException) -> bool:
        return (
            ex.type == kind
            and ex.major in (None, major)
            and ex.minor in (None, minor)
            and (access & ~ex.access == 0 if not policy.default_allow else access & ex.access != 0)
        )

    matched = any(hit(ex) for ex in policy.exceptions)
    return not matched if policy.default_allow else matched


NUMBERS = [0, 1, 3, 5, 8, 136, 0xFFFFFFFF]
ACCESSES = list(range(1, 8))

rule_strategy = st.builds(
    DeviceRule,
    allow=st.booleans(),
    type=st.sampled_from(["a", "b", "c", "c"]),
    major=st.sampled_from([None, 1, 8, 136, 0xFFFFFFFF]),
    minor=st.sampled_from([None, 3, 5, 0]),
    access=st.sampled_from(["r", "w", "m", "rw", "rm", "wm", "rwm"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(rule_strategy, max_size=8))
def test_the_program_decides_as_cgroup_v1(rules: list[DeviceRule]) -> None:
    try:
        policy = device_policy(rules)
    except SpecError:
        return
    program = assemble(policy)
    for kind, major, minor, access in itertools.product(
        (DEV_BLOCK, DEV_CHAR), NUMBERS, NUMBERS[:4], ACCESSES
    ):
        want = v1_allows(policy, kind, major, minor, access)
        assert run(program, kind, major, minor, access) == int(want), (kind, major, minor, access)


def test_the_default_spec_program() -> None:
    spec = dump_spec(default_spec(["sh"]))
    rules = _cgroup.resources_for(spec).devices
    program = assemble(device_policy(rules))
    size = len(devicefilter.encode(program))
    assert size == 8 * len(program) and len(program) < 100
    # /dev/null rw, /dev/pts/N rw and mknod of anything; not /dev/sda (b 8:0) nor /dev/mem (c 1:1).
    assert run(program, DEV_CHAR, 1, 3, R | W) == 1
    assert run(program, DEV_CHAR, 136, 7, R | W) == 1
    assert run(program, DEV_BLOCK, 8, 0, M) == 1
    assert run(program, DEV_BLOCK, 8, 0, R) == 0
    assert run(program, DEV_CHAR, 1, 1, R) == 0
    assert run(program, DEV_CHAR, 10, 229, R) == 0  # no /dev/fuse in the default spec


def test_a_hole_is_refused_early_on_both_drivers() -> None:
    """A deny rule inside a wider allow rule: v1's devices controller ignored it (the
    container opened the device denied), as runc refuses it."""
    holes = {
        "linux": {
            "resources": {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "access": "rwm"},
                ]
            }
        }
    }
    # runc's defaults then deny nothing: no hole.
    assert _cgroup.resources_for(holes).devices[1] == DeviceRule(True, "c", None, None)
    holes["linux"]["resources"]["devices"].append(
        {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    )
    with pytest.raises(SpecError, match="punch a hole"):
        _cgroup.resources_for(holes)
