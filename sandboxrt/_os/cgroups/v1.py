"""The cgroup v1 driver: one directory per controller hierarchy.

Controllers may be mounted separately or together (``cpu,cpuacct``); a
controller that is not mounted only matters when a resource needs it, which
then raises :class:`MissingFeatureError`. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath

from sandboxrt.errors import MissingFeatureError, SystemCallError

from .common import (
    Cgroup,
    CgroupStats,
    block_device_errors,
    burst_before_quota,
    make_levels,
    read_file,
    read_int,
    read_keyed,
    read_optional,
    write_file,
    write_lines,
    write_newer_file,
)
from .layout import V1_CONTROLLERS, CgroupLayout, Hierarchy
from .resources import (
    BlockIOResources,
    CpuResources,
    MemoryResources,
    Resources,
    ResourcesLike,
    as_resources,
)

__all__ = ["CgroupV1"]

_MEMSW = "memory.memsw.limit_in_bytes"
#: The first device rule: deny every device.
_DENY_ALL = ("devices.deny", "a")
_DEVICE_FILES = {True: "devices.allow", False: "devices.deny"}


class CgroupV1(Cgroup):
    """A cgroup in the v1 hierarchies of cpu, cpuacct, cpuset, devices, freezer, memory, pids."""

    driver = "v1"

    @classmethod
    def _hierarchies(cls, layout: CgroupLayout, resources: Resources) -> list[Hierarchy]:
        """Every v1 hierarchy of :data:`V1_CONTROLLERS`, but a cpuset-only one unless the
        resources set CPUs or memory nodes: a new cpuset cgroup must be given its
        parent's lists level by level (a third of the cost of making the whole cgroup),
        and one with its parent's lists changes nothing; and blkio's when they ask
        for block I/O weights or throttles."""
        wanted = V1_CONTROLLERS
        if resources.cpu.cpus is None and resources.cpu.mems is None:
            wanted = wanted - {"cpuset"}
        if resources.block_io != BlockIOResources():  # (blkio only when asked for)
            wanted = wanted | {"blkio"}
        if resources.hugepages:  # (hugetlb too)
            if not any(h.version == 1 and "hugetlb" in h.controllers for h in layout.hierarchies):
                raise MissingFeatureError(
                    "linux.resources.hugepageLimits", "no cgroup v1 hugetlb hierarchy is mounted"
                )
            wanted = wanted | {"hugetlb"}
        found = [h for h in layout.hierarchies if h.version == 1 and h.controllers & wanted]
        if not found:
            raise MissingFeatureError("cgroup v1", "no cgroup v1 controller is mounted")
        return found

    def _make(self, hierarchy: Hierarchy, rel: PurePosixPath) -> tuple[PurePosixPath, ...]:
        if "cpuset" not in hierarchy.controllers:
            return make_levels(hierarchy.mountpoint, rel)
        # Before: a parent another container just made may not have its CPUs yet.
        return make_levels(hierarchy.mountpoint, rel, before=_copy_cpuset, after=_copy_cpuset)

    def apply(self, resources: ResourcesLike) -> None:
        res = as_resources(resources)
        if res.unified:
            raise MissingFeatureError(
                "linux.resources.unified on cgroup v1", "it names cgroup v2 files"
            )
        self._apply_memory(res.memory)
        self._apply_cpu(res.cpu)
        self._apply_block_io(res.block_io)
        for size, most in res.hugepages:
            directory = self.require("hugetlb")
            name = f"hugetlb.{size}.limit_in_bytes"
            write_newer_file(directory, name, most, field="linux.resources.hugepageLimits")
            if (directory / f"hugetlb.{size}.rsvd.limit_in_bytes").exists():  # (as runc)
                write_file(directory, f"hugetlb.{size}.rsvd.limit_in_bytes", most)
        if res.pids_limit is not None:
            limit = "max" if res.pids_limit < 0 else res.pids_limit
            write_file(self.require("pids"), "pids.max", limit)
        if res.devices:
            rules = [
                ("devices.allow" if r.allow else "devices.deny", r.v1_line()) for r in res.devices
            ]
            if rules[0] != _DENY_ALL:  # (a spec's rules usually start with it)
                rules.insert(0, _DENY_ALL)
            write_lines(self.require("devices"), rules)

    def _apply_memory(self, mem: MemoryResources) -> None:
        if mem == MemoryResources():
            return
        directory = self.require("memory")
        if mem.swappiness is not None:
            write_file(directory, "memory.swappiness", mem.swappiness)
        if mem.disable_oom_killer:
            write_file(directory, "memory.oom_control", 1)
        if mem.reservation is not None:
            write_file(directory, "memory.soft_limit_in_bytes", mem.reservation)
        limit, swap = mem.limit, mem.swap
        has_swap = (directory / _MEMSW).exists()
        if limit == -1 and swap is None and has_swap:
            swap = -1  # unlimited memory means unlimited memory+swap too
        if swap is not None and not has_swap:
            raise MissingFeatureError(
                "memory.memsw (swap accounting)", f"{directory} has no {_MEMSW}"
            )
        # memory+swap must stay >= memory: order the two writes so that it does (as runc).
        swap_first = False
        if limit is not None and swap is not None:
            current = read_int(directory, "memory.limit_in_bytes")  # None: unlimited
            swap_first = swap == -1 or (current is not None and current < swap)
        if swap_first and swap is not None:
            write_file(directory, _MEMSW, swap)
        if limit is not None:
            write_file(directory, "memory.limit_in_bytes", limit)
        if not swap_first and swap is not None:
            write_file(directory, _MEMSW, swap)

    def _apply_block_io(self, io: BlockIOResources) -> None:
        if io == BlockIOResources():
            return
        with block_device_errors():
            self._write_block_io(io)

    def _write_block_io(self, io: BlockIOResources) -> None:
        directory = self.require("blkio")
        # The weights are CFQ's files, or BFQ's (the scheduler of the device decides).
        if io.weight is not None:
            write_newer_file(directory, ("blkio.weight", "blkio.bfq.weight"), io.weight)
        if io.leaf_weight is not None:
            write_newer_file(directory, "blkio.leaf_weight", io.leaf_weight)
        for major, minor, weight, leaf in io.weight_devices:
            files = ("blkio.weight_device", "blkio.bfq.weight_device")
            if weight is not None:
                write_newer_file(directory, files, f"{major}:{minor} {weight}")
            if leaf is not None:
                write_newer_file(directory, "blkio.leaf_weight_device", f"{major}:{minor} {leaf}")
        for kind, major, minor, rate in io.throttles:
            name = f"blkio.throttle.{kind}_device"
            write_newer_file(directory, name, f"{major}:{minor} {rate}")

    def _apply_cpu(self, cpu: CpuResources) -> None:
        if cpu.shares is not None or cpu.quota is not None or cpu.period is not None:
            directory = self.require("cpu")
            if cpu.shares is not None:
                write_file(directory, "cpu.shares", cpu.shares)
            burst_before_quota(directory, "cpu.cfs_burst_us", cpu)
            quota_done = False
            if cpu.period is not None:
                try:
                    write_file(directory, "cpu.cfs_period_us", cpu.period)
                except SystemCallError as err:
                    # The current quota may not fit the new period: write the quota first.
                    if err.errno != errno.EINVAL or cpu.quota is None:
                        raise
                    write_file(directory, "cpu.cfs_quota_us", cpu.quota)
                    write_file(directory, "cpu.cfs_period_us", cpu.period)
                    quota_done = True
            if cpu.quota is not None and not quota_done:
                write_file(directory, "cpu.cfs_quota_us", cpu.quota)
        self._write_cpu_settings("cpu.cfs_burst_us", cpu)
        for name, value in (("cpuset.cpus", cpu.cpus), ("cpuset.mems", cpu.mems)):
            if value is not None:
                write_file(self.require("cpuset"), name, value)

    def can_freeze(self) -> bool:
        return self.directory("freezer") is not None

    def freeze(self, timeout: float = 5.0) -> None:
        directory = self.require("freezer")
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            write_file(directory, "freezer.state", "FROZEN")
            if read_file(directory, "freezer.state").strip() == "FROZEN":
                return
            if time.monotonic() >= deadline:
                self.thaw()
                err = OSError(errno.ETIMEDOUT, "the freezer state stays FREEZING")
                raise SystemCallError(f"cgroup {directory}: freezing", err)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def thaw(self, *, below: bool = False) -> None:
        directory = self.require("freezer")
        write_file(directory, "freezer.state", "THAWED")
        for frozen in self._self_frozen_below(directory) if below else ():
            with contextlib.suppress(FileNotFoundError):  # (removed meanwhile)
                write_file(frozen, "freezer.state", "THAWED")

    def is_frozen(self, *, below: bool = False) -> bool:
        directory = self.directory("freezer")
        if directory is None:
            return False
        if (read_optional(directory, "freezer.state") or "").strip() == "FROZEN":
            return True
        return below and any(True for _ in self._self_frozen_below(directory))

    @staticmethod
    def _self_frozen_below(directory: Path) -> Iterator[Path]:
        """The cgroups beneath ``directory`` frozen themselves (not by an ancestor)."""
        for dirpath, _, _ in os.walk(directory):
            path = Path(dirpath)
            if path != directory and read_optional(path, "freezer.self_freezing") == "1\n":
                yield path

    def stats(self) -> CgroupStats:
        stats = CgroupStats()
        cpuacct = self.directory("cpuacct")
        if cpuacct is not None:
            ticks = read_keyed(cpuacct, "cpuacct.stat")
            ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            stats = replace(
                stats,
                cpu_usage_ns=read_int(cpuacct, "cpuacct.usage") or 0,
                cpu_user_ns=ticks.get("user", 0) * ns_per_tick,
                cpu_system_ns=ticks.get("system", 0) * ns_per_tick,
            )
        memory = self.directory("memory")
        if memory is not None:
            stats = replace(
                stats,
                memory_usage=read_int(memory, "memory.usage_in_bytes") or 0,
                memory_limit=read_int(memory, "memory.limit_in_bytes"),
                memory_max_usage=read_int(memory, "memory.max_usage_in_bytes"),
                memory_failcnt=read_int(memory, "memory.failcnt") or 0,
                oom_kills=_oom_kills(memory),
            )
        pids = self.directory("pids")
        if pids is not None:
            stats = replace(
                stats,
                pids_current=read_int(pids, "pids.current") or 0,
                pids_limit=read_int(pids, "pids.max"),
            )
        return stats


def _oom_kills(memory: Path) -> int:
    """The OOM killer's kills in ``memory`` and in the cgroups its processes made beneath
    it: v1 counts each cgroup's own in its ``memory.oom_control`` (v2's ``memory.events``
    counts those beneath too). One of those removed as it is read counts none."""
    kills = read_keyed(memory, "memory.oom_control").get("oom_kill", 0)
    for level, _, _ in itertools.islice(os.walk(memory), 1, None):
        try:
            kills += read_keyed(Path(level), "memory.oom_control").get("oom_kill", 0)
        except SystemCallError as err:
            if err.errno not in (errno.ENODEV, errno.ENOENT):
                raise
    return kills


def _copy_cpuset(level: Path) -> None:
    """Give a new cpuset cgroup its parent's CPUs and memory nodes (else tasks get ENOSPC)."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not (read_optional(level, name) or "").strip():
            inherited = (read_optional(level.parent, name) or "").strip()
            if inherited:
                write_file(level, name, inherited)
