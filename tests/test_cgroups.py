"""The cgroup layer: detection, resource conversion, v1/v2 drivers over fake trees, real kernel."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from conftest import in_python, wait_until

from sandboxrt import _cgroup
from sandboxrt._core import abi, devicefilter
from sandboxrt._os import cgroup_marks, cgroups, procfs, syscalls
from sandboxrt._os.cgroups import (
    Cgroup,
    CgroupLayout,
    CgroupStats,
    CgroupV1,
    CgroupV2,
    DeviceRule,
    Resources,
    common,
    create,
    detect,
    load,
    shares_to_weight,
    swap_to_v2,
)
from sandboxrt._os.cgroups import v1 as v1_module
from sandboxrt.errors import (
    CorruptMetadataError,
    MissingFeatureError,
    SandboxrtError,
    SpecError,
    SystemCallError,
)

MiB = 1 << 20
V1_MOUNTS = ("cpu,cpuacct", "cpuset", "memory", "pids", "freezer", "devices")
FULL: dict[str, Any] = {
    "memory": {"limit": 64 * MiB, "reservation": 32 * MiB},
    "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
    "pids": {"limit": 16},
}


# -- fake trees ---------------------------------------------------------------------------


def make_v2(
    tmp_path: Path,
    *,
    controllers: str = "cpuset cpu io memory hugetlb pids",
    own: str = "/",
    root: str = "/",
) -> tuple[CgroupLayout, Path]:
    """A fake cgroup2 mount, its mountinfo line and a fake /proc/self/cgroup."""
    mnt = tmp_path / "unified"
    mnt.mkdir(parents=True)
    (mnt / "cgroup.controllers").write_text(controllers + "\n")
    (tmp_path / "mountinfo").write_text(
        f"30 23 0:26 {root} {mnt} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    (tmp_path / "cgroup").write_text(f"0::{own}\n")
    return detect(tmp_path / "mountinfo", tmp_path / "cgroup"), mnt


def make_v1(
    tmp_path: Path, mounts: tuple[str, ...] = V1_MOUNTS, own: dict[str, str] | None = None
) -> tuple[CgroupLayout, Path]:
    """Fake v1 controller mounts (``cpu,cpuacct`` co-mounted) under ``tmp_path/v1``."""
    base = tmp_path / "v1"
    lines = [f"40 31 0:40 / {base}/systemd rw - cgroup cgroup rw,xattr,name=systemd"]
    proc = ["12:name=systemd:/"]
    for i, name in enumerate(mounts):
        (base / name).mkdir(parents=True)
        lines.append(f"{41 + i} 31 0:{41 + i} / {base / name} rw - cgroup cgroup rw,{name}")
        proc.append(f"{i + 1}:{name}:{(own or {}).get(name, '/')}")
    if "cpuset" in mounts:
        (base / "cpuset" / "cpuset.cpus").write_text("0-3\n")
        (base / "cpuset" / "cpuset.mems").write_text("0\n")
    (tmp_path / "mountinfo").write_text("\n".join(lines) + "\n")
    (tmp_path / "cgroup").write_text("\n".join(proc) + "\n")
    return detect(tmp_path / "mountinfo", tmp_path / "cgroup"), base


def read(path: Path) -> str:
    return path.read_text().strip()


def all_dirs(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


# -- detection ----------------------------------------------------------------------------


def test_detect_pure_v1_with_comounted_cpu(tmp_path: Path) -> None:
    layout, base = make_v1(tmp_path)
    assert layout.mode == "v1"
    assert layout.driver == "v1"
    assert layout.unified is None
    assert layout.v1["cpu"] is layout.v1["cpuacct"]
    assert layout.v1["cpu"].mountpoint == base / "cpu,cpuacct"
    assert "systemd" not in str([h.mountpoint for h in layout.hierarchies])
    assert layout.own["memory"] == "/"


def test_detect_pure_v2(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path, own="/user.slice")
    assert layout.mode == "v2"
    assert layout.driver == "v2"
    assert layout.unified is not None
    assert layout.unified.mountpoint == mnt
    assert layout.unified.controllers >= {"memory", "pids", "cpu", "cpuset"}
    assert layout.own == {"": "/user.slice"}


def test_detect_hybrid_prefers_v1_when_unified_lacks_controllers(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    text = (
        f"32 31 0:29 / {tmp_path}/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        f"35 31 0:32 / {tmp_path}/memory rw,relatime - cgroup cgroup rw,memory\n"
        f"40 31 0:37 / {tmp_path}/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
        f"41 31 0:38 / {unified} rw,relatime - cgroup2 cgroup2 rw\n"
        "50 23 0:50 / /proc rw - proc proc rw\n"
    )
    (tmp_path / "mountinfo").write_text(text)
    layout = detect(tmp_path / "mountinfo", tmp_path / "missing")
    assert layout.mode == "hybrid"
    assert layout.driver == "v1"
    assert sorted(layout.v1) == ["cpu", "memory"]
    assert layout.own == {}
    # With the controllers delegated to the unified hierarchy, v2 wins.
    (unified / "cgroup.controllers").write_text("cpu memory pids\n")
    assert detect(tmp_path / "mountinfo").driver == "v2"


def test_detect_none_and_escaped_mountpoints(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(
        "41 31 0:38 /docker/x /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n"
    )
    (hierarchy,) = detect(tmp_path / "mountinfo").hierarchies
    assert hierarchy.mountpoint == Path("/sys/fs/cgroup/my mem")
    assert hierarchy.root == "/docker/x"
    (tmp_path / "mountinfo").write_text("50 23 0:50 / /proc rw - proc proc rw\n")
    layout = detect(tmp_path / "mountinfo")
    assert (layout.mode, layout.driver) == ("none", None)
    with pytest.raises(MissingFeatureError, match="cgroups"):
        create("/sandboxrt/x", layout=layout)


# -- resources ----------------------------------------------------------------------------


def test_resources_from_oci() -> None:
    res = Resources.from_oci(
        {
            **FULL,
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
                {"allow": True, "type": "b", "major": 8, "minor": -1, "access": "rwm"},
                {"allow": False, "type": "c", "major": 1, "minor": 5},  # (all of it)
            ],
            "blockIO": {"weight": 10},
        }
    )
    assert res.memory.limit == 64 * MiB
    assert res.memory.swap is None
    assert res.cpu.shares == 1024
    assert res.pids_limit == 16
    assert [r.v1_line() for r in res.devices] == ["a", "c 1:3 rw", "b 8:* rwm", "c 1:5 rwm"]
    # An allow rule that says not what it allows is refused (as runc), never taken for rwm.
    for access in ({}, {"access": ""}):
        with pytest.raises(SpecError, match=r"devices\[0\]\.access: an allow rule must say"):
            Resources.from_oci({"devices": [{"allow": True, "type": "c", **access}]})
    assert Resources.from_oci(None) == Resources()
    assert Resources.from_oci({"memory": {"limit": 0}}).memory.limit is None
    with pytest.raises(SpecError, match=r"cpu\.idle.*0 or 1"):
        Resources.from_oci({"cpu": {"idle": 2}})
    assert Resources.from_oci({"cpu": {"idle": 0}}).cpu.idle == 0  # (written, as runc)
    with pytest.raises(SpecError, match=r"cpu\.burst: must not exceed cpu\.quota"):
        Resources.from_oci({"cpu": {"quota": 1000, "burst": 2000}})


def test_resources_from_oci_lists_every_problem() -> None:
    with pytest.raises(SpecError) as info:
        Resources.from_oci(
            {
                "memory": {"limit": "1G", "swap": -2, "disableOOMKiller": 1},
                "cpu": {"shares": True, "cpus": 3, "burst": -1},
                "pids": [],
                "devices": [{"allow": "yes", "type": "x", "access": "rwx", "major": "1"}],
            }
        )
    paths = [p for p, _ in info.value.problems]
    assert paths == [
        "linux.resources.pids",
        "linux.resources.memory.limit",
        "linux.resources.memory.swap",
        "linux.resources.memory.disableOOMKiller",
        "linux.resources.cpu.shares",
        "linux.resources.cpu.cpus",
        "linux.resources.cpu.burst",
        "linux.resources.devices[0].allow",
        "linux.resources.devices[0].type",
        "linux.resources.devices[0].access",
        "linux.resources.devices[0].major",
    ]
    with pytest.raises(SpecError, match=">= the memory limit"):
        Resources.from_oci({"memory": {"limit": 100, "swap": 50}})
    # What the kernel refuses with a bare EINVAL, or clamps without a word (runc refuses).
    with pytest.raises(SpecError, match="swap: a swap limit needs a memory limit"):
        Resources.from_oci({"memory": {"swap": 1 << 30}})
    for shares in (1, 262145):
        with pytest.raises(SpecError, match=r"cpu\.shares: must be 2 to 262144"):
            Resources.from_oci({"cpu": {"shares": shares}})
    assert Resources.from_oci({"cpu": {"shares": 2}}).cpu.shares == 2


@pytest.mark.parametrize(
    ("shares", "weight"), [(0, 0), (2, 1), (1024, 39), (512, 20), (262144, 10000)]
)
def test_shares_to_weight(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


@pytest.mark.parametrize(
    ("swap", "limit", "expected"),
    [
        (None, None, None),
        (None, 100, None),
        (None, -1, -1),
        (-1, 100, -1),
        (300, 100, 200),
        (100, 100, 0),
    ],
)
def test_swap_to_v2(swap: int | None, limit: int | None, expected: int | None) -> None:
    assert swap_to_v2(swap, limit) == expected


def test_swap_to_v2_needs_a_memory_limit() -> None:
    with pytest.raises(SpecError, match="needs a memory limit"):
        swap_to_v2(300, None)


# -- path resolution ----------------------------------------------------------------------


def test_absolute_and_relative_paths_v2(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path, own="/user.slice/session-1.scope")
    assert isinstance(create("/sandboxrt/abs", layout=layout), CgroupV2)
    assert (mnt / "sandboxrt" / "abs").is_dir()
    rel = create("sandboxrt/rel", layout=layout)
    assert rel.directories == [mnt / "user.slice/session-1.scope/sandboxrt/rel"]
    assert create(None, container_id="c1", layout=layout).path == "/sandboxrt/c1"
    assert (mnt / "sandboxrt" / "c1").is_dir()


def test_relative_path_strips_the_mount_root(tmp_path: Path) -> None:
    # A cgroup namespace or bind mount: the mount shows /kubepods, the caller is below it.
    layout, mnt = make_v2(tmp_path, own="/kubepods/pod1", root="/kubepods")
    cgroup = create("ctr", layout=layout)
    assert cgroup.directories == [mnt / "pod1" / "ctr"]
    layout, _ = make_v2(tmp_path / "other", own="/elsewhere", root="/kubepods")
    with pytest.raises(SandboxrtError, match="outside the hierarchy"):
        create("ctr", layout=layout)


def test_relative_paths_v1_per_hierarchy(tmp_path: Path) -> None:
    layout, base = make_v1(tmp_path, own={"memory": "/job/7", "pids": "/job"})
    cgroup = create("ctr", layout=layout)
    assert isinstance(cgroup, CgroupV1)
    assert cgroup.directory("memory") == base / "memory/job/7/ctr"
    assert cgroup.directory("pids") == base / "pids/job/ctr"
    assert cgroup.directory("cpuacct") == base / "cpu,cpuacct/ctr"
    assert cgroup.directory("blkio") is None


@pytest.mark.parametrize("bad", ["/", "", ".", "../x", "/a/../../b", "a\0b"])
def test_bad_paths(tmp_path: Path, bad: str) -> None:
    layout, _ = make_v2(tmp_path)
    with pytest.raises(SpecError, match="cgroupsPath"):
        CgroupV2.create(layout, bad)
    assert all_dirs(layout.hierarchies[0].mountpoint) == set()


# -- v2 driver over a fake tree -----------------------------------------------------------


def test_v2_writes_converted_values(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    cgroup = create("/sandboxrt/c1", FULL, layout=layout)
    leaf = mnt / "sandboxrt" / "c1"
    assert read(leaf / "memory.max") == str(64 * MiB)
    assert read(leaf / "memory.low") == str(32 * MiB)
    assert read(leaf / "cpu.weight") == "39"
    assert read(leaf / "cpu.max") == "50000 100000"
    assert read(leaf / "cpuset.cpus") == "0-1"
    assert read(leaf / "cpuset.mems") == "0"
    assert read(leaf / "pids.max") == "16"
    assert not (leaf / "memory.swap.max").exists()
    # Every parent level gets the controllers for its children (io and hugetlb not).
    for parent in (mnt, mnt / "sandboxrt"):
        assert read(parent / "cgroup.subtree_control") == "+cpu +cpuset +memory +pids"
    cgroup.apply({"memory": {"limit": -1}, "cpu": {"quota": -1}, "pids": {"limit": -1}})
    assert read(leaf / "memory.max") == "max"
    assert read(leaf / "cpu.max") == "max"
    assert read(leaf / "pids.max") == "max"
    cgroup.apply({"cpu": {"period": 20000}})
    assert read(leaf / "cpu.max") == "max 20000"


def test_v2_swap(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    swap = {"memory": {"limit": 100 * MiB, "swap": 300 * MiB}}
    with pytest.raises(MissingFeatureError, match=r"memory\.swap\.max"):
        cgroup.apply(swap)
    leaf = mnt / "sandboxrt" / "c1"
    (leaf / "memory.swap.max").write_text("max\n")  # the kernel's file, with swap accounting
    cgroup.apply(swap)
    assert read(leaf / "memory.swap.max") == str(200 * MiB)
    cgroup.apply({"memory": {"limit": -1}})
    assert read(leaf / "memory.swap.max") == "max"


def test_v2_burst_idle_and_no_oom_killer_setting(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    leaf = mnt / "sandboxrt" / "c1"
    cpu = {"cpu": {"burst": 2000, "idle": 1}}
    with pytest.raises(
        MissingFeatureError, match=r"cpu\.burst \(cpu\.max\.burst\)"
    ):  # (old kernels)
        cgroup.apply(cpu)
    for name in ("cpu.max.burst", "cpu.idle"):
        (leaf / name).write_text("0\n")  # the kernel's files
    cgroup.apply(cpu)
    assert (read(leaf / "cpu.max.burst"), read(leaf / "cpu.idle")) == ("2000", "1")
    with pytest.raises(MissingFeatureError, match="disableOOMKiller on cgroup v2"):
        cgroup.apply({"memory": {"disableOOMKiller": True}})
    cgroup.apply({"memory": {"disableOOMKiller": False}})


def test_v2_block_io_enables_io_down_to_the_cgroup(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    leaf = mnt / "sandboxrt" / "c1"
    throttle = [{"major": 8, "minor": 0, "rate": 1 << 20}]
    with pytest.raises(MissingFeatureError, match=r"io\.weight"):  # (no io cost control)
        cgroup.apply({"blockIO": {"weight": 10}})
    (leaf / "io.weight").write_text("default 100\n")  # the kernel's file
    cgroup.apply({"blockIO": {"weight": 10, "throttleWriteBpsDevice": throttle}})
    for parent in (mnt, mnt / "sandboxrt"):
        assert "+io" in read(parent / "cgroup.subtree_control")
    assert read(leaf / "io.weight") == "default 1"  # (v1's 10-1000 as 1-10000)
    assert read(leaf / "io.max") == f"8:0 wbps={1 << 20}"
    with pytest.raises(MissingFeatureError, match="leafWeight"):
        cgroup.apply({"blockIO": {"leafWeight": 100}})
    cgroup.apply({"blockIO": {"weight": 0}})  # (Docker's "no weight")
    (leaf / "io.bfq.weight").write_text("default 100\n")  # BFQ's, which runc prefers
    cgroup.apply({"blockIO": {"weight": 500}})
    assert read(leaf / "io.bfq.weight") == "default 500"  # (not converted)
    no_io, _ = make_v2(tmp_path / "no-io", controllers="cpu memory pids")
    with pytest.raises(MissingFeatureError, match="io controller"):
        create("/sandboxrt/c1", layout=no_io).apply({"blockIO": {"weight": 100}})


def test_v2_hugepage_limits_enable_hugetlb_down_to_the_cgroup(tmp_path: Path) -> None:
    """As runc (kubelet writes a limit of 0 for every size a node has): they were refused."""
    layout, mnt = make_v2(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    leaf = mnt / "sandboxrt" / "c1"
    for name in ("hugetlb.2MB.max", "hugetlb.2MB.rsvd.max", "hugetlb.1GB.max"):
        (leaf / name).write_text("max\n")  # the kernel's files
    cgroup.apply(
        {"hugepageLimits": [{"pageSize": "2MB", "limit": 0}, {"pageSize": "1GB", "limit": 1 << 30}]}
    )
    assert "+hugetlb" in read(mnt / "sandboxrt" / "cgroup.subtree_control")
    assert [read(leaf / n) for n in ("hugetlb.2MB.max", "hugetlb.2MB.rsvd.max")] == ["0", "0"]
    assert read(leaf / "hugetlb.1GB.max") == str(1 << 30)
    with pytest.raises(MissingFeatureError, match=r"hugepageLimits \(hugetlb\.64KB\.max\)"):
        cgroup.apply({"hugepageLimits": [{"pageSize": "64KB", "limit": 0}]})
    with pytest.raises(SpecError, match=r"hugepageLimits\[0\]\.pageSize"):
        Resources.from_oci({"hugepageLimits": [{"pageSize": "2M", "limit": 0}]})


def test_v1_hugepage_limits_need_a_hugetlb_hierarchy(tmp_path: Path) -> None:
    limits = {"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}
    layout, _ = make_v1(tmp_path / "without")
    with pytest.raises(MissingFeatureError, match="hugepageLimits"):
        create("/sandboxrt/c1", limits, layout=layout)
    layout, base = make_v1(tmp_path / "with", (*V1_MOUNTS, "hugetlb"))
    assert create("/sandboxrt/c1", layout=layout).directory("hugetlb") is None  # (unasked)
    leaf = base / "hugetlb" / "job"
    leaf.mkdir()
    for name in ("hugetlb.2MB.limit_in_bytes", "hugetlb.2MB.rsvd.limit_in_bytes"):
        (leaf / name).write_text("9223372036854771712\n")  # the kernel's files
    cgroup = create("/job", limits, layout=layout)
    assert cgroup.directory("hugetlb") == leaf
    assert read(leaf / "hugetlb.2MB.limit_in_bytes") == "0"
    assert read(leaf / "hugetlb.2MB.rsvd.limit_in_bytes") == "0"


def test_v2_writes_unified_last_and_v1_refuses_it(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    leaf = mnt / "sandboxrt" / "c1"
    (leaf / "memory.high").write_text("max\n")  # the kernel's file
    cgroup.apply({"pids": {"limit": 5}, "unified": {"memory.high": "1048576", "pids.max": "9"}})
    assert (read(leaf / "memory.high"), read(leaf / "pids.max")) == ("1048576", "9")
    with pytest.raises(MissingFeatureError, match=r"unified\.io\.weight"):  # (no such file)
        cgroup.apply({"unified": {"io.weight": "100"}})
    assert "+io" in read(mnt / "sandboxrt" / "cgroup.subtree_control")  # (enabled for it)
    (leaf / "io.max").write_text("")
    (leaf / "hugetlb.2MB.max").write_text("max\n")
    cgroup.apply({"unified": {"io.max": "8:0 rbps=1\n8:16 wbps=2\n", "hugetlb.2MB.max": "0"}})
    # A line per write, without its newline (a fake file keeps them all, one after another).
    assert read(leaf / "io.max") == "8:0 rbps=1" + "8:16 wbps=2"
    assert read(leaf / "hugetlb.2MB.max") == "0"
    v1_layout, _ = make_v1(tmp_path / "v1")
    v1 = create("/sandboxrt/c1", layout=v1_layout)
    with pytest.raises(MissingFeatureError, match="unified on cgroup v1"):
        v1.apply({"unified": {"memory.high": "1"}})


@pytest.mark.parametrize(
    "unified",
    [
        {"cgroup.procs": "1"},
        {"memory/../x": "1"},
        {"memory": "1"},
        {"memory.high": 1},
        [],
        {"cpuset.cpus.partition": "root"},
    ],
)
def test_unified_keys_name_a_controller_s_file(unified: Any) -> None:
    with pytest.raises(SpecError, match=r"linux\.resources\.unified"):
        Resources.from_oci({"unified": unified})


def test_block_io_values_are_checked() -> None:
    with pytest.raises(SpecError) as info:
        Resources.from_oci(
            {
                "blockIO": {
                    "weight": 5,
                    "weightDevice": [{"major": 8, "minor": -1, "weight": 2000}],
                    "throttleReadBpsDevice": [
                        {"major": 8, "minor": 0, "rate": -1},
                        {"major": 8, "minor": 0, "rate": 2**64},
                    ],
                    "throttleWriteIOPSDevice": {},
                }
            }
        )
    assert [p for p, _ in info.value.problems] == [
        "linux.resources.blockIO.weightDevice[0].minor",
        "linux.resources.blockIO.weightDevice[0].weight",
        "linux.resources.blockIO.throttleReadBpsDevice[0].rate",
        "linux.resources.blockIO.throttleReadBpsDevice[1].rate",
        "linux.resources.blockIO.throttleWriteIOPSDevice",
        "linux.resources.blockIO.weight",
    ]
    io = Resources.from_oci(
        {"blockIO": {"weight": 100, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 7}]}}
    ).block_io
    assert (io.weight, io.throttles) == (100, (("read_bps", 8, 0, 7),))


def test_v2_device_rules_need_a_real_cgroup_and_missing_controllers(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path, controllers="cpu memory")
    devices = {"devices": [{"allow": False, "access": "rwm"}]}
    # A fake tree's directory is no cgroup2 directory: the program cannot be attached.
    with pytest.raises(SystemCallError, match="attaching its device program"):
        create("/sandboxrt/c1", devices, layout=layout)
    with pytest.raises(MissingFeatureError, match="cgroup controller 'pids'"):
        create("/sandboxrt/c1", {"pids": {"limit": 5}}, layout=layout)
    # A failed create leaves nothing behind (the root's subtree_control stays set).
    assert all_dirs(mnt) == set()
    assert read(mnt / "cgroup.subtree_control") == "+cpu +memory"


def test_v2_freeze_thaw_kill(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    leaf = mnt / "sandboxrt" / "c1"
    with pytest.raises(MissingFeatureError, match=r"cgroup\.freeze"):
        cgroup.freeze()
    (leaf / "cgroup.freeze").write_text("0\n")
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(SystemCallError, match="freezing"):
        cgroup.freeze(timeout=0.05)
    assert read(leaf / "cgroup.freeze") == "0"  # thawed again after the failure
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    cgroup.freeze()
    assert read(leaf / "cgroup.freeze") == "1"
    cgroup.thaw()
    assert read(leaf / "cgroup.freeze") == "0"
    (leaf / "cgroup.kill").write_text("")
    (leaf / "cgroup.procs").write_text("")
    cgroup.kill_all()  # empty: nothing to write
    assert read(leaf / "cgroup.kill") == ""


def test_v2_stats(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    leaf = mnt / "sandboxrt" / "c1"
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (leaf / "memory.current").write_text("4096\n")
    (leaf / "memory.max").write_text("max\n")
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (leaf / "pids.current").write_text("2\n")
    (leaf / "pids.max").write_text("16\n")
    stats = cgroup.stats()
    assert (stats.cpu_usage_ns, stats.cpu_user_ns, stats.cpu_system_ns) == (1500000, 10**6, 500000)
    assert (stats.memory_usage, stats.memory_limit, stats.memory_max_usage) == (4096, None, None)
    assert stats.memory_failcnt == 3
    assert stats.oom_kills == 1
    assert (stats.pids_current, stats.pids_limit) == (2, 16)
    (leaf / "memory.peak").write_text("8192\n")
    assert cgroup.stats().memory_max_usage == 8192


def test_pids_include_descendant_cgroups(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    leaf = mnt / "sandboxrt" / "c1"
    (leaf / "cgroup.procs").write_text("30\n10\n")
    (leaf / "sub" / "deeper").mkdir(parents=True)
    (leaf / "sub" / "deeper" / "cgroup.procs").write_text("20\n")
    assert cgroup.pids() == [10, 20, 30]
    cgroup.add_process(40)
    assert read(leaf / "cgroup.procs") == "40"  # the fake tree keeps only the last write


def test_write_errors_name_the_cgroup_and_file(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    (mnt / "sandboxrt" / "c1" / "pids.max").mkdir()
    with pytest.raises(SystemCallError) as info:
        cgroup.apply({"pids": {"limit": 5}})
    assert str(mnt / "sandboxrt" / "c1") in str(info.value)
    assert "writing '5' to pids.max" in str(info.value)


# -- destroy and records ------------------------------------------------------------------


def test_destroy_removes_only_created_levels(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    (mnt / "pre").mkdir()
    (mnt / "pre" / "memory.max").write_text("max\n")
    cgroup = create("/pre/sandboxrt/c1", {"pids": {"limit": 3}}, layout=layout)
    assert [p.created for p in cgroup.placements] == [
        (PurePosixPath("pre/sandboxrt"), PurePosixPath("pre/sandboxrt/c1"))
    ]
    (mnt / "pre/sandboxrt/c1/nested").mkdir()  # made by the container itself
    assert cgroup.exists()
    cgroup.destroy()
    assert not cgroup.exists()
    assert all_dirs(mnt) == {"pre"}
    assert read(mnt / "pre" / "memory.max") == "max"
    cgroup.destroy()  # idempotent


def _xattrs_work(directory: Path) -> bool:
    try:
        os.setxattr(directory, "trusted.sandboxrt.probe", b"1")
        os.removexattr(directory, "trusted.sandboxrt.probe")
    except OSError:
        return False
    return True


def test_destroy_keeps_a_created_parent_still_in_use(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    first = create("/sandboxrt/a", layout=layout)
    second = create("/sandboxrt/b", layout=layout)
    assert len(first.placements[0].created) == 2
    assert len(second.placements[0].created) == 1
    first.destroy()
    assert all_dirs(mnt) == {"sandboxrt", "sandboxrt/b"}
    second.destroy()
    if _xattrs_work(mnt):
        # Made by `first`, which is gone, but marked: the last cgroup under it removes it.
        assert all_dirs(mnt) == set()
    else:
        assert all_dirs(mnt) == {"sandboxrt"}  # unmarked: only its creator removes it


def test_marked_parents_only(tmp_path: Path) -> None:
    if not _xattrs_work(tmp_path):
        pytest.skip("needs trusted.* extended attributes (root)")
    layout, mnt = make_v2(tmp_path)
    (mnt / "pre").mkdir()
    cgroup = create("/pre/sandboxrt/mid/c1", layout=layout)
    assert os.getxattr(mnt / "pre/sandboxrt", cgroup_marks.PARENT_XATTR) == b"1"
    assert os.getxattr(mnt / "pre/sandboxrt/mid", cgroup_marks.PARENT_XATTR) == b"1"
    with pytest.raises(OSError):
        os.getxattr(mnt / "pre/sandboxrt/mid/c1", cgroup_marks.PARENT_XATTR)  # the leaf: not shared
    other = create("/pre/sandboxrt/mid/c2", layout=layout)
    assert other.placements[0].created == (PurePosixPath("pre/sandboxrt/mid/c2"),)
    cgroup.destroy()
    assert all_dirs(mnt) == {"pre", "pre/sandboxrt", "pre/sandboxrt/mid", "pre/sandboxrt/mid/c2"}
    other.destroy()  # did not make the parents, but they are marked and now empty
    assert all_dirs(mnt) == {"pre"}


def test_create_starts_over_when_a_parent_vanishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _xattrs_work(tmp_path):
        pytest.skip("needs trusted.* extended attributes (root)")
    layout, mnt = make_v1(tmp_path, mounts=("cpuset",))
    nodes = {"cpu": {"mems": "0"}}  # a cpuset cgroup is made only when the spec sets one
    first = create("/sandboxrt/a", nodes, layout=layout)
    real_mkdir = os.mkdir
    calls: list[str] = []

    def racing_mkdir(path: Any, mode: int = 0o777) -> None:
        calls.append(str(path))
        if str(path).endswith("sandboxrt/b") and len(calls) == 2:
            first.destroy()  # the last other container goes, taking the shared parent along
        real_mkdir(path, mode)

    monkeypatch.setattr(common.os, "mkdir", racing_mkdir)
    second = create("/sandboxrt/b", nodes, layout=layout)
    monkeypatch.undo()
    cpuset = mnt / "cpuset"
    names = [c.split("/cpuset/")[1] for c in calls]
    assert names == ["sandboxrt", "sandboxrt/b", "sandboxrt", "sandboxrt/b"]
    assert second.placements[0].created == (
        PurePosixPath("sandboxrt"),
        PurePosixPath("sandboxrt/b"),
    )
    assert read(cpuset / "sandboxrt" / "cpuset.cpus") == "0-3"
    assert read(cpuset / "sandboxrt/b" / "cpuset.cpus") == "0-3"
    second.destroy()
    assert all_dirs(cpuset) == set()


def test_destroy_leaves_a_pre_existing_leaf(tmp_path: Path) -> None:
    layout, mnt = make_v2(tmp_path)
    (mnt / "sandboxrt" / "c1").mkdir(parents=True)
    cgroup = create("/sandboxrt/c1", layout=layout)
    assert cgroup.placements[0].created == ()
    cgroup.destroy()
    assert all_dirs(mnt) == {"sandboxrt", "sandboxrt/c1"}


def test_a_default_cgroup_is_never_shared(tmp_path: Path) -> None:
    layout, base = make_v1(tmp_path)
    (base / "pids" / "sandboxrt" / "c1").mkdir(parents=True)  # another store's "c1"
    before = all_dirs(base)
    with pytest.raises(SystemCallError, match="pids/sandboxrt/c1: it exists already") as info:
        create(None, container_id="c1", layout=layout)
    assert info.value.errno == errno.EEXIST
    assert all_dirs(base) == before  # what it made in the other hierarchies is gone again
    # An explicit cgroupsPath may name an existing cgroup: it is used, and left in place.
    explicit = create("/sandboxrt/c1", layout=layout)
    explicit.destroy()
    assert all_dirs(base) == before


def test_record_round_trip_and_destroy_from_another_object(tmp_path: Path) -> None:
    layout, base = make_v1(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    record = json.loads(json.dumps(cgroup.to_dict()))
    with pytest.raises(CorruptMetadataError, match="no cgroup mount"):
        load(record)  # (a fake tree: no cgroup hierarchy mounted there)
    again = load(record, layout=layout)
    assert isinstance(again, CgroupV1)
    assert again.path == "/sandboxrt/c1"
    assert again.directories == cgroup.directories
    again.destroy()
    assert not any(d.exists() for d in cgroup.directories)
    assert not (base / "memory" / "sandboxrt").exists()


@pytest.mark.parametrize(
    "change",
    [
        {"driver": "v3"},
        {"placements": []},
        {"placements": "x"},
        {"placements": [{"mountpoint": "rel", "controllers": [], "path": "a", "created": []}]},
        {"placements": [{"mountpoint": "/m", "controllers": [], "path": "a", "created": ["b"]}]},
        {"placements": [{"mountpoint": "/m", "controllers": [], "path": "../a", "created": []}]},
        {"placements": [{"mountpoint": "/m", "controllers": [], "path": "/a", "created": []}]},
        {"placements": [{"mountpoint": "/m", "controllers": [], "path": ".", "created": []}]},
    ],
)
def test_load_rejects_bad_records(change: dict[str, Any]) -> None:
    record: dict[str, Any] = {"driver": "v2", "path": "/x", "placements": []}
    record.update(change)
    with pytest.raises(CorruptMetadataError, match="bad cgroup record"):
        load(record, container_id="c1")


# -- v1 driver over a fake tree -----------------------------------------------------------


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """Every ``(directory name, file, value)`` the v1 driver writes, in order."""
    done: list[tuple[str, str, str]] = []
    real = common.write_file

    real_lines = common.write_lines

    def record(directory: Path, name: str, value: str | int) -> None:
        done.append((directory.name, name, str(value)))
        real(directory, name, value)

    def record_lines(directory: Path, lines: Iterable[tuple[str, str | int]]) -> None:
        lines = list(lines)
        done.extend((directory.name, name, str(value)) for name, value in lines)
        real_lines(directory, lines)

    monkeypatch.setattr(v1_module, "write_file", record)
    monkeypatch.setattr(v1_module, "write_lines", record_lines)
    return done


def test_memory_swappiness(tmp_path: Path) -> None:
    """0 is a value (no swapping); 2**64-1 is unset, as runc has it; cgroup v2 has none."""
    layout, base = make_v1(tmp_path / "v1")
    create("/sandboxrt/c1", {"memory": {"swappiness": 0}}, layout=layout)
    assert read(PathMap(base, "sandboxrt/c1")["memory"] / "memory.swappiness") == "0"
    create("/sandboxrt/c2", {"memory": {"swappiness": 2**64 - 1}}, layout=layout)
    assert not (PathMap(base, "sandboxrt/c2")["memory"] / "memory.swappiness").exists()
    with pytest.raises(SpecError, match=r"swappiness: must be from 0 to 100"):
        create("/sandboxrt/c3", {"memory": {"swappiness": 101}}, layout=layout)
    v2, _ = make_v2(tmp_path / "v2")
    with pytest.raises(MissingFeatureError, match=r"memory\.swappiness on cgroup v2"):
        create("/sandboxrt/c4", {"memory": {"swappiness": 10}}, layout=v2)


def test_v1_writes(tmp_path: Path, writes: list[tuple[str, str, str]]) -> None:
    layout, base = make_v1(tmp_path)
    devices = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    ]
    create("/sandboxrt/c1", {**FULL, "devices": devices}, layout=layout)
    leaf = PathMap(base, "sandboxrt/c1")
    assert read(leaf["memory"] / "memory.limit_in_bytes") == str(64 * MiB)
    assert read(leaf["memory"] / "memory.soft_limit_in_bytes") == str(32 * MiB)
    assert read(leaf["cpu,cpuacct"] / "cpu.shares") == "1024"
    assert read(leaf["cpu,cpuacct"] / "cpu.cfs_quota_us") == "50000"
    assert read(leaf["cpu,cpuacct"] / "cpu.cfs_period_us") == "100000"
    assert read(leaf["pids"] / "pids.max") == "16"
    assert read(leaf["cpuset"] / "cpuset.cpus") == "0-1"
    # Each new cpuset level first inherits its parent's cpus and mems.
    assert writes[:4] == [
        ("sandboxrt", "cpuset.cpus", "0-3"),
        ("sandboxrt", "cpuset.mems", "0"),
        ("c1", "cpuset.cpus", "0-3"),
        ("c1", "cpuset.mems", "0"),
    ]
    assert [w for w in writes if w[1].startswith("devices")] == [
        ("c1", "devices.deny", "a"),  # the spec's own first rule: not written twice
        ("c1", "devices.allow", "c 1:3 rwm"),
    ]
    assert [w[1] for w in writes if w[1].startswith("cpu.")] == [
        "cpu.shares",
        "cpu.cfs_period_us",
        "cpu.cfs_quota_us",
    ]


def test_v1_device_rules_start_by_denying_every_device(
    tmp_path: Path, writes: list[tuple[str, str, str]]
) -> None:
    layout, base = make_v1(tmp_path)
    devices = [
        {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rw"},
        {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "r"},
    ]
    create("/sandboxrt/c1", {"devices": devices}, layout=layout)
    assert [w for w in writes if w[1].startswith("devices")] == [
        ("c1", "devices.deny", "a"),
        ("c1", "devices.allow", "c 1:5 rw"),
        ("c1", "devices.allow", "c 1:9 r"),
    ]
    # Each file is opened once: in a fake tree (a plain file) the second line follows
    # the first, where reopening it would have truncated it.
    allowed = read(PathMap(base, "sandboxrt/c1")["devices"] / "devices.allow")
    assert allowed == "c 1:5 rwc 1:9 r"


class PathMap:
    """``m["memory"]``: the cgroup ``rel`` in the fake v1 hierarchy ``memory``."""

    def __init__(self, base: Path, rel: str) -> None:
        self.base, self.rel = base, rel

    def __getitem__(self, mount: str) -> Path:
        return self.base / mount / self.rel


def test_v1_swap_ordering(tmp_path: Path, writes: list[tuple[str, str, str]]) -> None:
    layout, base = make_v1(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    swap = {"memory": {"limit": 100 * MiB, "swap": 300 * MiB}}
    with pytest.raises(MissingFeatureError, match=r"memory\.memsw \(swap accounting\)"):
        cgroup.apply(swap)
    mem = base / "memory/sandboxrt/c1"
    (mem / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    writes.clear()
    cgroup.apply(swap)  # lowering from unlimited: memory first
    assert [w[1] for w in writes] == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    writes.clear()
    cgroup.apply({"memory": {"limit": 400 * MiB, "swap": 800 * MiB}})  # raising: swap first
    assert [w[1] for w in writes] == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    writes.clear()
    cgroup.apply({"memory": {"limit": -1}})  # unlimited memory: unlimited swap too
    assert writes == [
        ("c1", "memory.memsw.limit_in_bytes", "-1"),
        ("c1", "memory.limit_in_bytes", "-1"),
    ]


def test_v1_missing_controller(tmp_path: Path) -> None:
    layout, base = make_v1(tmp_path, mounts=("cpu,cpuacct", "memory"))
    cgroup = create("/sandboxrt/c1", {"memory": {"limit": MiB}}, layout=layout)
    with pytest.raises(MissingFeatureError, match="cgroup controller 'pids'"):
        cgroup.apply({"pids": {"limit": 5}})
    with pytest.raises(MissingFeatureError, match="cgroup controller 'freezer'"):
        cgroup.freeze()
    with pytest.raises(MissingFeatureError, match="cgroup controller 'pids'"):
        create("/sandboxrt/c2", {"pids": {"limit": 5}}, layout=layout)
    assert sorted(all_dirs(base)) == [
        "cpu,cpuacct",
        "cpu,cpuacct/sandboxrt",
        "cpu,cpuacct/sandboxrt/c1",
        "memory",
        "memory/sandboxrt",
        "memory/sandboxrt/c1",
    ]


def test_v1_freeze_and_stats(tmp_path: Path) -> None:
    layout, base = make_v1(tmp_path)
    cgroup = create("/sandboxrt/c1", layout=layout)
    cgroup.freeze()
    assert read(base / "freezer/sandboxrt/c1/freezer.state") == "FROZEN"
    cgroup.thaw()
    assert read(base / "freezer/sandboxrt/c1/freezer.state") == "THAWED"
    acct = base / "cpu,cpuacct/sandboxrt/c1"
    (acct / "cpuacct.usage").write_text("123456789\n")
    (acct / "cpuacct.stat").write_text("user 7\nsystem 3\n")
    mem = base / "memory/sandboxrt/c1"
    (mem / "memory.usage_in_bytes").write_text("4096\n")
    (mem / "memory.max_usage_in_bytes").write_text("8192\n")
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (mem / "memory.failcnt").write_text("2\n")
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    (base / "pids/sandboxrt/c1/pids.current").write_text("3\n")
    (base / "pids/sandboxrt/c1/pids.max").write_text("max\n")
    stats = cgroup.stats()
    tick = 10**9 // os.sysconf("SC_CLK_TCK")
    assert (stats.cpu_usage_ns, stats.cpu_user_ns, stats.cpu_system_ns) == (
        123456789,
        7 * tick,
        3 * tick,
    )
    assert (stats.memory_usage, stats.memory_max_usage, stats.memory_limit) == (4096, 8192, None)
    assert stats.memory_failcnt == 2
    assert stats.oom_kills == 4
    assert (stats.pids_current, stats.pids_limit) == (3, None)
    (mem / "made" / "deeper").mkdir(parents=True)  # (by the container: v1 counts each's own)
    (mem / "made" / "deeper" / "memory.oom_control").write_text("oom_kill 2\n")
    assert cgroup.stats().oom_kills == 6


# -- the real kernel ----------------------------------------------------------------------


def _real_layout() -> CgroupLayout | None:
    try:
        return detect()
    except OSError:
        return None


REAL = _real_layout()
REAL_V1 = REAL is not None and {"memory", "pids", "freezer"} <= set(REAL.v1)
REAL_UNIFIED = REAL.unified if REAL is not None else None
REAL_V2 = REAL_UNIFIED is not None and {"memory", "pids"} <= REAL_UNIFIED.controllers
IS_ROOT = os.geteuid() == 0


@contextlib.contextmanager
def _real_cgroup(cls: type[Cgroup], resources: dict[str, Any]) -> Iterator[Cgroup]:
    """A real cgroup named sandboxrt-test-*, removed (with its processes) in any case."""
    assert REAL is not None
    cgroup = cls.create(REAL, f"/sandboxrt-test-{secrets.token_hex(4)}/ctr", resources)
    try:
        yield cgroup
    finally:
        for pid in cgroup.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        with contextlib.suppress(SandboxrtError):
            cgroup.destroy(timeout=5.0)
        for placement in cgroup.placements:
            for level in reversed(placement.created):
                with contextlib.suppress(OSError):
                    (placement.mountpoint / level).rmdir()


@contextlib.contextmanager
def _run_in(cgroup: Cgroup) -> Iterator[tuple[subprocess.Popen[bytes], list[int]]]:
    """Start ``sh`` (a sleep in the foreground, one in the background) inside ``cgroup``."""
    child = subprocess.Popen(
        ["sh", "-c", "read go; sleep 100 & sleep 100"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        cgroup.add_process(child.pid)
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        wait_until(lambda: len(cgroup.pids()) == 3)  # sh and both sleeps, forked inside
        yield child, cgroup.pids()
    finally:
        child.kill()
        child.wait()


def _check_lifecycle(cgroup: Cgroup, freezer_state: Any) -> None:
    created = [p.mountpoint / c for p in cgroup.placements for c in p.created]
    assert created
    assert all(d.is_dir() for d in created)
    with _run_in(cgroup) as (child, pids):
        assert child.pid in pids
        stats = cgroup.stats()
        assert stats.memory_usage > 0
        assert stats.pids_current == 3
        assert stats.pids_limit == 16
        assert stats.memory_limit == 64 * MiB
        cgroup.freeze()
        assert freezer_state() == "frozen"
        cgroup.thaw()
        assert freezer_state() == "thawed"
        cgroup.kill_all(timeout=10)
        assert cgroup.pids() == []
        assert child.wait(timeout=5) == -9
        for pid in pids:  # the forked sleeps too: gone or a zombie
            info = procfs.read_stat(pid)
            assert info is None or info.state in "ZX"
    # Destroy from a second object, as another process would from its metadata record.
    load(json.loads(json.dumps(cgroup.to_dict()))).destroy()
    assert not any(d.exists() for d in created)


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="needs root to create cgroups")
@pytest.mark.skipif(not REAL_V1, reason="needs cgroup v1 memory, pids and freezer controllers")
def test_real_v1_lifecycle() -> None:
    devices = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    ]
    resources: dict[str, Any] = {
        "memory": {"limit": 64 * MiB, "swap": 128 * MiB},
        "pids": {"limit": 16},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "devices": devices,
    }
    assert REAL is not None
    if not (REAL.v1["memory"].mountpoint / "memory.memsw.limit_in_bytes").exists():
        del resources["memory"]["swap"]
    with _real_cgroup(CgroupV1, resources) as cgroup:
        assert isinstance(cgroup, CgroupV1)
        memory, cpu = cgroup.require("memory"), cgroup.require("cpu")
        assert read(memory / "memory.limit_in_bytes") == str(64 * MiB)
        assert read(cgroup.require("pids") / "pids.max") == "16"
        assert read(cpu / "cpu.shares") == "512"
        assert read(cpu / "cpu.cfs_quota_us") == "50000"
        assert read(cgroup.require("cpuset") / "cpuset.cpus") == "0"
        assert read(cgroup.require("devices") / "devices.list") == "c 1:3 rwm"
        state = cgroup.require("freezer") / "freezer.state"
        _check_lifecycle(cgroup, lambda: read(state).lower())


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="needs root to create cgroups")
@pytest.mark.skipif(
    not REAL_V2, reason="needs a cgroup2 mount with the memory and pids controllers"
)
def test_real_v2_lifecycle() -> None:
    resources = {"memory": {"limit": 64 * MiB}, "pids": {"limit": 16}}
    with _real_cgroup(CgroupV2, resources) as cgroup:
        events = cgroup.directories[0] / "cgroup.events"
        _check_lifecycle(
            cgroup,
            lambda: "frozen" if "frozen 1" in events.read_text() else "thawed",
        )


def _bpf_refusal() -> str | None:
    """Why this process may not load a cgroup device program, or ``None`` when it may."""
    try:
        fd = syscalls.bpf_prog_load(
            abi.BPF_PROG_TYPE_CGROUP_DEVICE,
            devicefilter.compile_rules([DeviceRule(True, "a")]),
            devicefilter.LICENSE,
        )
    except OSError as err:
        return f"bpf(BPF_PROG_LOAD) is refused: {err}"
    os.close(fd)
    return None


BPF_REFUSED = _bpf_refusal() if IS_ROOT else "needs root to load bpf programs"

#: Tries each device access and prints ``name: ok | EPERM | ...`` as JSON once told to go.
_DEVICE_PROBE = """
import errno, json, os, stat, sys
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as err:
        return errno.errorcode[err.errno]
def opening(path, flags):
    return lambda: os.close(os.open(path, flags | os.O_CLOEXEC))
def making(name, minor):
    path = os.path.join(sys.argv[1], name)
    return lambda: os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, minor))
probes = {
    "null_w": opening("/dev/null", os.O_WRONLY),
    "null_rw": opening("/dev/null", os.O_RDWR),
    "zero_r": opening("/dev/zero", os.O_RDONLY),
    "zero_w": opening("/dev/zero", os.O_WRONLY),
    "zero_rw": opening("/dev/zero", os.O_RDWR),
    "full_r": opening("/dev/full", os.O_RDONLY),
    "mknod_null": making("null", 3),
    "mknod_zero": making("zero", 5),
}
sys.stdin.readline()
print(json.dumps({name: attempt(action) for name, action in probes.items()}), flush=True)
"""


def _device_verdicts(cgroup: Cgroup, scratch: Path) -> dict[str, str]:
    """Run the device probe in a fresh process moved into ``cgroup``; its verdicts."""
    scratch.mkdir()
    child = subprocess.Popen(
        ["python3", "-I", "-c", _DEVICE_PROBE, str(scratch)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        cgroup.add_process(child.pid)
        out, _ = child.communicate(b"go\n", timeout=30)
        assert child.returncode == 0
        return dict(json.loads(out))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _attached(directory: Path) -> list[int]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return syscalls.bpf_prog_query(fd, abi.BPF_CGROUP_DEVICE)
    finally:
        os.close(fd)


def _program_exists(prog_id: int) -> bool:
    try:
        os.close(syscalls.bpf_prog_get_fd_by_id(prog_id))
    except FileNotFoundError:
        return False
    return True


@pytest.mark.root
@pytest.mark.skipif(REAL_UNIFIED is None, reason="needs a cgroup2 mount")
@pytest.mark.skipif(BPF_REFUSED is not None, reason=str(BPF_REFUSED))
def test_real_v2_device_program(tmp_path: Path) -> None:
    deny_all = {"allow": False, "access": "rwm"}
    null_rwm = {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    zero_r = {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"}
    with _real_cgroup(CgroupV2, {"devices": [deny_all, null_rwm, zero_r]}) as cgroup:
        directory = cgroup.directories[0]
        first = _attached(directory)
        assert len(first) == 1
        assert _device_verdicts(cgroup, tmp_path / "one") == {
            "null_w": "ok",
            "null_rw": "ok",
            "zero_r": "ok",
            "zero_w": "EPERM",
            "zero_rw": "EPERM",  # r only: read and write together is more
            "full_r": "EPERM",
            "mknod_null": "ok",
            "mknod_zero": "EPERM",
        }
        assert (tmp_path / "one" / "null").is_char_device()
        # Applying rules again replaces the program: one attached, the new verdicts.
        zero_rw = {**zero_r, "access": "rw"}
        cgroup.apply({"devices": [deny_all, zero_rw]})
        second = _attached(directory)
        assert len(second) == 1 and second != first
        verdicts = _device_verdicts(cgroup, tmp_path / "two")
        assert (verdicts["null_w"], verdicts["zero_rw"], verdicts["mknod_zero"]) == (
            "EPERM",
            "ok",
            "EPERM",
        )
        assert cgroup.pids() == []
    # The program went with the cgroup (released by the kernel once the cgroup is gone).
    assert not directory.exists()
    wait_until(lambda: not _program_exists(second[0]), timeout=10.0)


@pytest.mark.root
@pytest.mark.skipif(REAL_UNIFIED is None, reason="needs a cgroup2 mount")
@pytest.mark.skipif(BPF_REFUSED is not None, reason=str(BPF_REFUSED))
def test_real_v2_device_program_leaves_a_pre_existing_cgroup(tmp_path: Path) -> None:
    assert REAL is not None and REAL_UNIFIED is not None
    name = f"sandboxrt-test-{secrets.token_hex(4)}"
    directory = REAL_UNIFIED.mountpoint / name
    directory.mkdir()
    try:
        cgroup = CgroupV2.create(REAL, f"/{name}", {"devices": [{"allow": False}]})
        assert len(_attached(directory)) == 1
        assert _device_verdicts(cgroup, tmp_path / "probe")["null_w"] == "EPERM"
        cgroup.destroy()
        assert directory.is_dir() and _attached(directory) == []
    finally:
        directory.rmdir()


def test_package_exports() -> None:
    for name in cgroups.__all__:
        assert hasattr(cgroups, name)
    assert DeviceRule(allow=True).v1_line() == "a"


def test_default_path_scope_keeps_stores_apart(tmp_path: Path) -> None:
    from sandboxrt import _cgroup
    from sandboxrt.stores.file import default_root

    assert cgroups.default_path("c1") == "/sandboxrt/c1"
    assert cgroups.default_path("c1", "ab12") == "/sandboxrt/ab12/c1"
    assert _cgroup.scope_for(default_root() / ".sandboxes") == ""
    one, two = _cgroup.scope_for(tmp_path / "a"), _cgroup.scope_for(tmp_path / "b")
    assert one and two and one != two


def test_v1_places_a_cgroup_in_cpuset_only_for_cpus_or_mems(tmp_path: Path) -> None:
    layout, mnt = make_v1(tmp_path, mounts=("cpuset", "memory"))
    plain = create("/sandboxrt/plain", layout=layout)
    assert [p.controllers for p in plain.placements] == [frozenset({"memory"})]
    pinned = create("/sandboxrt/pinned", {"cpu": {"cpus": "1"}}, layout=layout)
    assert {c for p in pinned.placements for c in p.controllers} == {"cpuset", "memory"}
    assert read(mnt / "cpuset/sandboxrt/pinned/cpuset.cpus") == "1"
    plain.destroy()
    pinned.destroy()


@pytest.mark.skipif(not IS_ROOT, reason="needs root for a mount namespace")
@pytest.mark.skipif(not REAL_V1, reason="needs cgroup v1 controllers mounted")
def test_detect_parses_the_mount_table_again_once_it_changed() -> None:
    # In a private mount namespace of a second process: unmounting a hierarchy there
    # must show in the next detect(), which otherwise reuses the last parse.
    code = (
        "import ctypes, os\n"
        "from sandboxrt._os.cgroups import detect\n"
        "from sandboxrt._os import syscalls\n"
        "from sandboxrt._core import abi\n"
        "syscalls.unshare(abi.CLONE_NEWNS)\n"
        "syscalls.mount(None, '/', None, abi.MS_REC | abi.MS_PRIVATE)\n"
        "before = detect()\n"
        "assert detect().hierarchies == before.hierarchies\n"
        "pids = next(h for h in before.hierarchies if 'pids' in h.controllers)\n"
        "syscalls.umount2(str(pids.mountpoint), 0)\n"
        "after = detect()\n"
        "print(sorted(c for h in after.hierarchies for c in h.controllers))\n"
    )
    done = in_python(code)
    assert done.returncode == 0, done.stderr
    assert "'pids'" not in done.stdout
    assert "'memory'" in done.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.isdir("/sys/fs/cgroup/freezer"),
    reason="needs root and a v1 freezer hierarchy",
)
def test_the_cgroups_beneath_one_stop_at_a_mount_and_a_thaw_never_blocks() -> None:
    """What the supervisor thaws and removes beneath a container's cgroup (through fds,
    decision 64) is cgroups only: a filesystem mounted on one (with a FIFO named
    ``freezer.state``, a directory) is not walked into, and a thaw does not block."""
    top = f"/sys/fs/cgroup/freezer/sbrt-test-{secrets.token_hex(4)}"
    code = (
        "import os, signal, subprocess, sys\n"
        "from sandboxrt._os import cgroup_fds\n"
        f"top = {top!r}\n"
        "for name in ('', '/child', '/child/grand', '/mnt'):\n"
        "    os.mkdir(top + name)\n"
        "subprocess.run(['mount', '--make-rprivate', '/'], check=True)\n"
        "subprocess.run(['mount', '-t', 'tmpfs', 'none', top + '/mnt'], check=True)\n"
        "os.mkdir(top + '/mnt/hostdir')\n"
        "os.mkfifo(top + '/mnt/freezer.state')\n"
        "fd = os.open(top, os.O_PATH | os.O_DIRECTORY)\n"
        "below = cgroup_fds.cgroups_below(fd)\n"
        "print(*sorted(name for _, name, _ in below))\n"
        "signal.alarm(10)  # (a thaw opening the FIFO would wait for a reader for ever)\n"
        "cgroup_fds.thaw([fd], below=True)\n"
        "print('thawed')\n"
    )
    try:
        done = in_python(code, under=["unshare", "--mount", "--propagation", "private"])
        assert done.stdout.split("\n")[:2] == ["child grand", "thawed"], done
    finally:
        for name in ("/child/grand", "/child", "/mnt", ""):  # (the mount went with its namespace)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(top + name)


@pytest.mark.parametrize(
    ("requested", "kernel", "named"),
    [
        (4196, 4096, "4096 bytes, the 4196 asked for in whole pages"),
        (8192, 8192, "8192 bytes"),
        (-1, 9223372036854771712, "9223372036854771712 bytes"),  # (no limit: met the host's)
        (None, 4096, "4096 bytes"),
        (1 << 30, 1 << 20, f"{1 << 20} bytes"),  # (a parent's limit, not a rounding)
    ],
)
def test_the_memory_limit_met_is_named_as_the_kernel_keeps_it(
    monkeypatch: pytest.MonkeyPatch, requested: int | None, kernel: int, named: str
) -> None:
    """The limit asked for is named too only when the kernel rounded it to whole pages."""

    class Met:
        def stats(self) -> CgroupStats:
            return CgroupStats(memory_limit=kernel, oom_kills=1)

    monkeypatch.setattr(_cgroup.cgroups, "load", lambda *_a, **_k: Met())
    said = _cgroup.memory_limit_hit({"placements": []}, "c1", requested)
    assert said == f"its memory limit ({named}) was reached: the OOM killer killed"
