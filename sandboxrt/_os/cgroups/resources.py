"""The OCI ``linux.resources`` subset that sandboxrt enforces with cgroups.

:meth:`Resources.from_oci` parses the ``linux.resources`` object of a
config.json; ``None`` in a field means "leave the current value alone", ``-1``
means unlimited. Other keys (``hugepageLimits``, ...) are not read here:
the plan refuses a spec that asks for them (``_core.plan``). Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from sandboxrt.errors import SpecError

__all__ = [
    "THROTTLES",
    "BlockIOResources",
    "CpuResources",
    "DeviceRule",
    "MemoryResources",
    "Resources",
    "ResourcesLike",
    "as_resources",
    "shares_to_weight",
    "swap_to_v2",
]

_WHERE = "linux.resources"


@dataclass(frozen=True, slots=True)
class MemoryResources:
    """Memory limits in bytes; ``swap`` is memory plus swap, as in OCI and cgroup v1."""

    limit: int | None = None
    reservation: int | None = None
    swap: int | None = None
    #: 0-100 (cgroup v1 only); None: the kernel's.
    swappiness: int | None = None
    #: Processes past the limit wait rather than die (cgroup v1 only).
    disable_oom_killer: bool = False


@dataclass(frozen=True, slots=True)
class CpuResources:
    """CPU shares, CFS quota and period (microseconds), and cpuset lists."""

    shares: int | None = None
    quota: int | None = None
    period: int | None = None
    cpus: str | None = None
    mems: str | None = None
    #: CFS burst (microseconds): quota a period may borrow from earlier idle ones.
    burst: int | None = None
    #: 1: the cgroup's tasks run as ``SCHED_IDLE`` among its siblings (0: they do not).
    idle: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceRule:
    """One device cgroup rule; ``None`` major or minor is the wildcard ``*``."""

    allow: bool
    type: str = "a"
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"

    def v1_line(self) -> str:
        """The rule as written to ``devices.allow`` / ``devices.deny``."""
        if self.type == "a":
            return "a"
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.type} {major}:{minor} {self.access}"


#: The ``blockIO`` throttle lists and the rate each limits (``read_bps``...).
THROTTLES = {
    "throttleReadBpsDevice": "read_bps",
    "throttleWriteBpsDevice": "write_bps",
    "throttleReadIOPSDevice": "read_iops",
    "throttleWriteIOPSDevice": "write_iops",
}


@dataclass(frozen=True, slots=True)
class BlockIOResources:
    """``blockIO``: weights (10-1000) and per-device weights and throttles."""

    weight: int | None = None
    leaf_weight: int | None = None
    #: ``(major, minor, weight, leaf_weight)`` per device.
    weight_devices: tuple[tuple[int, int, int | None, int | None], ...] = ()
    #: ``(rate kind, major, minor, rate)``: the kind as :data:`THROTTLES` names it.
    throttles: tuple[tuple[str, int, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Resources:
    """The resources of one cgroup."""

    memory: MemoryResources = MemoryResources()
    cpu: CpuResources = CpuResources()
    pids_limit: int | None = None
    devices: tuple[DeviceRule, ...] = ()
    block_io: BlockIOResources = BlockIOResources()
    #: ``unified``: cgroup v2 files and what to write to them, after the rest.
    unified: tuple[tuple[str, str], ...] = ()
    #: ``hugepageLimits``: ``(page size, bytes)``, the size as the kernel's files name it
    #: (``2MB``, ``1GB``).
    hugepages: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_oci(cls, data: Mapping[str, Any] | None) -> Resources:
        """Parse an OCI ``linux.resources`` object; :class:`SpecError` lists every problem."""
        if data is None:
            return cls()
        parser = _Parser()
        if not isinstance(data, Mapping):
            raise SpecError([(_WHERE, "must be an object")])
        mem = parser.section(data, "memory")
        cpu = parser.section(data, "cpu")
        pids = parser.section(data, "pids")
        memory = MemoryResources(
            limit=parser.limit(mem, "memory", "limit"),
            reservation=parser.limit(mem, "memory", "reservation"),
            swap=parser.limit(mem, "memory", "swap"),
            swappiness=_swappiness(parser, mem),
            disable_oom_killer=parser.flag(mem, "memory", "disableOOMKiller"),
        )
        cpu_res = CpuResources(
            shares=parser.number(cpu, "cpu", "shares", minimum=0),
            quota=parser.limit(cpu, "cpu", "quota"),
            period=parser.number(cpu, "cpu", "period", minimum=0),
            cpus=parser.text(cpu, "cpu", "cpus"),
            mems=parser.text(cpu, "cpu", "mems"),
            burst=parser.number(cpu, "cpu", "burst", minimum=0, zero=True),
            idle=parser.idle(cpu),
        )
        pids_limit = parser.number(pids, "pids", "limit", minimum=None)
        devices = parser.devices(data.get("devices"))
        block_io = parser.block_io(parser.section(data, "blockIO"))
        unified = parser.unified(data.get("unified"))
        hugepages = parser.hugepages(data.get("hugepageLimits"))
        if parser.problems:
            raise SpecError(parser.problems)
        swap, limit = memory.swap or 0, memory.limit or 0
        if swap > 0 and limit > 0 and swap < limit:
            parser.problems.append(
                (f"{_WHERE}.memory.swap", "memory+swap limit must be >= the memory limit")
            )
        if swap > 0 and limit in (0, -1):  # (v1 refuses it with a bare EINVAL)
            parser.problems.append((f"{_WHERE}.memory.swap", "a swap limit needs a memory limit"))
        quota = cpu_res.quota if cpu_res.quota is not None and cpu_res.quota > 0 else None
        if cpu_res.burst is not None and quota is not None and cpu_res.burst > quota:
            parser.problems.append((f"{_WHERE}.cpu.burst", "must not exceed cpu.quota"))
        shares = cpu_res.shares
        if shares and not _MIN_SHARES <= shares <= _MAX_SHARES:  # (else clamped unsaid)
            parser.problems.append(
                (
                    f"{_WHERE}.cpu.shares",
                    f"must be {_MIN_SHARES} to {_MAX_SHARES}, as runc takes it",
                )
            )
        if parser.problems:
            raise SpecError(parser.problems)
        return cls(memory, cpu_res, pids_limit, devices, block_io, unified, hugepages)


#: A huge page size as the kernel's hugetlb files name it.
_PAGE_SIZE = re.compile(r"[1-9][0-9]*[KMG]B")

#: ``unified`` keys whose effect reaches past the container's cgroup (a partition root
#: takes its CPUs from every other cgroup).
_HOST_WIDE_KEYS = frozenset({"cpuset.cpus.partition", "cpuset.cpus.exclusive"})

#: A ``unified`` key: ``<controller>.<file>``, one name (no ``/``).
_UNIFIED_KEY = re.compile(r"[a-z0-9_]+\.[A-Za-z0-9_.]+")

#: The range of v1 ``cpu.shares`` (the kernel clamps a value outside it silently).
_MIN_SHARES, _MAX_SHARES = 2, 262144

ResourcesLike: TypeAlias = Resources | Mapping[str, Any]


def as_resources(value: ResourcesLike | None) -> Resources:
    """``value`` itself, or parsed from its OCI dict form."""
    if isinstance(value, Resources):
        return value
    return Resources.from_oci(value)


def shares_to_weight(shares: int) -> int:
    """Convert cgroup v1 ``cpu.shares`` [2, 262144] to v2 ``cpu.weight`` [1, 10000], as runc."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def swap_to_v2(swap: int | None, limit: int | None) -> int | None:
    """Convert OCI memory+swap to v2 ``memory.swap.max`` (swap alone), as runc.

    ``None`` leaves swap alone, ``-1`` is unlimited. Raises :class:`SpecError`
    for a swap limit without a memory limit.
    """
    limit = limit or 0
    swap = swap or 0
    if limit == -1 and swap == 0:
        return -1  # unlimited memory without a swap value: swap unlimited too, as v1 does
    if swap in (0, -1):
        return swap or None
    if limit in (0, -1):
        raise SpecError([(f"{_WHERE}.memory.swap", "a swap limit needs a memory limit")])
    return swap - limit


class _Parser:
    """Collects ``(json_path, message)`` problems while reading fields."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def section(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.append((f"{_WHERE}.{key}", "must be an object"))
            return {}
        return value

    def number(
        self,
        data: Mapping[str, Any],
        section: str,
        key: str,
        *,
        minimum: int | None,
        zero: bool = False,
    ) -> int | None:
        """An integer field; 0 or absent means unset (as runc treats them), but for one
        whose 0 is a value of its own (``zero``: a CPU burst of none)."""
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append((f"{_WHERE}.{section}.{key}", "must be an integer"))
            return None
        if minimum is not None and value < minimum:
            self.problems.append((f"{_WHERE}.{section}.{key}", f"must be >= {minimum}"))
            return None
        return value if zero else value or None

    def idle(self, cpu: Mapping[str, Any]) -> int | None:
        """``cpu.idle``: 0 or 1, written as given (as runc: 0 makes an existing cgroup's
        tasks plain again)."""
        value = cpu.get("idle")
        if value is None:
            return None
        if isinstance(value, bool) or value not in (0, 1):
            self.problems.append((f"{_WHERE}.cpu.idle", "must be 0 or 1"))
            return None
        return int(value)

    def limit(self, data: Mapping[str, Any], section: str, key: str) -> int | None:
        """An integer field where -1 means unlimited."""
        return self.number(data, section, key, minimum=-1)

    def flag(self, data: Mapping[str, Any], section: str, key: str) -> bool:
        """A boolean field; absent is false."""
        value = data.get(key, False)
        if not isinstance(value, bool):
            self.problems.append((f"{_WHERE}.{section}.{key}", "must be a boolean"))
            return False
        return value

    def block_io(self, io: Mapping[str, Any]) -> BlockIOResources:
        """``blockIO``: weights of 10-1000 (0: none, as Docker writes it)."""

        def weight(data: Mapping[str, Any], key: str, where: str) -> int | None:
            value = self.number(data, where, key, minimum=0)
            if value is not None and not 10 <= value <= 1000:
                self.problems.append((f"{_WHERE}.{where}.{key}", "must be 10 to 1000"))
            return value

        devices = []
        for i, entry in enumerate(self.entries(io.get("weightDevice"), "blockIO.weightDevice")):
            where = f"blockIO.weightDevice[{i}]"
            major, minor = self.device_number(entry, where)
            pair = (weight(entry, "weight", where), weight(entry, "leafWeight", where))
            if pair != (None, None):  # (0: no weight, as Docker writes it)
                devices.append((major, minor, *pair))
        throttles = []
        for key, kind in THROTTLES.items():
            for i, entry in enumerate(self.entries(io.get(key), f"blockIO.{key}")):
                where = f"blockIO.{key}[{i}]"
                major, minor = self.device_number(entry, where)
                rate = self.number(entry, where, "rate", minimum=0)
                if rate is not None and rate >= 2**64:  # (the kernel would drop the rule)
                    self.problems.append((f"{_WHERE}.{where}.rate", "must be below 2**64"))
                throttles.append((kind, major, minor, rate or 0))
        return BlockIOResources(
            weight=weight(io, "weight", "blockIO"),
            leaf_weight=weight(io, "leafWeight", "blockIO"),
            weight_devices=tuple(devices),
            throttles=tuple(throttles),
        )

    def unified(self, value: Any) -> tuple[tuple[str, str], ...]:
        """``unified``: a controller's file of the container's own cgroup for each key
        (``memory.high``), never a ``cgroup.*`` file (membership, delegation: runtime's)."""
        if value is None:
            return ()
        if not isinstance(value, Mapping):
            self.problems.append((f"{_WHERE}.unified", "must be an object"))
            return ()
        found = []
        for key, text in value.items():
            where = f"{_WHERE}.unified.{key}"
            if not isinstance(text, str):
                self.problems.append((where, "must be a string"))
            elif not _UNIFIED_KEY.fullmatch(key) or key.startswith("cgroup."):
                self.problems.append((where, "must name a controller's file, as memory.high"))
            elif key in _HOST_WIDE_KEYS:
                self.problems.append((where, "changes the host's CPU partitions: refused"))
            else:
                found.append((key, text))
        return tuple(found)

    def hugepages(self, value: Any) -> tuple[tuple[str, int], ...]:
        """``hugepageLimits``: a page size as ``2MB`` and a limit in bytes, each."""
        found = []
        for i, entry in enumerate(self.entries(value, "hugepageLimits")):
            where = f"{_WHERE}.hugepageLimits[{i}]"
            size, limit = entry.get("pageSize"), entry.get("limit")
            if not isinstance(size, str) or not _PAGE_SIZE.fullmatch(size):
                self.problems.append((f"{where}.pageSize", 'must be a size as "2MB" or "1GB"'))
            elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                self.problems.append((f"{where}.limit", "must be an integer >= 0"))
            else:
                found.append((size, limit))
        return tuple(found)

    def entries(self, value: Any, where: str) -> list[Mapping[str, Any]]:
        """The objects of the list ``value``, the field at ``where`` (absent: none)."""
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
            self.problems.append((f"{_WHERE}.{where}", "must be an array of objects"))
            return []
        return value

    def device_number(self, entry: Mapping[str, Any], where: str) -> tuple[int, int]:
        numbers = []
        for key in ("major", "minor"):
            value = entry.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                self.problems.append((f"{_WHERE}.{where}.{key}", "must be an integer >= 0"))
                value = 0
            numbers.append(value)
        return numbers[0], numbers[1]

    def text(self, data: Mapping[str, Any], section: str, key: str) -> str | None:
        value = data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.problems.append((f"{_WHERE}.{section}.{key}", "must be a string"))
            return None
        return value

    def devices(self, value: Any) -> tuple[DeviceRule, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problems.append((f"{_WHERE}.devices", "must be an array"))
            return ()
        rules = []
        for i, item in enumerate(value):
            where = f"{_WHERE}.devices[{i}]"
            if not isinstance(item, Mapping):
                self.problems.append((where, "must be an object"))
                continue
            allow = item.get("allow")
            kind = item.get("type", "a") or "a"
            # No access: a deny denies all of it; an allow is refused (as runc), never
            # taken for all of it (the spec gives no default).
            access = item.get("access") or ("" if allow else "rwm")
            numbers = [item.get("major"), item.get("minor")]
            ok = True
            if not isinstance(allow, bool):
                self.problems.append((f"{where}.allow", "must be true or false"))
                ok = False
            elif allow and not access:
                self.problems.append((f"{where}.access", "an allow rule must say what it allows"))
                ok = False
            if kind not in ("a", "b", "c"):
                self.problems.append((f"{where}.type", "must be 'a', 'b' or 'c'"))
                ok = False
            if not isinstance(access, str) or not set(access) <= set("rwm"):
                self.problems.append((f"{where}.access", "must be letters of 'rwm'"))
                ok = False
            for name, number in zip(("major", "minor"), numbers, strict=True):
                if number is not None and (
                    isinstance(number, bool) or not isinstance(number, int) or number < -1
                ):
                    self.problems.append((f"{where}.{name}", "must be an integer >= 0"))
                    ok = False
            if ok:
                major, minor = (None if n is None or n == -1 else n for n in numbers)
                rules.append(DeviceRule(bool(allow), kind, major, minor, access))
        return tuple(rules)


def _swappiness(parser: _Parser, memory: Mapping[str, Any]) -> int | None:
    """``memory.swappiness`` (0 is a value here: no swapping); 2**64-1 (-1 as a uint64,
    what older Docker wrote) is unset, as runc has it."""
    value = memory.get("swappiness")
    if value is None or value == 2**64 - 1:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        parser.problems.append((f"{_WHERE}.memory.swappiness", "must be from 0 to 100"))
        return None
    return value
