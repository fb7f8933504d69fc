"""Tests of the OCI spec model, its loading, validation and the default spec."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandboxrt._core import abi
from sandboxrt._core.mount_options import parse_mount_options
from sandboxrt._core.plan import build_container_plan, build_plan
from sandboxrt._core.spec import (
    Mount,
    Spec,
    dump_spec,
    json_key,
    load_spec,
    read_spec_file,
    write_spec_file,
)
from sandboxrt._core.spec_default import DEFAULT_MASKED_PATHS, default_spec
from sandboxrt._core.spec_validate import (
    CAPABILITIES,
    CAPABILITY_NUMBERS,
    RLIMITS,
    spec_problems,
    validate_spec,
)
from sandboxrt._creation import apply_config
from sandboxrt._os.seccomp import compile_bpf
from sandboxrt.config import Config
from sandboxrt.errors import MissingFeatureError, SpecError

Doc = dict[str, Any]


def runc_config() -> Doc:
    """What `runc spec` writes, then edited the way a real user would."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": "1.2.0",
        "process": {
            "terminal": True,
            "consoleSize": {"height": 24, "width": 80},
            "user": {"uid": 1000, "gid": 1000, "umask": 18, "additionalGids": [5, 6]},
            "args": ["/bin/sh", "-c", "echo hi"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM="],
            "cwd": "/home/user",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "ambient": ["CAP_NET_BIND_SERVICE"],
            },
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ],
            "noNewPrivileges": True,
            "oomScoreAdj": -500,
            "apparmorProfile": "docker-default",
            "selinuxLabel": "system_u:system_r:container_t:s0",
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "box",
        "domainname": "example.test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/data",
                "type": "bind",
                "source": "/srv/data",
                "options": ["rbind", "ro"],
                "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            },
        ],
        "hooks": {
            "prestart": [{"path": "/usr/bin/fix-net", "args": ["fix-net", "-v"]}],
            "createRuntime": [{"path": "/usr/bin/true", "env": ["A=1"], "timeout": 5}],
            "poststop": [{"path": "/usr/bin/cleanup"}],
        },
        "annotations": {"org.example.key": "value"},
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "sysctl": {"net.ipv4.ip_forward": "1"},
            "resources": {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
                ],
                "memory": {"limit": 536870912, "swap": -1, "disableOOMKiller": False},
                "cpu": {"shares": 1024, "quota": 100000, "period": 100000, "cpus": "0-3"},
                "pids": {"limit": 512},
                "blockIO": {
                    "weight": 500,
                    "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 300}],
                },
                "hugepageLimits": [{"pageSize": "2MB", "limit": 1048576}],
                "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
                "unified": {"memory.high": "400000000"},
            },
            "cgroupsPath": "/sandboxrt/box",
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/box"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "user"},
                {"type": "cgroup"},
            ],
            "devices": [
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438},
                {"path": "/dev/fifo", "type": "p"},
            ],
            "seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls": [
                    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                    {
                        "names": ["personality"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
                    },
                ],
            },
            "rootfsPropagation": "rslave",
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "mountLabel": "system_u:object_r:container_file_t:s0",
            "personality": {"domain": "LINUX"},
        },
    }


def problems_of(doc: Doc | str | bytes) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        load_spec(doc)
    return info.value.problems


def assert_problem(doc: Doc | str | bytes, path: str, message: str) -> None:
    """Loading ``doc`` fails with a problem at exactly ``path`` whose message has ``message``."""
    with pytest.raises(SpecError) as info:
        load_spec(doc)
    problems = info.value.problems
    assert any(p == path and message in m for p, m in problems), problems
    if path:
        assert f"{path}: " in str(info.value)


def edited(edit: Callable[[Doc], None]) -> Doc:
    doc = runc_config()
    edit(doc)
    return doc


# --- malformed documents ----------------------------------------------------------------------


def _set(*keys: Any, value: Any) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        target = doc
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def _delete(*keys: Any) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        target = doc
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return edit


MALFORMED = [
    # wrong JSON types
    (_set("process", "args", value="sh"), "process.args", "expected a non-empty list of strings"),
    (_set("process", "args", value=["sh", 3]), "process.args[1]", "expected a string"),
    (_set("process", "user", "uid", value="0"), "process.user.uid", "expected an integer"),
    (_set("process", "user", "gid", value=True), "process.user.gid", "expected an integer"),
    (_set("process", "user", "uid", value=1.5), "process.user.uid", "expected an integer"),
    (_set("process", "terminal", value=1), "process.terminal", "expected a boolean"),
    (_set("process", "noNewPrivileges", value="true"), "process.noNewPrivileges", "boolean"),
    (_set("process", "user", value=[0, 0]), "process.user", "expected an object, got a list"),
    (_set("mounts", value={"destination": "/x"}), "mounts", "expected a list of objects"),
    (_set("mounts", 2, "destination", value=None), "mounts[2].destination", "expected a string"),
    (_set("linux", "sysctl", "kernel.x", value=1), 'linux.sysctl["kernel.x"]', "a string"),
    (
        _set("linux", "uidMappings", 0, "containerID", value="0"),
        "linux.uidMappings[0].containerID",
        "expected an integer",
    ),
    (
        _set("linux", "seccomp", "syscalls", 1, "args", 0, "valueTwo", value=False),
        "linux.seccomp.syscalls[1].args[0].valueTwo",
        "expected an integer",
    ),
    # missing required fields
    (_delete("ociVersion"), "ociVersion", "missing required field"),
    (_delete("root", "path"), "root.path", "missing required field"),
    (_delete("root"), "root", "required on Linux"),
    (_delete("process", "cwd"), "process.cwd", "missing required field"),
    (_delete("linux", "namespaces", 0, "type"), "linux.namespaces[0].type", "missing required"),
    # OCI MUSTs
    (_set("ociVersion", value="2.0.0"), "ociVersion", 'unsupported version "2.0.0"'),
    (_set("ociVersion", value="1.4.0"), "ociVersion", "unsupported version"),
    (_set("ociVersion", value="banana"), "ociVersion", 'expected a SemVer version like "1.2.0"'),
    (_set("ociVersion", value="1.2"), "ociVersion", "SemVer"),
    (_set("process", "args", value=[]), "process.args", "expected a non-empty list of strings"),
    (_set("process", "cwd", value="home"), "process.cwd", "must be an absolute path"),
    (_set("process", "env", 1, value="TERM"), "process.env[1]", 'expected "KEY=VALUE"'),
    (
        _set("process", "rlimits", 1, "type", value="RLIMIT_BOGUS"),
        "process.rlimits[1].type",
        'unknown rlimit type "RLIMIT_BOGUS"',
    ),
    (
        _set("process", "rlimits", 1, "type", value="RLIMIT_NOFILE"),
        "process.rlimits[1].type",
        'duplicate rlimit type "RLIMIT_NOFILE"',
    ),
    (_set("process", "rlimits", 0, "soft", value=8192), "process.rlimits[0].soft", "exceed hard"),
    (_set("process", "oomScoreAdj", value=1001), "process.oomScoreAdj", "[-1000, 1000]"),
    (_set("process", "user", "umask", value=0o1000), "process.user.umask", "must be in"),
    (_set("process", "user", "uid", value=-1), "process.user.uid", "must be in"),
    # -1 to setresuid: "unchanged", so the process would stay root.
    (_set("process", "user", "uid", value=2**32 - 1), "process.user.uid", "must be in"),
    (_set("process", "user", "gid", value=2**32 - 1), "process.user.gid", "must be in"),
    (
        _set("process", "user", "additionalGids", value=[2**32 - 1]),
        "process.user.additionalGids[0]",
        "must be in",
    ),
    (_set("mounts", 2, "destination", value="data"), "mounts[2].destination", "absolute path"),
    (_set("hooks", "prestart", 0, "path", value="fix-net"), "hooks.prestart[0].path", "absolute"),
    (
        _set("hooks", "createRuntime", 0, "timeout", value=0),
        "hooks.createRuntime[0].timeout",
        "must be positive",
    ),
    (
        _set("linux", "namespaces", 2, "type", value="ipcx"),
        "linux.namespaces[2].type",
        'unknown namespace type "ipcx"',
    ),
    (
        _set("linux", "namespaces", 2, "type", value="pid"),
        "linux.namespaces[2].type",
        'duplicate namespace type "pid"',
    ),
    (
        _set("linux", "namespaces", 1, "path", value="netns/box"),
        "linux.namespaces[1].path",
        "absolute",
    ),
    (
        _set("linux", "namespaces", value=[{"type": "pid"}, {"type": "mount"}]),
        "hostname",
        "without a private UTS namespace",
    ),
    (_set("linux", "uidMappings", 0, "size", value=0), "linux.uidMappings[0].size", "positive"),
    (_set("linux", "devices", 0, "type", value="x"), "linux.devices[0].type", "device type"),
    (_delete("linux", "devices", 0, "minor"), "linux.devices[0].minor", "required for device"),
    (_set("linux", "devices", 1, "path", value="fifo"), "linux.devices[1].path", "absolute"),
    (
        _set("linux", "rootfsPropagation", value="slavish"),
        "linux.rootfsPropagation",
        'unknown propagation "slavish"',
    ),
    (
        _set("linux", "seccomp", "syscalls", 0, "action", value="SCMP_ACT_MAYBE"),
        "linux.seccomp.syscalls[0].action",
        "unknown seccomp action",
    ),
    (
        _set("linux", "seccomp", "syscalls", 1, "args", 0, "op", value="SCMP_CMP_XOR"),
        "linux.seccomp.syscalls[1].args[0].op",
        'unknown operator "SCMP_CMP_XOR"',
    ),
    (
        _set("linux", "resources", "devices", 1, "access", value="rwx"),
        "linux.resources.devices[1].access",
        "rwm",
    ),
    (_set("hostname", value="h" * 65), "hostname", "at most 64 bytes"),
    (_set("domainname", value="d" * 100), "domainname", "at most 64 bytes"),
    # Numbers past their OCI type would wrap on their way to the kernel.
    (
        _set("linux", "resources", "memory", "limit", value=2**64 + 64 * 2**20),
        "linux.resources.memory.limit",
        "must be in",
    ),
    (
        _set("linux", "resources", "devices", 1, "major", value=-2),
        "linux.resources.devices[1].major",
        "must be in",
    ),
    (_set("linux", "devices", 0, "major", value=2**40), "linux.devices[0].major", "must be in"),
    (
        _set("linux", "seccomp", "syscalls", 1, "args", 0, "value", value=2**64 + 5),
        "linux.seccomp.syscalls[1].args[0].value",
        "must be in",
    ),
    (
        _set("linux", "seccomp", "syscalls", 0, "errnoRet", value=70000),
        "linux.seccomp.syscalls[0].errnoRet",
        "must be in [0, 4094]",
    ),
]


@pytest.mark.parametrize(("edit", "path", "message"), MALFORMED)
def test_malformed_document_names_path(
    edit: Callable[[Doc], None], path: str, message: str
) -> None:
    assert_problem(edited(edit), path, message)


@pytest.mark.parametrize(
    "text", ["", "{", '{"ociVersion": "1.2.0",}', b"\xff\xfe", '{"ociVersion": NaN}']
)
def test_bad_json_text(text: str | bytes) -> None:
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0][0] == ""
    assert problems[0][1].startswith("invalid JSON")


@pytest.mark.parametrize("doc", ["[]", '"spec"', "42", "null"])
def test_document_must_be_an_object(doc: str) -> None:
    assert problems_of(doc) == [("", f"expected an object, got {_kind(json.loads(doc))}")]


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", type(None): "null"}[type(value)]


def test_all_problems_are_reported_together() -> None:
    doc = runc_config()
    doc["process"]["user"]["uid"] = "root"
    doc["process"]["terminal"] = 1
    doc["mounts"][0]["destination"] = 7
    paths = [path for path, _ in problems_of(doc)]
    assert sorted(paths) == ["mounts[0].destination", "process.terminal", "process.user.uid"]

    doc = runc_config()
    doc["ociVersion"] = "banana"
    doc["process"]["cwd"] = "rel"
    doc["linux"]["namespaces"].append({"type": "pid"})
    with pytest.raises(SpecError) as info:
        load_spec(doc)
    assert [p for p, _ in info.value.problems] == [
        "ociVersion",
        "process.cwd",
        "linux.namespaces[7].type",
    ]
    assert str(info.value).startswith("invalid spec:\n  ociVersion: ")


def test_validate_false_skips_the_musts_but_not_the_types() -> None:
    doc = edited(_set("ociVersion", value="banana"))
    assert load_spec(doc, validate=False).oci_version == "banana"
    with pytest.raises(SpecError) as info:
        validate_spec(load_spec(doc, validate=False))
    assert info.value.problems[0][0] == "ociVersion"
    assert_problem(edited(_set("process", "args", value="sh")), "process.args", "expected")
    with pytest.raises(SpecError):
        load_spec(edited(_set("process", "args", value="sh")), validate=False)


@pytest.mark.parametrize(
    "version", ["1.0.0", "1.0.2-dev", "1.1.0-rc.1", "1.2.0-rc.1", "1.2.1", "1.3.0", "1.3.0+dev"]
)
def test_supported_versions(version: str) -> None:
    assert load_spec(edited(_set("ociVersion", value=version))).oci_version == version


@given(st.integers(0, 3), st.integers(0, 99), st.sampled_from(["", "-dev", "-rc.2", "+b.7"]))
def test_any_1_0_to_1_3_version_validates(minor: int, patch: int, suffix: str) -> None:
    version = f"1.{minor}.{patch}{suffix}"
    assert spec_problems(attrs.evolve(default_spec(), oci_version=version)) == []


@given(st.booleans())
def test_bool_is_never_an_integer(flag: bool) -> None:
    doc = edited(_set("linux", "resources", "pids", "limit", value=flag))
    assert_problem(doc, "linux.resources.pids.limit", "expected an integer, got a boolean")


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_keys_survive_round_trip_at_every_level() -> None:
    doc = runc_config()
    doc["vm"] = {"hypervisor": {"path": "/usr/bin/qemu"}, "kernel": {"path": "/vmlinuz"}}
    doc["process"]["x-foo"] = [1, {"deep": None}]
    doc["process"]["user"]["x-user"] = True
    doc["mounts"][1]["x-mount"] = "kept"
    doc["hooks"]["prestart"][0]["x-hook"] = 3
    doc["hooks"]["x-phase"] = [{"path": "relative is fine here"}]
    doc["linux"]["resources"]["memory"]["x-mem"] = {"a": [1.5]}
    doc["linux"]["seccomp"]["syscalls"][1]["args"][0]["x-arg"] = "z"
    doc["linux"]["netDevices"] = {"eth1": {"name": "eth0", "x-net": 1}}
    original = copy.deepcopy(doc)

    spec = load_spec(doc)
    assert spec.extra == {"vm": original["vm"]}
    assert spec.process is not None
    assert spec.process.extra == {"x-foo": [1, {"deep": None}]}
    assert spec.mounts is not None
    assert spec.mounts[1].extra == {"x-mount": "kept"}
    assert dump_spec(spec) == original
    assert load_spec(json.dumps(original)) == spec


def test_extra_values_are_not_shared() -> None:
    doc = runc_config()
    doc["vm"] = {"kernel": {"path": "/vmlinuz"}}
    spec = load_spec(doc)
    doc["vm"]["kernel"]["path"] = "/changed"
    dumped = dump_spec(spec)
    assert dumped["vm"]["kernel"]["path"] == "/vmlinuz"
    dumped["vm"]["kernel"]["path"] = "/changed too"
    assert spec.extra["vm"]["kernel"]["path"] == "/vmlinuz"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@given(
    st.dictionaries(st.text(min_size=1, max_size=8).map(lambda k: "x-" + k), json_values),
    st.sampled_from([(), ("process",), ("process", "user"), ("root",), ("linux", "resources")]),
)
def test_any_unknown_keys_round_trip(extra: dict[str, Any], where: tuple[str, ...]) -> None:
    doc = runc_config()
    target = doc
    for key in where:
        target = target[key]
    target.update(extra)
    assert dump_spec(load_spec(doc)) == doc


def test_known_fields_win_over_a_clashing_extra_key() -> None:
    spec = attrs.evolve(default_spec(), extra={"hostname": "shadow", "vm": {}})
    dumped = dump_spec(spec)
    assert dumped["hostname"] == "sandboxrt"
    assert dumped["vm"] == {}


# --- a full document --------------------------------------------------------------------------


def test_full_config_loads_typed() -> None:
    doc = runc_config()
    spec = load_spec(json.dumps(doc).encode())
    process, linux = spec.process, spec.linux
    assert process is not None
    assert linux is not None
    assert linux.resources is not None
    assert linux.seccomp is not None
    assert linux.seccomp.syscalls is not None
    assert spec.root is not None
    assert spec.hooks is not None
    assert spec.mounts is not None

    assert spec.oci_version == "1.2.0"
    assert process.terminal is True
    assert process.console_size is not None
    assert process.console_size.width == 80
    assert process.user.additional_gids == [5, 6]
    assert process.user.umask == 0o22
    assert process.args == ["/bin/sh", "-c", "echo hi"]
    assert process.capabilities is not None
    assert process.capabilities.ambient == ["CAP_NET_BIND_SERVICE"]
    assert process.capabilities.inheritable is None
    assert process.rlimits is not None
    assert (process.rlimits[0].type, process.rlimits[0].soft) == ("RLIMIT_NOFILE", 1024)
    assert process.no_new_privileges is True
    assert process.oom_score_adj == -500
    assert spec.root.readonly is False
    assert spec.domainname == "example.test"
    assert spec.mounts[2].uid_mappings is not None
    assert spec.mounts[2].uid_mappings[0].host_id == 100000
    assert spec.mounts[0].options is None
    assert spec.hooks.create_runtime is not None
    assert spec.hooks.create_runtime[0].timeout == 5
    assert spec.hooks.poststart is None
    assert spec.annotations == {"org.example.key": "value"}
    assert linux.uid_mappings is not None
    assert linux.uid_mappings[0].container_id == 0
    assert linux.sysctl == {"net.ipv4.ip_forward": "1"}
    res = linux.resources
    assert res.memory is not None
    assert res.memory.disable_oom_killer is False
    assert res.memory.swap == -1
    assert res.cpu is not None
    assert res.cpu.cpus == "0-3"
    assert res.pids is not None
    assert res.pids.limit == 512
    assert res.block_io is not None
    assert res.block_io.throttle_read_iops_device is not None
    assert res.block_io.throttle_read_iops_device[0].rate == 300
    assert res.network is not None
    assert res.network.class_id == 1048577
    assert res.hugepage_limits is not None
    assert res.hugepage_limits[0].page_size == "2MB"
    assert res.devices is not None
    assert res.devices[1].major == 10
    assert res.unified == {"memory.high": "400000000"}
    assert linux.cgroups_path == "/sandboxrt/box"
    assert linux.namespaces is not None
    assert linux.namespaces[1].path == "/var/run/netns/box"
    assert linux.devices is not None
    assert linux.devices[0].file_mode == 0o666
    assert linux.devices[1].major is None
    assert linux.seccomp.default_errno_ret == 1
    arg = linux.seccomp.syscalls[1].args
    assert arg is not None
    assert (arg[0].index, arg[0].value, arg[0].value_two, arg[0].op) == (0, 8, 0, "SCMP_CMP_EQ")
    assert linux.rootfs_propagation == "rslave"
    assert linux.personality is not None
    assert linux.personality.domain == "LINUX"
    assert dump_spec(spec) == doc


def test_camel_case_keys() -> None:
    assert json_key("oci_version") == "ociVersion"
    assert json_key("oom_score_adj") == "oomScoreAdj"
    assert json_key("container_id") == "containerID"
    assert json_key("disable_oom_killer") == "disableOOMKiller"
    assert json_key("block_io") == "blockIO"
    assert json_key("class_") == "class"


def test_io_priority_uses_the_class_key() -> None:
    doc = edited(_set("process", "ioPriority", value={"class": "IOPRIO_CLASS_BE", "priority": 4}))
    spec = load_spec(doc)
    assert spec.process is not None
    assert spec.process.io_priority is not None
    assert spec.process.io_priority.class_ == "IOPRIO_CLASS_BE"
    assert dump_spec(spec) == doc
    bad = edited(_set("process", "ioPriority", value={"class": "IOPRIO_CLASS_X", "priority": 9}))
    paths = [path for path, _ in problems_of(bad)]
    assert paths == ["process.ioPriority.class", "process.ioPriority.priority"]


@pytest.mark.parametrize(
    ("scheduler", "paths"),
    [
        ({"policy": "SCHED_FIFO", "priority": 10, "flags": ["SCHED_FLAG_RESET_ON_FORK"]}, []),
        ({"policy": "SCHED_BATCH", "nice": 19}, []),
        ({"policy": "SCHED_ISO"}, ["process.scheduler.policy"]),
        ({"policy": "SCHED_FIFO"}, ["process.scheduler.priority"]),
        ({"policy": "SCHED_RR", "priority": 100}, ["process.scheduler.priority"]),
        ({"policy": "SCHED_OTHER", "priority": 5}, ["process.scheduler.priority"]),
        ({"policy": "SCHED_IDLE", "nice": 20}, ["process.scheduler.nice"]),
        ({"policy": "SCHED_OTHER", "flags": ["SCHED_FLAG_X"]}, ["process.scheduler.flags[0]"]),
        (
            {"policy": "SCHED_BATCH", "flags": ["SCHED_FLAG_UTIL_CLAMP_MIN"]},
            ["process.scheduler.flags[0]"],
        ),
        ({"policy": "SCHED_OTHER", "runtime": 5000}, ["process.scheduler.runtime"]),
        ({"policy": "SCHED_DEADLINE", "runtime": 10**6, "deadline": 10**7}, []),
        ({"policy": "SCHED_DEADLINE", "runtime": 100, "deadline": 10**7}, ["process.scheduler"]),
        ({"policy": "SCHED_DEADLINE", "runtime": 10**7, "deadline": 10**6}, ["process.scheduler"]),
        (
            {"policy": "SCHED_DEADLINE", "runtime": 2**63},
            ["process.scheduler.runtime", "process.scheduler"],
        ),
    ],
)
def test_scheduler_values_are_those_the_kernel_takes(
    scheduler: dict[str, Any], paths: list[str]
) -> None:
    doc = edited(_set("process", "scheduler", value=scheduler))
    if paths:
        assert [path for path, _ in problems_of(doc)] == paths
    else:
        assert load_spec(doc).process is not None


@pytest.mark.parametrize(
    ("namespace", "offsets", "paths"),
    [
        ({"type": "time"}, {"monotonic": {"secs": -5, "nanosecs": 7}}, []),
        (None, {"boottime": {"secs": 1}}, ["linux.timeOffsets"]),
        ({"type": "time", "path": "/proc/1/ns/time"}, {"boottime": {}}, ["linux.timeOffsets"]),
        ({"type": "time"}, {"realtime": {"secs": 1}}, ["linux.timeOffsets.realtime"]),
        (
            {"type": "time"},
            {"boottime": {"nanosecs": 10**9}},
            ["linux.timeOffsets.boottime.nanosecs"],
        ),
    ],
)
def test_time_offsets_need_a_new_time_namespace(
    namespace: dict[str, str] | None, offsets: dict[str, Any], paths: list[str]
) -> None:
    doc = runc_config()
    if namespace is not None:
        doc["linux"]["namespaces"].append(namespace)
    doc["linux"]["timeOffsets"] = offsets
    if paths:
        assert [path for path, _ in problems_of(doc)] == paths
    else:
        assert load_spec(doc).linux is not None


def test_explicit_false_and_empty_values_are_kept() -> None:
    doc = runc_config()
    doc["process"]["terminal"] = False
    doc["process"]["capabilities"]["inheritable"] = []
    doc["annotations"] = {}
    assert dump_spec(load_spec(doc)) == doc


# --- default spec -----------------------------------------------------------------------------


def _walk_has_none(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_walk_has_none(v) for v in value.values())
    if isinstance(value, list):
        return any(_walk_has_none(v) for v in value)
    return False


def test_default_spec_is_runc_spec() -> None:
    spec = default_spec()
    assert spec_problems(spec) == []
    doc = dump_spec(spec)
    assert not _walk_has_none(doc)
    assert "hooks" not in doc
    assert "domainname" not in doc
    assert doc["ociVersion"] == "1.2.0"
    assert doc["root"] == {"path": "rootfs", "readonly": True}
    assert doc["hostname"] == "sandboxrt"
    process = doc["process"]
    assert process["terminal"] is False
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["args"] == ["sh"]
    assert process["cwd"] == "/"
    assert process["env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "TERM=xterm",
    ]
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert process["capabilities"] == {"bounding": caps, "effective": caps, "permitted": caps}
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert process["noNewPrivileges"] is True
    mounts = {m["destination"]: m for m in doc["mounts"]}
    assert list(mounts) == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    assert mounts["/proc"] == {"destination": "/proc", "type": "proc", "source": "proc"}
    assert mounts["/dev/pts"]["options"] == [
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
        "gid=5",
    ]
    assert mounts["/dev/shm"]["options"] == [
        "nosuid",
        "noexec",
        "nodev",
        "mode=1777",
        "size=65536k",
    ]
    assert mounts["/sys"]["type"] == "sysfs"
    assert mounts["/sys/fs/cgroup"]["options"] == ["nosuid", "noexec", "nodev", "relatime", "ro"]
    linux = doc["linux"]
    assert [ns["type"] for ns in linux["namespaces"]] == [
        "pid",
        "network",
        "ipc",
        "uts",
        "mount",
        "cgroup",
    ]
    assert "uidMappings" not in linux
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert {"/proc/kcore", "/sys/firmware", "/proc/interrupts", "/proc/scsi"} <= set(
        linux["maskedPaths"]
    )
    assert len(set(DEFAULT_MASKED_PATHS)) == len(DEFAULT_MASKED_PATHS) == 12
    assert linux["readonlyPaths"] == [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]


def test_default_spec_round_trips() -> None:
    spec = default_spec(["/bin/echo", "hi"], terminal=True)
    assert spec.process is not None
    assert spec.process.terminal is True
    assert load_spec(dump_spec(spec)) == spec
    assert load_spec(json.dumps(dump_spec(spec))) == spec


def test_rootless_default_spec() -> None:
    spec = default_spec(rootless=True, host_uid=1234, host_gid=5678)
    assert spec_problems(spec) == []
    doc = dump_spec(spec)
    linux = doc["linux"]
    types = [ns["type"] for ns in linux["namespaces"]]
    assert "user" in types
    assert "network" not in types
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 1234, "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": 5678, "size": 1}]
    assert "resources" not in linux
    mounts = {m["destination"]: m for m in doc["mounts"]}
    assert mounts["/sys"] == {
        "destination": "/sys",
        "type": "none",
        "source": "/sys",
        "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
    }
    assert "gid=5" not in mounts["/dev/pts"]["options"]
    assert "newinstance" in mounts["/dev/pts"]["options"]
    assert load_spec(doc) == spec


def test_with_args_and_evolve() -> None:
    spec = default_spec()
    changed = spec.with_args(["/bin/true"])
    assert changed.process is not None
    assert changed.process.args == ["/bin/true"]
    assert spec.process is not None
    assert spec.process.args == ["sh"]
    tweaked = attrs.evolve(spec, hostname="other", mounts=[Mount(destination="/tmp")])
    assert dump_spec(tweaked)["mounts"] == [{"destination": "/tmp"}]
    assert dump_spec(tweaked)["hostname"] == "other"
    with pytest.raises(SpecError, match="process"):
        attrs.evolve(spec, process=None).with_args(["x"])


def test_vocabularies() -> None:
    assert len(CAPABILITIES) == 41
    assert CAPABILITY_NUMBERS["CAP_CHOWN"] == 0
    assert CAPABILITY_NUMBERS["CAP_SYS_ADMIN"] == 21
    assert CAPABILITY_NUMBERS["CAP_CHECKPOINT_RESTORE"] == 40
    assert len(RLIMITS) == 16
    assert "RLIMIT_NOFILE" in RLIMITS


# --- files ------------------------------------------------------------------------------------


def test_write_and_read_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    spec = load_spec(runc_config())
    write_spec_file(path, spec)
    assert json.loads(path.read_text()) == runc_config()
    assert read_spec_file(path) == spec
    write_spec_file(path, default_spec())
    assert read_spec_file(path) == default_spec()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_read_spec_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(SpecError, match=r"nope\.json: cannot read"):
        read_spec_file(missing)
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps(edited(_set("process", "cwd", value="rel"))))
    with pytest.raises(SpecError) as info:
        read_spec_file(bad)
    assert info.value.source == str(bad)
    assert str(info.value) == f'{bad}: process.cwd: must be an absolute path, got "rel"'
    assert read_spec_file(bad, validate=False).oci_version == "1.2.0"


def test_spec_is_frozen() -> None:
    spec: Spec = default_spec()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.hostname = "x"  # type: ignore[misc]


def test_sysctls_are_checked_against_the_namespaces_the_container_gets() -> None:
    """The spec's own netns is dropped by ``Config(network="host")`` and a pod's container
    runs in its sandbox's namespaces: a sysctl of one it does not own is refused there."""
    spec = dump_spec(default_spec())
    spec["linux"]["sysctl"] = {"net.ipv4.ip_default_ttl": "65"}
    common = {"bundle": "/b", "compile_seccomp": compile_bpf}
    load_spec(spec)  # its own netns: fine
    host_net = apply_config(spec, Config(network="host"))
    with pytest.raises(SpecError, match=r'container "c": .*ttl"\]: needs a network namespace'):
        build_plan(container_id="c", sandbox_id="c", spec=host_net, runtime_root="/r", **common)
    build_plan(container_id="c", sandbox_id="c", spec=spec, runtime_root="/r", **common)
    pod = {"sandbox_id": "root", "spec": spec, "runtime_dir": "/r/root", **common}
    with pytest.raises(
        SpecError, match=r'container "s": .*needs a network namespace of its sandbox'
    ):
        build_container_plan(container_id="s", sandbox_namespaces={"pid", "mount"}, **pod)
    spec["linux"]["sysctl"] = {"kernel.shm_rmid_forced": "1"}
    with pytest.raises(SpecError, match=r"needs an ipc namespace of its sandbox"):
        build_container_plan(container_id="s", sandbox_namespaces={"pid", "network"}, **pod)
    build_container_plan(container_id="s", sandbox_namespaces={"pid", "ipc"}, **pod)


def test_recursive_mount_options_become_mount_attributes() -> None:
    parsed = parse_mount_options(["rbind", "rro", "rnosuid", "rnoatime", "rrw", "rstrictatime"])
    assert parsed.flags == abi.MS_BIND | abi.MS_REC
    assert parsed.data == ""
    # rrw undoes rro; the last atime mode wins; clearing what rrw asked.
    assert parsed.attr_set == abi.MOUNT_ATTR_NOSUID | abi.MOUNT_ATTR_STRICTATIME
    assert parsed.attr_clr == abi.MOUNT_ATTR_RDONLY | abi.MOUNT_ATTR__ATIME
    assert parse_mount_options(["nosymfollow"]).flags == abi.MS_NOSYMFOLLOW


def test_mount_options_a_bind_cannot_take_or_sandboxrt_cannot_do_are_refused() -> None:
    spec = dump_spec(default_spec())
    spec["mounts"].append(
        {"destination": "/x", "type": "bind", "source": "/tmp", "options": ["rbind", "size=1m"]}
    )
    with pytest.raises(
        SpecError, match=r"mounts\[\d+\]\.options: size=1m is not an option of a bind"
    ):
        load_spec(spec)
    common = {"bundle": "/b", "compile_seccomp": compile_bpf, "runtime_root": "/r"}
    for option in ("idmap", "tmpcopyup"):
        spec["mounts"][-1] = {"destination": "/x", "type": "tmpfs", "options": [option]}
        load_spec(spec)  # a valid spec: the plan refuses it
        with pytest.raises(MissingFeatureError, match=f"the mount option {option} \\(on /x\\)"):
            build_plan(container_id="c", sandbox_id="c", spec=spec, **common)
    # idmapped mounts, by option (on a bind too) or by mappings alone: refused, not ignored
    bind = {"destination": "/x", "type": "bind", "source": "/tmp"}
    mapping = [{"containerID": 0, "hostID": 1000, "size": 1}]
    for mount, refused in (
        ({**bind, "options": ["bind", "idmap"]}, "the mount option idmap"),
        ({**bind, "options": ["rbind", "ridmap"]}, "the mount option ridmap"),
        ({**bind, "options": ["bind"], "uidMappings": mapping, "gidMappings": mapping}, "idmapped"),
    ):
        spec["mounts"][-1] = mount
        load_spec(spec)
        with pytest.raises(MissingFeatureError, match=refused):
            build_plan(container_id="c", sandbox_id="c", spec=spec, **common)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("process", "apparmorProfile", "docker-default"),
        ("process", "selinuxLabel", "system_u:system_r:container_t:s0"),
        ("linux", "personality", {"domain": "LINUX32"}),
    ],
)
def test_fields_sandboxrt_does_not_apply_are_refused(section: str, key: str, value: Any) -> None:
    """Never run without what the spec asks for (a confinement, an offset...)."""
    spec = dump_spec(default_spec())
    spec[section][key] = value
    load_spec(spec)  # valid: the plan refuses it
    common = {"bundle": "/b", "compile_seccomp": compile_bpf, "runtime_root": "/r"}
    with pytest.raises(MissingFeatureError, match=rf'{section}\.{key} \(container "c"\)'):
        build_plan(container_id="c", sandbox_id="c", spec=spec, **common)
    if key == "personality":  # what every process has: nothing to do
        spec[section][key] = {"domain": "LINUX"}
        build_plan(container_id="c", sandbox_id="c", spec=spec, **common)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("network", {"classID": 1048577}),
        ("rdma", {"mlx5_1": {"hcaHandles": 3}}),
        ("cpu.realtimeRuntime", 1000),
        ("memory.kernelTCP", 1 << 20),
    ],
)
def test_resources_no_cgroup_driver_applies_are_refused(path: str, value: Any) -> None:
    """They were ignored: the container ran without the limit it asked for (runc applies
    them, or refuses those its host cannot). Asking for nothing is no problem."""
    spec = dump_spec(default_spec())
    resources = spec["linux"].setdefault("resources", {})
    *parents, key = path.split(".")
    for parent in parents:
        resources = resources.setdefault(parent, {})
    resources[key] = value
    load_spec(spec)  # valid: the plan refuses it
    common = {"bundle": "/b", "compile_seccomp": compile_bpf, "runtime_root": "/r"}
    field = re.escape(f"linux.resources.{path}")
    with pytest.raises(MissingFeatureError, match=rf'{field} \(container "c"\)'):
        build_plan(container_id="c", sandbox_id="c", spec=spec, **common)
    resources[key] = type(value)()  # (no ask)
    build_plan(container_id="c", sandbox_id="c", spec=spec, **common)


def test_only_namespaced_sysctls_are_accepted() -> None:
    spec = dump_spec(default_spec())
    spec["linux"]["sysctl"] = {"kernel.core_pattern": "|/bin/x", "net.ipv4.ip_forward": "1"}
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert 'linux.sysctl["kernel.core_pattern"]: not namespaced' in str(caught.value)
    assert "ip_forward" not in str(caught.value)
    spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    with pytest.raises(SpecError, match=r'ip_forward"\]: needs a network namespace'):
        load_spec(spec)
