"""The cgroup v2 driver: one directory in the unified hierarchy.

Resource values are converted from their OCI (v1) meaning as runc does:
``cpu.shares`` → ``cpu.weight``, memory+swap → ``memory.swap.max``.
Device rules become a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program
(:mod:`sandboxrt._core.devicefilter`), loaded with ``bpf(2)`` and attached to
the cgroup (``BPF_F_ALLOW_MULTI``); applying rules again replaces it. The
program goes with the cgroup when it is removed, and is detached from a
pre-existing cgroup on :meth:`CgroupV2.destroy`. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from sandboxrt._core import abi, devicefilter
from sandboxrt._os import syscalls
from sandboxrt.errors import MissingFeatureError, SystemCallError

from .common import (
    Cgroup,
    CgroupStats,
    block_device_errors,
    burst_before_quota,
    make_levels,
    read_int,
    read_keyed,
    read_optional,
    write_file,
    write_lines,
    write_newer_file,
)
from .layout import CgroupLayout, Hierarchy
from .resources import (
    BlockIOResources,
    DeviceRule,
    MemoryResources,
    Resources,
    ResourcesLike,
    as_resources,
    shares_to_weight,
    swap_to_v2,
)

__all__ = ["CgroupV2", "attach_device_program", "detach_device_programs"]

#: Controllers enabled (when available) in ``cgroup.subtree_control`` of every parent level.
ENABLED = ("cpu", "cpuset", "memory", "pids")


def _enable(parent: Path, controllers: Sequence[str]) -> None:
    """Enable ``controllers`` for the children of ``parent`` where they are not yet. A
    cgroup that holds processes cannot give its children controllers (``EBUSY``): said."""
    text = read_optional(parent, "cgroup.subtree_control") or ""
    enabled = {name.lstrip("+") for name in text.split()}
    missing = [c for c in controllers if c not in enabled]
    if not missing:
        return
    try:
        write_file(parent, "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
    except SystemCallError as err:
        if err.errno != errno.EBUSY:
            raise
        what = (
            f"enabling {', '.join(missing)} for the children of {parent}, which holds"
            " processes (cgroup v2 gives controllers only to the children of a cgroup"
            " without any: choose a cgroupsPath outside it)"
        )
        raise SystemCallError(what, OSError(errno.EBUSY, os.strerror(errno.EBUSY))) from err


#: The ``io.max`` key of each throttle (:data:`THROTTLES`).
_IO_MAX_KEYS = {
    "read_bps": "rbps",
    "write_bps": "wbps",
    "read_iops": "riops",
    "write_iops": "wiops",
}


def _io_weight(weight: int) -> int:
    """A v1 blkio weight (10-1000) as an io.weight (1-10000), as runc converts it."""
    return 1 + (weight - 10) * 9999 // 990


def _limit(value: int) -> str:
    return "max" if value < 0 else str(value)


class CgroupV2(Cgroup):
    """A cgroup in the unified (cgroup2) hierarchy."""

    driver = "v2"

    @classmethod
    def _hierarchies(cls, layout: CgroupLayout, resources: Resources) -> list[Hierarchy]:
        unified = layout.unified
        if unified is None:
            raise MissingFeatureError("cgroup v2", "no cgroup2 filesystem is mounted")
        return [unified]

    def _make(self, hierarchy: Hierarchy, rel: PurePosixPath) -> tuple[PurePosixPath, ...]:
        wanted = [c for c in ENABLED if c in hierarchy.controllers]
        return make_levels(hierarchy.mountpoint, rel, before=lambda parent: _enable(parent, wanted))

    def _enable_down(self, controller: str) -> None:
        """Enable ``controller`` for the cgroup: in each level's parent, from the root."""
        placement = self.placements[0]
        if controller not in placement.controllers:
            raise MissingFeatureError(f"the {controller} controller of cgroup v2")
        directory = placement.mountpoint
        for part in placement.rel.parts:
            _enable(directory, [controller])
            directory /= part

    @property
    def _dir(self) -> Path:
        return self.placements[0].directory

    def apply(self, resources: ResourcesLike) -> None:
        res = as_resources(resources)
        mem = res.memory
        if mem != MemoryResources():
            for name, asked in (
                ("swappiness", mem.swappiness is not None),
                ("disableOOMKiller", mem.disable_oom_killer),
            ):
                if asked:
                    raise MissingFeatureError(
                        f"memory.{name} on cgroup v2", "cgroup v2 has no such setting"
                    )
            directory = self.require("memory")
            swap = swap_to_v2(mem.swap, mem.limit)
            if swap is not None and not (directory / "memory.swap.max").exists():
                if mem.swap is not None:
                    raise MissingFeatureError("memory.swap.max (swap accounting)")
                swap = None  # only implied by an unlimited memory limit
            if mem.reservation is not None:
                write_file(directory, "memory.low", _limit(mem.reservation))
            if mem.limit is not None:
                write_file(directory, "memory.max", _limit(mem.limit))
            if swap is not None:
                write_file(directory, "memory.swap.max", _limit(swap))
        cpu = res.cpu
        if cpu.shares is not None:
            write_file(self.require("cpu"), "cpu.weight", shares_to_weight(cpu.shares))
        if cpu.quota is not None or cpu.period is not None:
            value = str(cpu.quota) if cpu.quota is not None and cpu.quota > 0 else "max"
            if cpu.period is not None:
                value += f" {cpu.period}"
            burst_before_quota(self.require("cpu"), "cpu.max.burst", cpu)
            write_file(self.require("cpu"), "cpu.max", value)
        self._write_cpu_settings("cpu.max.burst", cpu)
        for name, text in (("cpuset.cpus", cpu.cpus), ("cpuset.mems", cpu.mems)):
            if text is not None:
                write_file(self.require("cpuset"), name, text)
        if res.block_io != BlockIOResources():
            self._apply_block_io(res.block_io)
        if res.hugepages:
            self._enable_down("hugetlb")
        for size, limit in res.hugepages:
            name = f"hugetlb.{size}.max"
            write_newer_file(self._dir, name, limit, field="linux.resources.hugepageLimits")
            if (self._dir / f"hugetlb.{size}.rsvd.max").exists():  # (as runc)
                write_file(self._dir, f"hugetlb.{size}.rsvd.max", limit)
        if res.pids_limit is not None:
            write_file(self.require("pids"), "pids.max", _limit(res.pids_limit))
        if res.devices:
            attach_device_program(self._dir, res.devices)
        self._write_unified(res.unified)  # (last: it wins over the fields above, as runc)

    def _apply_block_io(self, io: BlockIOResources) -> None:
        """``blockIO`` as ``io.max`` and, as runc writes them, BFQ's ``io.bfq.weight``
        where the kernel has it, else ``io.weight`` (converted); the io controller enabled
        down to the cgroup first. Leaf weights have no v2 equivalent."""
        if io.leaf_weight is not None or any(leaf is not None for *_, leaf in io.weight_devices):
            raise MissingFeatureError("blockIO leafWeight on cgroup v2", "v2 has no leaf weight")
        self._enable_down("io")
        bfq = (self._dir / "io.bfq.weight").exists()
        weight_file = "io.bfq.weight" if bfq else "io.weight"

        def weight_of(value: int) -> int:
            return value if bfq else _io_weight(value)

        with block_device_errors():
            if io.weight is not None:
                write_newer_file(self._dir, weight_file, f"default {weight_of(io.weight)}")
            for major, minor, weight, _ in io.weight_devices:
                if weight is not None:
                    line = f"{major}:{minor} {weight_of(weight)}"
                    write_newer_file(self._dir, weight_file, line)
            lines: list[tuple[str, str | int]] = [
                ("io.max", f"{major}:{minor} {_IO_MAX_KEYS[kind]}={rate or 'max'}")
                for kind, major, minor, rate in io.throttles
            ]
            write_lines(self._dir, lines)

    def _write_unified(self, unified: Sequence[tuple[str, str]]) -> None:
        """``unified``: each file of the container's cgroup written line by line (a rule
        per write), its controller enabled down to the cgroup first where it has one."""
        for name, text in unified:
            controller = name.partition(".")[0]
            if controller in self.placements[0].controllers:
                self._enable_down(controller)
            if not (self._dir / name).exists():
                raise MissingFeatureError(
                    f"linux.resources.unified.{name}", f"{self._dir} has no {name}"
                )
            write_lines(self._dir, [(name, line) for line in text.splitlines() or [""]])

    def destroy(
        self, timeout: float = 5.0, *, keep_parents: bool = False, owner: str | None = None
    ) -> None:
        """As :meth:`Cgroup.destroy`; a cgroup that stays (it existed before) loses
        its device program, which went with the container."""
        for placement in self.placements:
            if placement.rel not in placement.created and placement.directory.is_dir():
                with contextlib.suppress(SystemCallError):
                    detach_device_programs(placement.directory)
        super().destroy(timeout, keep_parents=keep_parents, owner=owner)

    def can_freeze(self) -> bool:
        return (self._dir / "cgroup.freeze").exists()

    def _freezer(self) -> Path:
        if not self.can_freeze():
            raise MissingFeatureError("cgroup v2 freezer (cgroup.freeze)")
        return self._dir

    def freeze(self, timeout: float = 5.0) -> None:
        directory = self._freezer()
        write_file(directory, "cgroup.freeze", "1")
        deadline = time.monotonic() + timeout
        delay = 0.001
        while read_keyed(directory, "cgroup.events").get("frozen") != 1:
            if time.monotonic() >= deadline:
                self.thaw()
                err = OSError(errno.ETIMEDOUT, "cgroup.events does not report frozen")
                raise SystemCallError(f"cgroup {directory}: freezing", err)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def thaw(self, *, below: bool = False) -> None:
        # (``below`` needs nothing: a frozen process dies of SIGKILL on v2.)
        write_file(self._freezer(), "cgroup.freeze", "0")

    def is_frozen(self, *, below: bool = False) -> bool:
        return read_keyed(self._dir, "cgroup.events").get("frozen") == 1

    def can_kill_at_once(self) -> bool:
        return (self._dir / "cgroup.kill").exists()

    def _kill_at_once(self) -> bool:
        if not self.can_kill_at_once():
            return False
        write_file(self._dir, "cgroup.kill", "1")
        return True

    def stats(self) -> CgroupStats:
        directory = self._dir
        cpu = read_keyed(directory, "cpu.stat")
        events = read_keyed(directory, "memory.events")
        return CgroupStats(
            cpu_usage_ns=cpu.get("usage_usec", 0) * 1000,
            cpu_user_ns=cpu.get("user_usec", 0) * 1000,
            cpu_system_ns=cpu.get("system_usec", 0) * 1000,
            memory_usage=read_int(directory, "memory.current") or 0,
            memory_limit=read_int(directory, "memory.max"),
            memory_max_usage=read_int(directory, "memory.peak"),
            memory_failcnt=events.get("max", 0),
            pids_current=read_int(directory, "pids.current") or 0,
            pids_limit=read_int(directory, "pids.max"),
            oom_kills=events.get("oom_kill", 0),
        )


def _open_cgroup(directory: Path) -> int:
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def attach_device_program(directory: Path, rules: Iterable[DeviceRule]) -> None:
    """Enforce device ``rules`` on the cgroup ``directory`` with an eBPF program.

    The new program is attached before the ones attached earlier are
    detached, so there is no moment without a policy. Raises
    :class:`SystemCallError` when ``bpf(2)`` refuses (``EPERM`` without
    ``CAP_BPF``/``CAP_SYS_ADMIN``; ``EBADF`` when ``directory`` is no cgroup2
    directory).
    """
    program = devicefilter.compile_rules(rules)
    try:
        cgroup_fd = _open_cgroup(directory)
        try:
            old = syscalls.bpf_prog_query(cgroup_fd, abi.BPF_CGROUP_DEVICE)
            prog_fd = syscalls.bpf_prog_load(
                abi.BPF_PROG_TYPE_CGROUP_DEVICE, program, devicefilter.LICENSE, "sandboxrt_dev"
            )
            try:
                syscalls.bpf_prog_attach(
                    cgroup_fd, prog_fd, abi.BPF_CGROUP_DEVICE, abi.BPF_F_ALLOW_MULTI
                )
            finally:
                os.close(prog_fd)
            _detach(cgroup_fd, old)
        finally:
            os.close(cgroup_fd)
    except OSError as err:
        raise SystemCallError(f"cgroup {directory}: attaching its device program", err) from err


def detach_device_programs(directory: Path) -> None:
    """Detach every device program attached to the cgroup ``directory`` itself."""
    try:
        cgroup_fd = _open_cgroup(directory)
        try:
            _detach(cgroup_fd, syscalls.bpf_prog_query(cgroup_fd, abi.BPF_CGROUP_DEVICE))
        finally:
            os.close(cgroup_fd)
    except OSError as err:
        raise SystemCallError(f"cgroup {directory}: detaching its device programs", err) from err


def _detach(cgroup_fd: int, prog_ids: Iterable[int]) -> None:
    for prog_id in prog_ids:
        try:
            prog_fd = syscalls.bpf_prog_get_fd_by_id(prog_id)
        except FileNotFoundError:
            continue  # detached and freed meanwhile
        try:
            with contextlib.suppress(FileNotFoundError):
                syscalls.bpf_prog_detach(cgroup_fd, prog_fd, abi.BPF_CGROUP_DEVICE)
        finally:
            os.close(prog_fd)
