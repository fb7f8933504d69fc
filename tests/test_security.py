"""Capabilities, no_new_privs and seccomp of the container's process, checked from inside.

Every probe is harmless: the calls that must fail change nothing if they
ever succeeded inside the container's own namespaces (a tmpfs mount in its
mount namespace, a port bound in its network namespace).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import logging
import platform
import re
import signal
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import BundleFactory, edit_config, needs_busybox, needs_root, run_output

from sandboxrt import PIPE, Container, FileStore, Status, SubprocessLauncher
from sandboxrt._core.plan import _init_plan, build_container_plan, build_plan
from sandboxrt._core.protocol import InitPlan
from sandboxrt._core.protocol import decode as decode_message
from sandboxrt._core.protocol import encode as encode_message
from sandboxrt._core.seccomp_default import ALLOWED_SYSCALLS, default_profile
from sandboxrt._core.spec import dump_spec
from sandboxrt._core.spec_default import DEFAULT_CAPABILITIES, default_spec
from sandboxrt._core.spec_validate import CAPABILITY_NUMBERS
from sandboxrt._os import capabilities, seccomp, syscalls
from sandboxrt.errors import ExecError, InitError, MissingFeatureError, SpecError

CAP_NAMES = {number: name for name, number in CAPABILITY_NUMBERS.items()}
SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
#: Docker's default capabilities (NET_RAW among them).
DOCKER_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(platform.machine())


# -- helpers ---------------------------------------------------------------------------------


def set_caps(**sets: Iterable[str]) -> Callable[[dict[str, Any]], None]:
    """A config change giving the process exactly ``sets`` (the others empty)."""

    def change(document: dict[str, Any]) -> None:
        document["process"]["capabilities"] = {key: list(value) for key, value in sets.items()}

    return change


def set_seccomp(profile: dict[str, Any] | None) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        if profile is None:
            document["linux"].pop("seccomp", None)
        else:
            document["linux"]["seccomp"] = profile

    return change


def status(out: str) -> dict[str, str]:
    """The ``Name:\\tvalue`` lines of a /proc/PID/status dump."""
    lines = (line.partition(":") for line in out.splitlines())
    return {key: value.strip() for key, _, value in lines}


def cap_sets(out: str) -> dict[str, set[str]]:
    """The five capability sets of a /proc/PID/status dump, as names."""
    fields = status(out)
    return {
        key: {CAP_NAMES.get(n, str(n)) for n in range(64) if int(fields[key], 16) >> n & 1}
        for key in SETS
    }


PYTHON_STATUS = "print(open('/proc/self/status').read())"


def init_plan(spec: dict[str, Any]) -> InitPlan:
    """The init's plan of ``spec``, its seccomp section compiled as the library does."""
    return _init_plan("c", spec, "/b", compile_seccomp=seccomp.compile_bpf)


# -- unit: mappings, plans, profile ----------------------------------------------------------


def test_action_values() -> None:
    assert seccomp.action_value("SCMP_ACT_KILL") == 0
    assert seccomp.action_value("SCMP_ACT_KILL_THREAD") == 0
    assert seccomp.action_value("SCMP_ACT_KILL_PROCESS") == 0x80000000
    assert seccomp.action_value("SCMP_ACT_TRAP") == 0x00030000
    assert seccomp.action_value("SCMP_ACT_ERRNO") == 0x00050000 | errno.EPERM
    assert seccomp.action_value("SCMP_ACT_ERRNO", 38) == 0x00050026
    assert seccomp.action_value("SCMP_ACT_ERRNO", 0) == 0x00050000
    assert seccomp.action_value("SCMP_ACT_TRACE", 7) == 0x7FF00007
    assert seccomp.action_value("SCMP_ACT_TRACE") == 0x7FF00001
    assert seccomp.action_value("SCMP_ACT_LOG") == 0x7FFC0000
    assert seccomp.action_value("SCMP_ACT_ALLOW") == 0x7FFF0000
    assert seccomp.action_value("SCMP_ACT_NOTIFY") == 0x7FC00000
    with pytest.raises(ValueError, match="SCMP_ACT_MAYBE"):
        seccomp.action_value("SCMP_ACT_MAYBE")


def test_operator_and_arch_names() -> None:
    assert seccomp.OPERATORS == {
        "SCMP_CMP_NE": 1,
        "SCMP_CMP_LT": 2,
        "SCMP_CMP_LE": 3,
        "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5,
        "SCMP_CMP_GT": 6,
        "SCMP_CMP_MASKED_EQ": 7,
    }
    assert seccomp.arch_name("SCMP_ARCH_X86_64") == "x86_64"
    assert seccomp.arch_name("SCMP_ARCH_AARCH64") == "aarch64"
    assert seccomp.arch_name("SCMP_ARCH_MIPSEL64N32") == "mipsel64n32"


def test_missing_libseccomp_is_a_missing_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp, "_library", None)
    monkeypatch.setattr(seccomp, "_LIBRARY_NAMES", ("libseccomp-absent.so.0",))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(MissingFeatureError, match="libseccomp") as info:
        seccomp.build_filter({"defaultAction": "SCMP_ACT_ALLOW"})
    assert info.value.feature == "libseccomp"
    with pytest.raises(MissingFeatureError, match="libseccomp"):
        seccomp.compile_bpf({"defaultAction": "SCMP_ACT_ALLOW"})


def test_build_filter_skips_unknown_names_and_ors_one_argument() -> None:
    """Compiles in this process without loading: unknown names, arches and OR-ed conditions."""
    section = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"names": ["read", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["write"], "action": "SCMP_ACT_ERRNO"},  # the default: skipped
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {"index": 0, "op": "SCMP_CMP_EQ", "value": 0},
                    {"index": 0, "op": "SCMP_CMP_EQ", "value": 8},
                ],
            },
        ],
    }
    seccomp.build_filter(section).release()


def test_rules_libseccomp_refuses_are_spec_errors() -> None:
    """Two rules with the same conditions and different errnos: runc refuses it ("file
    exists"); it was a bare FileExistsError, which reads as the id being taken."""
    condition = [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]
    section = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11, "args": condition},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 12, "args": condition},
        ],
    }
    with pytest.raises(SpecError, match=r"syscalls\[1\]: its rule for getppid conflicts") as info:
        seccomp.compile_bpf(section)
    assert not isinstance(info.value, FileExistsError)


def test_build_filter_flags() -> None:
    flags = [
        "SECCOMP_FILTER_FLAG_TSYNC",
        "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    ]
    seccomp.build_filter({"defaultAction": "SCMP_ACT_LOG", "flags": flags}).release()
    spec = dump_spec(default_spec())
    spec["linux"]["seccomp"]["flags"] = flags
    plan = init_plan(spec)
    assert plan.seccomp is not None
    assert plan.seccomp.flags == 1 | 2 | 4  # the SECCOMP_FILTER_FLAG_* bits for seccomp(2)


def test_build_filter_compiles_the_default_profile() -> None:
    spec = dump_spec(default_spec())
    plan = init_plan(spec)
    assert plan.seccomp is not None
    built = seccomp.build_filter(spec["linux"]["seccomp"])
    lib = seccomp.load_library()
    stub = seccomp.enosys_stub(seccomp._stub_arches(lib, spec["linux"]["seccomp"]))
    assert stub + built.export() == bytes.fromhex(plan.seccomp.bpf)
    built.release()
    built.release()
    with pytest.raises(ValueError, match="released"):
        built.export()


def _run_stub(stub: bytes, arch: int, nr: int) -> str:
    """What ``stub`` does with a call: ``"enosys"``, or ``"filter"`` if it falls through."""
    data = {0: nr & 0xFFFFFFFF, 4: arch}
    acc, pc, count = 0, 0, len(stub) // 8
    while pc < count:
        op, jt, jf, k = struct.unpack("<HBBI", stub[pc * 8 : pc * 8 + 8])
        pc += 1
        if op == 0x20:
            acc = data[k]
        elif op == 0x06:
            assert k == 0x00050000 | errno.ENOSYS
            return "enosys"
        else:
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k}[op]
            pc += jt if taken else jf
    assert pc == count, "jumped past the filter's first instruction"
    return "filter"


def test_the_enosys_stub_sends_only_calls_past_the_known_ones_to_enosys() -> None:
    x86_64, i386, aarch64 = 0xC000003E, 0x40000003, 0xC00000B7
    stub = seccomp.enosys_stub([(x86_64, 456, 547), (i386, 462, None)])
    cases = {
        (x86_64, 0): "filter",
        (x86_64, 456): "filter",
        (x86_64, 457): "enosys",
        (x86_64, 0x3FFFFFFF): "enosys",
        (x86_64, 0x40000000 | 547): "filter",  # x32's own
        (x86_64, 0x40000000 | 548): "enosys",
        (x86_64, -1): "enosys",
        (i386, 462): "filter",
        (i386, 463): "enosys",
        (aarch64, 1000): "filter",  # not the stub's: the filter's default
    }
    assert {case: _run_stub(stub, *case) for case in cases} == cases
    # The thresholds are the profile's newest calls, wherever an architecture numbers
    # them: ARM's private calls start at 0xf0000 (set_tls is 0xf0005).
    lib = seccomp.load_library()
    arm = 0x40000028
    profile = {"architectures": ["SCMP_ARCH_ARM"], "syscalls": [{"names": ["read", "set_tls"]}]}
    assert (arm, 0xF0005, None) in seccomp._stub_arches(lib, profile)
    with_arm = seccomp.enosys_stub(seccomp._stub_arches(lib, profile))
    assert _run_stub(with_arm, arm, 0xF0005) == "filter"
    assert _run_stub(with_arm, arm, 0xF0006) == "enosys"
    without_x32 = seccomp.enosys_stub([(x86_64, 456, None)])
    assert _run_stub(without_x32, x86_64, 0x40000000 | 548) == "filter"
    assert _run_stub(without_x32, x86_64, 457) == "enosys"


def test_bpf_program_is_whole_sock_filter_records() -> None:
    """The program is non-empty ``struct sock_filter[]`` (8 bytes each), within BPF_MAXINSNS."""
    program = seccomp.compile_bpf(default_profile(platform.machine()))
    assert program
    assert len(program) % 8 == 0
    assert len(program) // 8 <= 4096
    # The last instruction is a BPF_RET (class 0x06): a program never falls off its end.
    assert int.from_bytes(program[-8:-6], sys.byteorder) & 0x07 == 0x06
    for bad in (b"", program[:-1], program + b"\0"):
        with pytest.raises(ValueError, match="not a seccomp BPF program"):
            syscalls.seccomp_set_filter(bad)


@pytest.mark.parametrize("nnp", [True, False])
def test_plan_ships_the_program(nnp: bool) -> None:
    """The plan carries the compiled program; without no_new_privs it must go in early."""
    spec = dump_spec(default_spec())
    spec["process"]["noNewPrivileges"] = nnp
    plan = init_plan(spec)
    assert plan.seccomp is not None
    assert bytes.fromhex(plan.seccomp.bpf) == seccomp.compile_bpf(spec["linux"]["seccomp"])
    assert plan.seccomp.flags == 0
    assert plan.seccomp.early is not nnp
    del spec["linux"]["seccomp"]
    assert init_plan(spec).seccomp is None


def test_default_profile_compiles_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans of many containers share one compilation per distinct profile."""
    monkeypatch.setattr(seccomp, "_cache", collections.OrderedDict())
    lib = seccomp.load_library()
    exported = []
    original = lib.seccomp_export_bpf

    def counting(ctx: int, fd: int) -> int:
        exported.append(fd)
        return int(original(ctx, fd))

    monkeypatch.setattr(lib, "seccomp_export_bpf", counting)
    spec = dump_spec(default_spec())

    def plan_of(document: dict[str, Any]) -> InitPlan:
        return build_plan(
            container_id="c",
            sandbox_id="c",
            spec=document,
            bundle="/b",
            runtime_root="/run/x",
            compile_seccomp=seccomp.compile_bpf,
        ).init

    plans = [plan_of(spec) for _ in range(5)]
    assert len(exported) == 1
    assert len({p.seccomp for p in plans}) == 1
    # The key is the canonical JSON: the same profile with its keys in another order hits.
    section = spec["linux"]["seccomp"]
    spec["linux"]["seccomp"] = dict(reversed(section.items()))
    plan_of(spec)
    assert len(exported) == 1
    # Another profile is compiled once too.
    spec["linux"]["seccomp"] = {**section, "defaultErrnoRet": errno.EACCES}
    other = plan_of(spec)
    plan_of(spec)
    assert len(exported) == 2
    assert other.seccomp != plans[0].seccomp


def test_capability_mask_ignores_what_the_kernel_lacks() -> None:
    assert capabilities.mask([0, 5, 41, 63], last=40) == 1 | 1 << 5
    assert capabilities.last_cap() == int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def test_plan_capabilities() -> None:
    spec = dump_spec(default_spec())
    plan = init_plan(spec)
    assert plan.capabilities is not None
    numbers = sorted(CAPABILITY_NUMBERS[c] for c in DEFAULT_CAPABILITIES)
    assert plan.capabilities.bounding == plan.capabilities.permitted == numbers
    assert plan.capabilities.inheritable == plan.capabilities.ambient == []
    del spec["process"]["capabilities"]
    plan = init_plan(spec)
    assert plan.capabilities is not None
    assert not any(vars(plan.capabilities).values()), "absent capabilities mean none at all"
    again = decode_message(encode_message(plan), InitPlan)
    assert again == plan


@pytest.mark.parametrize(
    ("caps", "where"),
    [
        ({"bounding": ["CAP_KILL"], "inheritable": ["CAP_CHOWN"]}, "inheritable[0]"),
        ({"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"], "ambient": ["CAP_KILL"]}, "ambient"),
        ({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}, "effective[0]"),
    ],
)
def test_plan_rejects_capabilities_the_kernel_cannot_grant(
    caps: dict[str, list[str]], where: str
) -> None:
    spec = dump_spec(default_spec())
    spec["process"]["capabilities"] = caps
    with pytest.raises(SpecError, match=re.escape(f"process.capabilities.{where}")):
        init_plan(spec)


def test_an_unknown_capability_is_left_out_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OCI: an unknown value "MUST be logged as a warning ... Runtimes SHOULD NOT fail"
    (runc goes on without it: one newer than the runtime or the kernel, say)."""
    spec = dump_spec(default_spec())
    spec["process"]["capabilities"] = {"bounding": ["CAP_KILL", "CAP_NOPE"]}
    with caplog.at_level(logging.WARNING, logger="sandboxrt"):
        plan = init_plan(spec)
    assert plan.capabilities is not None and plan.capabilities.bounding == [5]
    assert any("CAP_NOPE" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("key", ["bounding", "effective", "permitted", "inheritable", "ambient"])
def test_plan_refuses_sys_ptrace_beside_the_supervisor(key: str) -> None:
    # With CAP_SYS_PTRACE the container's processes could open the fds of the supervisor
    # (PID 1 of their PID namespace, not dumpable) through /proc/1/fd, or ptrace it.
    spec = dump_spec(default_spec())
    spec["process"]["capabilities"] = {
        "bounding": ["CAP_KILL", "CAP_SYS_PTRACE"],
        key: ["CAP_KILL", "CAP_SYS_PTRACE"],
    }
    both = ["CAP_KILL", "CAP_SYS_PTRACE"]
    if key == "ambient":
        spec["process"]["capabilities"] |= {"permitted": both, "inheritable": both}
    if key == "effective":  # (only what is permitted can be effective)
        spec["process"]["capabilities"] |= {"permitted": both}
    common = {"bundle": "/b", "compile_seccomp": seccomp.compile_bpf}
    expected = rf'container "c": process\.capabilities: CAP_SYS_PTRACE \(in [a-z, ]*{key}'
    with pytest.raises(SpecError, match=expected) as raised:
        build_plan(container_id="c", sandbox_id="c", spec=spec, runtime_root="/run/x", **common)
    assert "share the host's PID namespace" in str(raised.value)
    with pytest.raises(SpecError, match=r'container "s": .*supervisor') as raised:
        build_container_plan(
            container_id="s", sandbox_id="c", spec=spec, runtime_dir="/run/x/c", **common
        )
    assert "host's PID namespace" not in str(raised.value)  # the pod's root decided that
    # Sharing the host's PID namespace, the supervisor is one host process among others.
    build_container_plan(
        container_id="s",
        sandbox_id="c",
        spec=spec,
        runtime_dir="/run/x/c",
        sandbox_namespaces=("network", "ipc", "uts", "mount"),
        **common,
    )
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "pid"]
    plan = build_plan(container_id="c", sandbox_id="c", spec=spec, runtime_root="/run/x", **common)
    assert plan.init.capabilities is not None
    assert CAPABILITY_NUMBERS["CAP_SYS_PTRACE"] in plan.init.capabilities.bounding


def test_plan_seccomp_round_trips_and_refuses_notify() -> None:
    spec = dump_spec(default_spec())
    plan = init_plan(spec)
    assert decode_message(encode_message(plan), InitPlan) == plan
    spec["linux"]["seccomp"]["syscalls"].append({"names": ["ioctl"], "action": "SCMP_ACT_NOTIFY"})
    with pytest.raises(MissingFeatureError, match="SCMP_ACT_NOTIFY"):
        init_plan(spec)


def test_default_profile_content() -> None:
    profile = default_profile(platform.machine())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == errno.EPERM
    allowed = set(ALLOWED_SYSCALLS)
    assert {"read", "write", "openat", "mmap", "execve", "exit_group", "ptrace"} <= allowed
    denied = {
        "mount", "umount2", "pivot_root", "unshare", "setns", "kexec_load", "init_module",
        "finit_module", "delete_module", "reboot", "swapon", "swapoff", "keyctl", "add_key",
        "request_key", "bpf", "perf_event_open", "userfaultfd", "open_by_handle_at",
        "name_to_handle_at", "iopl", "ioperm", "acct", "settimeofday", "clock_settime",
        "adjtimex", "sethostname", "setdomainname", "fsopen", "move_mount", "open_tree",
        "io_uring_setup", "clone", "clone3", "personality", "socket",
    }  # fmt: skip
    assert not denied & allowed
    by_name = {rule["names"][0]: rule for rule in profile["syscalls"][1:]}
    assert by_name["clone3"]["errnoRet"] == errno.ENOSYS
    assert by_name["clone"]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    assert dump_spec(default_spec())["linux"]["seccomp"] == profile


# -- capabilities ----------------------------------------------------------------------------


@needs_root
@needs_busybox
def test_capability_sets_are_exactly_the_spec(store: FileStore, bundle: BundleFactory) -> None:
    # For root, exec makes permitted = effective = bounding | inheritable | ambient:
    # a spec consistent with that comes out unchanged.
    full = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID"]
    path = edit_config(
        bundle(["cat", "/proc/self/status"]),
        set_caps(
            bounding=full,
            effective=full,
            permitted=full,
            inheritable=["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            ambient=["CAP_NET_BIND_SERVICE"],
        ),
    )
    code, out = run(store, path)
    assert code == 0, out
    assert cap_sets(out) == {
        "CapBnd": set(full),
        "CapEff": set(full),
        "CapPrm": set(full),
        "CapInh": {"CAP_KILL", "CAP_NET_BIND_SERVICE"},
        "CapAmb": {"CAP_NET_BIND_SERVICE"},
    }


@needs_root
@needs_busybox
def test_a_container_that_could_ptrace_its_supervisor_is_refused_and_leaves_nothing(
    store: FileStore, bundle: BundleFactory
) -> None:
    caps = ["CAP_KILL", "CAP_SYS_PTRACE"]
    path = edit_config(bundle(["true"]), set_caps(bounding=caps, effective=caps, permitted=caps))
    with pytest.raises(SpecError, match="CAP_SYS_PTRACE") as raised:
        Container.create("ptrace", path, store=store)
    assert "supervisor" in str(raised.value)
    assert Container.list(store=store) == []
    assert not store.runtime_dir.exists() or not any(store.runtime_dir.iterdir())


@needs_root
@needs_busybox
def test_default_and_absent_capabilities(store: FileStore, bundle: BundleFactory) -> None:
    code, out = run(store, bundle(["cat", "/proc/self/status"]))
    assert code == 0, out
    default = set(DEFAULT_CAPABILITIES)
    assert cap_sets(out) == {
        "CapBnd": default,
        "CapEff": default,
        "CapPrm": default,
        "CapInh": set(),
        "CapAmb": set(),
    }
    path = edit_config(
        bundle(["cat", "/proc/self/status"]), lambda d: d["process"].pop("capabilities")
    )
    code, out = run(store, path)
    assert code == 0, out
    assert cap_sets(out) == {key: set() for key in SETS}


BIND_80 = (
    "import socket\n"
    "s = socket.socket()\n"
    "try:\n"
    "    s.bind(('127.0.0.1', 80))\n"
    "    print('bound')\n"
    "except PermissionError:\n"
    "    print('denied')\n"
) + PYTHON_STATUS


@needs_root
@pytest.mark.parametrize("ambient", [True, False], ids=["ambient", "no-ambient"])
def test_non_root_binds_port_80_with_ambient_net_bind_service(
    store: FileStore, bundle: BundleFactory, ambient: bool
) -> None:
    nbs = ["CAP_NET_BIND_SERVICE"]
    sets = {"bounding": nbs, "permitted": nbs, "inheritable": nbs}
    if ambient:
        sets.update(effective=nbs, ambient=nbs)
    path = bundle(["python3", "-I", "-c", BIND_80], rootfs="host_usr")
    edit_config(path, set_caps(**sets))
    edit_config(path, lambda d: d["process"]["user"].update(uid=1000, gid=1000))
    code, out = run(store, path)
    assert code == 0, out
    first, _, dump = out.partition("\n")
    assert status(dump)["Uid"].split() == ["1000"] * 4
    if ambient:
        assert first == "bound"
        assert cap_sets(dump) == {key: set(nbs) for key in SETS}
    else:
        assert first == "denied"
        assert cap_sets(dump)["CapEff"] == cap_sets(dump)["CapPrm"] == set()


RAW_SOCKET = (
    "import socket\n"
    "try:\n"
    "    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()\n"
    "    print('raw socket')\n"
    "except PermissionError:\n"
    "    print('denied')\n"
)


@needs_root
@pytest.mark.parametrize("net_raw", [False, True], ids=["without", "with"])
def test_raw_sockets_need_cap_net_raw(
    store: FileStore, bundle: BundleFactory, net_raw: bool
) -> None:
    caps = [c for c in DOCKER_CAPS if net_raw or c != "CAP_NET_RAW"]
    path = bundle(["python3", "-I", "-c", RAW_SOCKET], rootfs="host_usr")
    edit_config(path, set_caps(bounding=caps, effective=caps, permitted=caps))
    code, out = run(store, path)
    assert code == 0, out
    assert out.strip() == ("raw socket" if net_raw else "denied")


MOUNT = "mount -t tmpfs none /tmp && echo mounted; grep -c ' /tmp ' /proc/mounts"


@needs_root
@needs_busybox
@pytest.mark.parametrize("sys_admin", [False, True], ids=["without", "with"])
def test_mount_needs_cap_sys_admin(
    store: FileStore, bundle: BundleFactory, sys_admin: bool
) -> None:
    """Without seccomp, only the capability stands between the program and mount(2)."""
    caps = DOCKER_CAPS + (["CAP_SYS_ADMIN"] if sys_admin else [])
    path = bundle(["sh", "-c", MOUNT])
    edit_config(path, set_caps(bounding=caps, effective=caps, permitted=caps))
    edit_config(path, set_seccomp(None))
    code, out = run(store, path)
    if sys_admin:  # the control: it is the capability that makes the difference
        assert out.split()[0] == "mounted"
    else:
        assert code == 1, out
        assert "permission denied" in out
        assert "mounted" not in out


@needs_root
@needs_busybox
@pytest.mark.parametrize("profile", ["caps", "seccomp"])
def test_unshare_is_refused(store: FileStore, bundle: BundleFactory, profile: str) -> None:
    """Default caps without seccomp, or CAP_SYS_ADMIN with the default seccomp profile."""
    path = bundle(["sh", "-c", "unshare -m -n true; echo code=$?"])
    if profile == "caps":
        edit_config(path, set_seccomp(None))
    else:
        caps = [*DOCKER_CAPS, "CAP_SYS_ADMIN"]
        edit_config(path, set_caps(bounding=caps, effective=caps, permitted=caps))
    code, out = run(store, path)
    assert code == 0, out
    assert "Operation not permitted" in out
    assert out.split()[-1] == "code=1"


# -- no_new_privs and seccomp ----------------------------------------------------------------


@needs_root
@needs_busybox
@pytest.mark.parametrize("nnp", [True, False])
def test_no_new_privs_and_seccomp_mode(store: FileStore, bundle: BundleFactory, nnp: bool) -> None:
    """Without no_new_privs the filter goes in early, while the init may still do so."""
    path = bundle(["cat", "/proc/self/status"])
    edit_config(path, lambda d: d["process"].update(noNewPrivileges=nnp))
    code, out = run(store, path)
    assert code == 0, out
    fields = status(out)
    assert fields["NoNewPrivs"] == ("1" if nnp else "0")
    assert fields["Seccomp"] == "2"
    assert fields["Seccomp_filters"] == "1"
    assert cap_sets(out)["CapEff"] == set(DEFAULT_CAPABILITIES)


@needs_root
@needs_busybox
def test_without_seccomp_the_mode_is_zero(store: FileStore, bundle: BundleFactory) -> None:
    path = edit_config(bundle(["cat", "/proc/self/status"]), set_seccomp(None))
    code, out = run(store, path)
    assert code == 0, out
    assert status(out)["Seccomp"] == "0"


KEYCTL = (
    "import ctypes, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create=0): read-only.
    "r = libc.syscall({nr}, 0, -3, 0)\n"
    "print('errno', ctypes.get_errno() if r == -1 else 0)\n"
)


@needs_root
@pytest.mark.skipif(SYS_KEYCTL is None, reason="keyctl's number is only known for x86_64/arm64")
@pytest.mark.parametrize("filtered", [True, False], ids=["default-profile", "no-seccomp"])
def test_default_profile_denies_keyctl_with_eperm(
    store: FileStore, bundle: BundleFactory, filtered: bool
) -> None:
    path = bundle(["python3", "-I", "-c", KEYCTL.format(nr=SYS_KEYCTL)], rootfs="host_usr")
    if not filtered:  # the control: keyctl itself would not say EPERM here
        edit_config(path, set_seccomp(None))
    code, out = run(store, path)
    assert code == 0, out
    if filtered:
        assert out.split() == ["errno", str(errno.EPERM)]
    else:
        assert out.split()[1] != str(errno.EPERM)


@needs_root
def test_a_syscall_newer_than_libseccomp_fails_with_enosys(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: a program probing a system call the profile cannot name (newer than this
    libseccomp) gets ENOSYS, and falls back, rather than the default action's EPERM."""
    lib = seccomp.load_library()
    names = [
        name for rule in default_profile(platform.machine())["syscalls"] for name in rule["names"]
    ]
    newest = seccomp._highest_named(lib, lib.seccomp_arch_native(), names)
    assert newest is not None
    script = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for nr in ({newer}, {known}, 0x40000000 | 1000, -1):\n"
        "    r = libc.syscall(nr, 0, 0, 0, 0)\n"
        "    print(ctypes.get_errno() if r == -1 else 0)\n"
    )
    # (keyctl, known and denied by the default profile: still EPERM)
    args = ["python3", "-I", "-c", script.format(newer=newest + 1, known=SYS_KEYCTL or 250)]
    code, out = run(store, bundle(args, rootfs="host_usr"))
    assert code == 0, out
    # (Then an x32 number past x32's, and -1: ENOSYS too, as the kernel says of them.)
    enosys = str(errno.ENOSYS)
    assert out.split() == [enosys, str(errno.EPERM), enosys, enosys]


def test_a_profile_past_the_kernels_instruction_limit_is_a_spec_error() -> None:
    profile = default_profile(platform.machine())
    rule = {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2}
    profile["syscalls"] += [
        {**rule, "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 1000 + k}]}
        for k in range(3200)
    ]
    with pytest.raises(SpecError, match=r"compiles to \d+ BPF instructions; the kernel takes 4096"):
        seccomp.compile_bpf(profile)


def killing(name: str, **arg: int) -> dict[str, Any]:
    """A profile (loaded early: no ``noNewPrivileges``) killing the caller of syscall
    ``name`` (with argument ``index`` equal to ``value`` if given), allowing the rest."""
    rule: dict[str, Any] = {"names": [name], "action": "SCMP_ACT_KILL"}
    if arg:
        rule["args"] = [{"index": arg["index"], "value": arg["value"], "op": "SCMP_CMP_EQ"}]
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}


def early_profile(profile: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        document["process"]["noNewPrivileges"] = False
        document["linux"]["seccomp"] = profile

    return change


@needs_root
@needs_busybox
def test_an_init_killed_before_its_program_runs_fails_start(
    store: FileStore, bundle: BundleFactory
) -> None:
    # The init calls setgroups on its way to execve: the profile kills it there. The
    # sync socket closes as it dies, as it would on exec: start used to succeed.
    path = edit_config(bundle(["true"]), early_profile(killing("setgroups")))
    container = Container.create("killed", path, store=store)
    try:
        with pytest.raises(InitError, match=r"killed by signal 31 \(SIGSYS\) before it ran"):
            container.start()
        assert container.status is Status.STOPPED
        assert container.wait(timeout=10) == -signal.SIGSYS
    finally:
        container.destroy()
    with pytest.raises(InitError, match="SIGSYS"):
        Container.run("killed-run", path, store=store)
    assert Container.list(store=store) == []


@needs_root
@needs_busybox
def test_a_profile_loaded_last_that_kills_execve_says_so(
    store: FileStore, bundle: BundleFactory
) -> None:
    """With noNewPrivileges the profile goes in just before execve: the message blamed
    a profile "loaded early without noNewPrivileges"."""

    def change(document: dict[str, Any]) -> None:
        document["process"]["noNewPrivileges"] = True
        document["linux"]["seccomp"] = killing("execve")

    path = edit_config(bundle(["true"]), change)
    with pytest.raises(InitError, match="SIGSYS") as info:
        Container.run("execve-killed", path, store=store)
    assert "loaded early" not in str(info.value)
    assert "forbids a system call of the program's execve" in str(info.value)
    assert Container.list(store=store) == []


@needs_root
@needs_busybox
def test_an_exec_killed_before_its_program_runs_is_an_exec_error(
    store: FileStore, bundle: BundleFactory
) -> None:
    # Only a process becoming uid 65534 is killed: the init (root) runs on.
    profile = killing("setresuid", index=0, value=65534)
    path = edit_config(bundle(["sleep", "60"]), early_profile(profile))
    container = Container.create("exec-killed", path, store=store)
    try:
        container.start()
        with pytest.raises(ExecError, match="SIGSYS"):
            container.exec(["true"], user=(65534, 65534))
        assert container.exec(["true"]).wait(timeout=10) == 0  # the rest works on
        assert container.status is Status.RUNNING
    finally:
        container.destroy()


@needs_root
@needs_busybox
def test_custom_profile_errno_ret(store: FileStore, bundle: BundleFactory) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        ],
    }
    path = bundle(["sh", "-c", "mkdir /tmp/d; echo code=$?; touch /tmp/f && echo touched"])
    edit_config(path, set_seccomp(profile))
    code, out = run(store, path)
    assert code == 0, out
    assert "Function not implemented" in out  # ENOSYS
    assert out.split()[-2:] == ["code=1", "touched"]


@needs_root
@needs_busybox
@pytest.mark.parametrize("nnp", [True, False])
def test_filter_flags_load_through_the_seccomp_syscall(
    store: FileStore, bundle: BundleFactory, nnp: bool
) -> None:
    """With flags the init loads the program with seccomp(2) instead of prctl: it still acts."""
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": [
            "SECCOMP_FILTER_FLAG_TSYNC",
            "SECCOMP_FILTER_FLAG_LOG",
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        ],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
    }
    path = bundle(["sh", "-c", "mkdir /tmp/d; echo code=$?; cat /proc/self/status"])
    edit_config(path, set_seccomp(profile))
    edit_config(path, lambda d: d["process"].update(noNewPrivileges=nnp))
    code, out = run(store, path)
    assert code == 0, out
    assert "Function not implemented" in out  # ENOSYS
    assert "code=1" in out
    fields = status(out)
    assert fields["Seccomp"] == "2"
    assert fields["Seccomp_filters"] == "1"
    assert fields["NoNewPrivs"] == ("1" if nnp else "0")


@needs_root
@needs_busybox
def test_kill_process_action(store: FileStore, bundle: BundleFactory) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL_PROCESS"}],
    }
    path = bundle(["sh", "-c", "mkdir /tmp/d; echo code=$?"])
    edit_config(path, set_seccomp(profile))
    code, out = run(store, path)
    assert code == 0, out
    assert out.split()[-1] == "code=159"  # 128 + SIGSYS


PERSONALITY = (
    "import ctypes\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.personality.argtypes = [ctypes.c_ulong]\n"
    "query = libc.personality(0xFFFFFFFF)\n"
    "linux = libc.personality(0)\n"
    "print(query >= 0, linux, ctypes.get_errno())\n"
)


@needs_root
def test_argument_condition(store: FileStore, bundle: BundleFactory) -> None:
    """personality is denied unless arg0 == 0xffffffff (the query)."""
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": 0xFFFFFFFF, "op": "SCMP_CMP_NE"}],
            }
        ],
    }
    path = bundle(["python3", "-I", "-c", PERSONALITY], rootfs="host_usr")
    edit_config(path, set_seccomp(profile))
    code, out = run(store, path)
    assert code == 0, out
    assert out.split() == ["True", "-1", str(errno.EPERM)]


@needs_root
def test_default_profile_lets_ordinary_programs_run(
    store: FileStore, bundle: BundleFactory
) -> None:
    """fork (clone without namespace flags), threads, pipes, sockets, subprocesses."""
    script = (
        "import os, socket, subprocess, threading\n"
        "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
        "print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())\n"
        "a, b = socket.socketpair(); a.send(b'pair'); print(b.recv(4).decode())\n"
        "pid = os.fork()\n"
        "if pid == 0: os._exit(7)\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    code, out = run(store, bundle(["python3", "-I", "-c", script], rootfs="host_usr"))
    assert code == 0, out
    assert out.split() == ["thread", "child", "pair", "7"]


def run(store: FileStore, bundle: Path) -> tuple[int, str]:
    """Create, start, wait for and destroy a container; its exit code and output."""
    return run_output(store, bundle, cid="sec")


_KEYRING_ID = (
    "import ctypes, platform; libc = ctypes.CDLL(None, use_errno=True); "
    "nr = {'x86_64': 250, 'aarch64': 219}[platform.machine()]; "
    "print(libc.syscall(nr, 0, -3, 1))"  # KEYCTL_GET_KEYRING_ID of the session keyring
)


@needs_root
def test_a_container_has_a_session_keyring_of_its_own(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: not the caller's session keyring (whose keys it would read and add to where
    seccomp allows keyctl), nor another container's; an exec'd process none of those
    either."""
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("keyctl's number is known here for x86_64 and aarch64 only")
    libc = ctypes.CDLL(None, use_errno=True)
    ours = libc.syscall({"x86_64": 250, "aarch64": 219}[platform.machine()], 0, -3, 1)
    assert ours > 0
    path = bundle(["python3", "-c", _KEYRING_ID], rootfs="host_usr")
    edit_config(path, lambda doc: doc["linux"].pop("seccomp", None))
    seen = set()
    for name in ("keys1", "keys2"):
        code, out = run_output(store, path, name)
        assert code == 0, out
        seen.add(int(out))
    sleeper = bundle(["sleep", "100"], rootfs="host_usr")
    edit_config(sleeper, lambda doc: doc["linux"].pop("seccomp", None))
    container = Container.create("keys3", sleeper, store=store)
    try:
        container.start()
        for user in ({}, {"user": 0}):  # the agent's spawn, and the slow way
            done = container.exec_run(["python3", "-c", _KEYRING_ID], capture_output=True, **user)
            seen.add(int(done.stdout))
    finally:
        container.destroy()
    assert ours not in seen
    assert len(seen) == 4 and all(key > 0 for key in seen)


@needs_root
@needs_busybox
@pytest.mark.parametrize("launcher", ["fork server", "subprocess"])
def test_the_container_sees_no_host_path_in_its_supervisors_command_line(
    store: FileStore, bundle: BundleFactory, launcher: str
) -> None:
    """``/proc/1/cmdline`` (readable by anyone in the PID namespace) showed the fork
    server's: the interpreter's and the library's host paths. It is the supervisor's name,
    also for a supervisor started afresh (which finds where its arguments are before it
    enters a namespace: a ``/proc`` of the spec's choosing would choose where it writes)."""
    path = bundle(["sh", "-c", "cat /proc/1/cmdline"])
    chosen = SubprocessLauncher() if launcher == "subprocess" else None
    container = Container.create("cmdline", path, store=store, launcher=chosen, stdout=PIPE)
    try:
        container.start()
        assert container.stdout is not None
        out = container.stdout.read().decode()
        assert container.wait(timeout=30) == 0
    finally:
        container.destroy()
    assert out == "sandboxrt-sup\0", repr(out)
