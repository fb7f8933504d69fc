"""Every container in a cgroup of its own: limits, stats, kill-all through it, removal.

Real containers on the real kernel. The cgroups these tests make are named
after ``sandboxrt`` or ``sbrt-test-*`` and are all removed again; processes are
only ever those the tests started.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    BundleFactory,
    edit_config,
    in_python,
    needs_busybox,
    needs_root,
    run_output,
    store_cgroups,
    wait_until,
    words_then_killed,
)
from test_launchers import _ahead_of, _init_of
from test_userns import with_userns

from sandboxrt import (
    Container,
    ContainerNotFoundError,
    FileStore,
    InitError,
    InvalidStateError,
    MemoryStore,
    MissingFeatureError,
    SandboxrtError,
    SpecError,
    Stats,
    Status,
    SubprocessLauncher,
    SystemCallError,
)
from sandboxrt import _cgroup as library_cgroup
from sandboxrt._os import cgroups, procfs
from sandboxrt._os.cgroup_marks import OWNER_XATTR
from sandboxrt._os.cgroups import CgroupLayout, DeviceRule, Hierarchy
from sandboxrt._os.cgroups import common as cgroups_common
from sandboxrt._os.cgroups.layout import V1_CONTROLLERS, parse_proc_cgroup
from sandboxrt._proc.launcher import ForkServerLauncher

MiB = 1 << 20


def _layout() -> CgroupLayout | None:
    try:
        return cgroups.detect()
    except OSError:
        return None


LAYOUT = _layout()


#: A program that takes memory until the OOM killer ends it.
HOG = "chunks = []\nwhile True: chunks.append(bytes(4 << 20))\n"

without_swap = pytest.mark.skipif(
    len(Path("/proc/swaps").read_text().splitlines()) > 1,
    reason="with swap, the memory limit alone would not stop the hog",
)


def _has_controllers(layout: CgroupLayout | None, wanted: set[str]) -> bool:
    if layout is None or layout.driver is None:
        return False
    if layout.driver == "v2":
        return layout.unified is not None and wanted <= layout.unified.controllers
    return wanted <= set(layout.v1)


needs_cgroups = pytest.mark.skipif(
    not _has_controllers(LAYOUT, {"memory", "pids"}),
    reason="needs the memory and pids cgroup controllers",
)


def real(test: Callable[..., None]) -> Callable[..., None]:
    """Marks a test that runs real containers in real cgroups."""
    for mark in (needs_root, needs_busybox, needs_cgroups):
        test = mark(test)
    return test


# -- helpers ---------------------------------------------------------------------------------


def resources(**values: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        document["linux"].setdefault("resources", {}).update(values)

    return change


def cgroups_path(path: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        document["linux"]["cgroupsPath"] = path

    return change


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition never became true"
        time.sleep(0.01)


def proc_cgroups(pid: int) -> dict[str, str]:
    """Controller → cgroup path of ``pid``, from ``/proc/PID/cgroup`` (``""``: v2)."""
    with open(f"/proc/{pid}/cgroup") as f:
        return parse_proc_cgroup(f.read())


def family(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = procfs.read_stat(int(name))
            if info is not None and info.state not in "ZX":
                children.setdefault(info.ppid, []).append(int(name))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cgroup_of(store: FileStore, cid: str) -> cgroups.Cgroup:
    record = store.load(cid).cgroup
    assert record is not None
    return cgroups.load(record, container_id=cid)


def created_dirs(cgroup: cgroups.Cgroup) -> list[Path]:
    return [p.mountpoint / level for p in cgroup.placements for level in p.created]


def expected_paths(cgroup: cgroups.Cgroup) -> dict[str, str]:
    """Controller → the path ``/proc/PID/cgroup`` shows for a member of ``cgroup``."""
    assert LAYOUT is not None
    roots = {h.mountpoint: h for h in LAYOUT.hierarchies}
    found = {}
    for placement in cgroup.placements:
        hierarchy: Hierarchy = roots[placement.mountpoint]
        keys = [""] if hierarchy.version == 2 else sorted(placement.controllers)
        for key in keys:
            found[key] = os.path.normpath(os.path.join(hierarchy.root, str(placement.rel)))
    return found


def read(directory: Path, name: str) -> str:
    return (directory / name).read_text().strip()


def our_cgroups(marker: str) -> list[Path]:
    """Cgroup directories matching ``*marker*`` (with a store tag in it: other test sessions
    may run the same test at the same time)."""
    return [p for p in Path("/sys/fs/cgroup").glob(f"**/*{marker}*") if p.is_dir()]


@pytest.fixture
def unique() -> str:
    return secrets.token_hex(4)


@pytest.fixture
def own_cgroup(unique: str) -> Iterator[str]:
    """A cgroup name of the test's own; the test fails if anything is left under it."""
    name = f"sbrt-test-{unique}"
    yield name
    left = our_cgroups(name)
    for path in sorted(left, key=lambda p: len(p.parts), reverse=True):
        _empty(path)  # only processes of this test's containers can be in there
        path.rmdir()
    assert left == [], left


def _empty(path: Path) -> None:
    end = time.monotonic() + 10
    while pids := (path / "cgroup.procs").read_text().split():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        assert time.monotonic() < end, f"{path} does not empty"
        time.sleep(0.01)


# -- the cgroup of a container ---------------------------------------------------------------


@pytest.mark.parametrize("phase", ["created", "running"])
@real
def test_processes_live_in_the_containers_cgroup_with_its_limits(
    store: FileStore, bundle: BundleFactory, phase: str
) -> None:
    path = bundle(["sh", "-c", "sleep 1000 & sleep 1000"])
    edit_config(path, resources(memory={"limit": 64 * MiB}, pids={"limit": 50}))
    cid = f"cg-{phase}"
    container = Container.create(cid, path, store=store)
    cgroup = cgroup_of(store, cid)
    made = created_dirs(cgroup)
    try:
        assert cgroup.path == f"/sandboxrt/{library_cgroup.scope_for(store.runtime_dir)}/{cid}"
        assert made and all(d.is_dir() for d in made)
        supervisor = container.state().pid
        assert supervisor is not None
        if phase == "running":
            container.start()
            wait_for(lambda: len(family(supervisor)) >= 3)  # supervisor, sh or sleep, sleep
        members = family(supervisor)[1:]  # the supervisor stays outside: it serves a frozen one
        assert len(members) >= (2 if phase == "running" else 1)  # the init waits in created
        want = expected_paths(cgroup)
        for pid in members:
            seen = proc_cgroups(pid)
            assert {k: seen.get(k) for k in want} == want, (pid, seen)
        assert set(members) <= set(cgroup.pids())
        assert supervisor not in cgroup.pids()
        assert read(cgroup.require("memory"), _memory_limit_file(cgroup)) == str(64 * MiB)
        assert read(cgroup.require("pids"), "pids.max") == "50"
        if cgroup.driver == "v1":  # the spec denies every device but runc's defaults
            devices = read(cgroup.require("devices"), "devices.list").splitlines()
            assert "c 1:3 rwm" in devices and "a *:* rwm" not in devices
    finally:
        container.destroy()
    assert not any(d.exists() for d in cgroup.directories)
    # /sandboxrt and the store's level stay while this process may make more containers,
    # and go at its exit (release_parents) with the last cgroup under them: one left
    # holds another's cgroups (another test session's, say).
    parents = [level for level in made if level not in cgroup.directories]
    assert parents and all(level.is_dir() for level in parents)
    cgroups.release_parents()
    for level in made:
        assert not level.exists() or any(p.is_dir() for p in level.iterdir()), level


@real
def test_the_levels_kept_for_later_containers_are_those_of_the_stores_used_last(
    bundle: BundleFactory, tmp_path: Path
) -> None:
    """A process that makes a FileStore per test kept each store's level (a directory and
    a memory cgroup in every hierarchy) until it exited: 600 of them after 100 stores."""
    path = bundle(["true"])
    stores = [FileStore(tmp_path / f"store{i}") for i in range(8)]
    cgroups.release_parents()
    tops = set(Path("/sys/fs/cgroup").glob("*/sandboxrt"))  # (another process's, if any)
    try:
        for i, store in enumerate(stores):
            assert Container.run(f"kept{i}", path, store=store) == 0
            assert store_cgroups(store)  # (kept: its next container needs it)
        kept = [store for store in stores if store_cgroups(store)]
        # The top level and the stores used last: ``_KEPT_LEVELS`` levels in all.
        assert kept == stores[-(cgroups_common._KEPT_LEVELS - 1) :]
    finally:
        cgroups.release_parents()
    assert not any(store_cgroups(store) for store in stores)
    # The top level, put off with every store's, was never dropped from what is released.
    assert set(Path("/sys/fs/cgroup").glob("*/sandboxrt")) <= tops


@real
def test_a_memory_stores_level_goes_with_its_last_container(bundle: BundleFactory) -> None:
    """Nothing will use a MemoryStore's level of the default path once its process ends
    (or the store is collected): it is not kept, as a FileStore's is, but removed with its
    last container, so a process running containers on one MemoryStore after another
    piles none up (nor leaves any when it ends without its exit handlers)."""
    path = bundle(["true"])
    for i in range(3):
        store = MemoryStore()
        container = Container.create(f"mem{i}", path, store=store)
        try:
            record = store.load(container.id).cgroup
            assert record is not None
            cgroup = cgroups.load(record, container_id=container.id)
            level = cgroup.path.rsplit("/", 2)[1]
            assert level.startswith(cgroups.TRANSIENT_SCOPE_PREFIX)
            made = created_dirs(cgroup)
        finally:
            container.destroy()
        levels = [p.mountpoint / p.rel.parent for p in cgroup.placements]
        assert levels and not any(d.exists() for d in levels), levels
        # The top level is shared by every store: kept for the next container.
        assert all(d.is_dir() for d in made if d.name == "sandboxrt")


@real
def test_a_spec_without_device_rules_reaches_no_host_device(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: every container's device cgroup denies all but the defaults. A spec with
    no ``linux.resources`` and ``CAP_MKNOD`` made a node of the host's ``/dev/net/tun``
    (10:200, which runc allows and sandboxrt does not) and opened it (its cgroup allowed
    every device). Opened, and nothing asked of it, the device does nothing."""
    probe = "mknod /t c 10 200 && dd if=/t of=/dev/null count=0 2>/dev/null && echo opened"
    probe += " || echo denied"
    path = bundle(["sh", "-c", probe])

    def change(document: dict[str, Any]) -> None:
        document["linux"].pop("resources", None)
        caps = document["process"].setdefault("capabilities", {})
        for kind in ("bounding", "effective", "permitted"):
            caps[kind] = sorted({*caps.get(kind, []), "CAP_MKNOD"})

    edit_config(path, change)
    assert run_output(store, path) == (0, "denied\n")


@real
def test_oom_killer_burst_and_idle(store: FileStore, bundle: BundleFactory) -> None:
    """As runc: ``memory.disableOOMKiller``, ``cpu.burst`` and ``cpu.idle`` reach the
    cgroup (they were refused as unapplied); on cgroup v2 the first is refused (there is
    no such setting)."""
    path = bundle(["sleep", "100"])
    limits = resources(
        memory={"limit": 64 * MiB, "disableOOMKiller": True},
        cpu={"quota": 50000, "period": 100000, "burst": 20000, "idle": 1},
    )
    edit_config(path, limits)
    if LAYOUT is not None and LAYOUT.driver == "v2":
        with pytest.raises(MissingFeatureError, match="disableOOMKiller"):
            Container.create("oomoff", path, store=store)
        return
    container = Container.create("oomoff", path, store=store)
    try:
        cgroup = cgroup_of(store, "oomoff")
        assert "oom_kill_disable 1" in read(cgroup.require("memory"), "memory.oom_control")
        assert read(cgroup.require("cpu"), "cpu.cfs_burst_us") == "20000"
        assert read(cgroup.require("cpu"), "cpu.idle") == "1"
    finally:
        container.destroy()


@real
def test_processes_and_stats_racing_a_destroy_are_told_so(
    store: FileStore, bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destroy removes the cgroup before the record: ``processes()`` and ``stats()``
    that read it in between got ``SystemCallError`` (ENODEV: a cgroup removed while it
    was read); now no processes, and the stats of a stopped container."""
    container = Container.create("gone", bundle(["sleep", "100"]), store=store)
    try:
        container.start()
        driver = type(cgroup_of(store, "gone"))

        def removed(self: cgroups.Cgroup) -> None:
            gone = OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            raise SystemCallError("reading cgroup.procs", gone)

        monkeypatch.setattr(driver, "pids", removed)
        monkeypatch.setattr(driver, "stats", removed)
        assert container.processes() == []
        with pytest.raises(InvalidStateError, match='stats of container "gone"'):
            container.stats()
        monkeypatch.undo()
    finally:
        container.destroy()
    with pytest.raises(ContainerNotFoundError):
        container.processes()


@real
@pytest.mark.skipif(
    LAYOUT is None or "blkio" not in LAYOUT.v1, reason="needs the v1 blkio controller"
)
def test_block_io_throttles_reach_the_blkio_cgroup(store: FileStore, bundle: BundleFactory) -> None:
    """As runc: ``blockIO`` throttles (and weights, where the device's scheduler has them)
    are written to the container's blkio cgroup, made only when asked (they were refused
    as unapplied); a weight this kernel has no file for says so."""
    device = os.stat("/").st_dev
    number = {"major": os.major(device), "minor": os.minor(device)}
    path = bundle(["sleep", "100"])
    edit_config(
        path,
        resources(
            blockIO={
                "throttleReadBpsDevice": [{**number, "rate": 1 << 20}],
                "throttleWriteIOPSDevice": [{**number, "rate": 100}],
            }
        ),
    )
    container = Container.create("blkio", path, store=store)
    try:
        blkio = cgroup_of(store, "blkio").require("blkio")
        device_text = f"{number['major']}:{number['minor']}"
        assert read(blkio, "blkio.throttle.read_bps_device") == f"{device_text} {1 << 20}"
        assert read(blkio, "blkio.throttle.write_iops_device") == f"{device_text} 100"
    finally:
        container.destroy()
    assert not blkio.exists()
    nowhere = bundle(["true"])
    rule = {"major": 250, "minor": 99, "rate": 1000}  # (no such device here)
    edit_config(nowhere, resources(blockIO={"throttleReadBpsDevice": [rule]}))
    with pytest.raises(SpecError, match=r'container "nowhere": linux\.resources\.blockIO: no such'):
        Container.create("nowhere", nowhere, store=store)
    weighted = bundle(["sleep", "100"])
    edit_config(weighted, resources(blockIO={"weight": 500}))
    try:
        container = Container.create("weighted", weighted, store=store)
    except MissingFeatureError as exc:  # (no scheduler of this kernel's has weights)
        assert "blkio.weight or blkio.bfq.weight" in str(exc)
    else:
        try:
            blkio = cgroup_of(store, "weighted").require("blkio")
            files = [blkio / n for n in ("blkio.weight", "blkio.bfq.weight")]
            shown = next(f for f in files if f.exists()).read_text()  # ("default 500")
            assert shown.split()[-1] == "500", shown
        finally:
            container.destroy()
    assert Container.list(store=store) == []


@real
def test_a_dead_creation_s_destroy_leaves_another_store_s_container_on_its_cgroups_path(
    store: FileStore, bundle: BundleFactory, own_cgroup: str, tmp_path: Path
) -> None:
    """A mark names the container's id, not its store: the destroy of a creation that
    died before making its cgroup found another store's running container of that id on
    the same ``cgroupsPath``, and killed it."""
    path = edit_config(bundle(["sleep", "100"]), cgroups_path(f"/{own_cgroup}"))
    killed = in_python(
        "import os\n"
        "from sandboxrt import Container, FileStore, _cgroup\n"
        "_cgroup.create = lambda *args, **kwargs: os._exit(9)\n"
        f"Container.create('twin', {str(path)!r}, store=FileStore({str(store.root)!r}))\n"
    )
    assert killed.returncode == 9, killed.stderr
    other = FileStore(tmp_path / "other")
    theirs = Container.create("twin", path, store=other)
    try:
        theirs.start()
        Container.load("twin", store=store).destroy()
        assert theirs.status is Status.RUNNING
        marked = list(Path("/sys/fs/cgroup").glob(f"*/{own_cgroup}"))
        assert marked and all(os.getxattr(d, OWNER_XATTR) == b"twin" for d in marked)
    finally:
        theirs.destroy()


def _memory_limit_file(cgroup: cgroups.Cgroup) -> str:
    return "memory.limit_in_bytes" if cgroup.driver == "v1" else "memory.max"


@real
def test_a_failed_create_leaves_no_cgroup(store: FileStore, bundle: BundleFactory) -> None:
    with pytest.raises(InitError, match="no-such-program"):
        Container.create("cg-noexe", bundle(["no-such-program"]), store=store)
    assert our_cgroups(f"{library_cgroup.scope_for(store.runtime_dir)}/cg-noexe") == []
    assert Container.list(store=store) == []


def test_a_deny_inside_a_wider_allow_is_refused_whatever_the_driver(
    store: FileStore, bundle: BundleFactory
) -> None:
    """cgroup v1's devices controller ignored it: the container opened the device the
    spec denies. Refused, as runc refuses it, before anything is made."""
    path = bundle(["true"])
    rules = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "access": "rwm"},
        {"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
    ]
    edit_config(path, resources(devices=rules))
    with pytest.raises(SpecError, match=r'container "cg-hole".*punch a hole'):
        Container.create("cg-hole", path, store=store)
    assert our_cgroups(f"{library_cgroup.scope_for(store.runtime_dir)}/cg-hole") == []
    assert Container.list(store=store) == []


@real
def test_resources_the_kernel_refuses_leave_no_cgroup(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["true"])
    edit_config(path, resources(cpu={"cpus": "4096"}))  # no such CPU
    with pytest.raises(SystemCallError, match=r'\] container "cg-badcpus": .*cpuset\.cpus'):
        Container.create("cg-badcpus", path, store=store)
    assert our_cgroups(f"{library_cgroup.scope_for(store.runtime_dir)}/cg-badcpus") == []
    assert Container.list(store=store) == []


@real
def test_a_memory_limit_too_low_to_start_in_is_named(
    store: FileStore, bundle: BundleFactory
) -> None:
    """runc names the limit; the error said only that the container's init died."""
    path = bundle(["true"])
    edit_config(path, resources(memory={"limit": 4096}))  # a page
    with pytest.raises(InitError, match=r'"cg-tiny": .*memory limit \(\d+ bytes\) was reached'):
        Container.create("cg-tiny", path, store=store)
    assert our_cgroups(f"{library_cgroup.scope_for(store.runtime_dir)}/cg-tiny") == []
    assert Container.list(store=store) == []


@real
def test_a_memory_limit_the_kernel_rounded_is_named_with_the_one_asked_for(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The kernel keeps whole pages of a limit: the error names both, not a limit the spec
    never gave as if it had."""
    path = bundle(["true"])
    edit_config(path, resources(memory={"limit": 4196}))
    named = r"memory limit \(4096 bytes, the 4196 asked for in whole pages\) was reached"
    with pytest.raises(InitError, match=named):
        Container.create("cg-round", path, store=store)


@real
def test_a_memory_limit_met_at_start_is_named(store: FileStore, bundle: BundleFactory) -> None:
    """As at create: an init the OOM killer killed as it went to run its program. (Where
    the limit is met depends on the moment's memory: at create, it is named too.)"""
    path = bundle(["sh", "-c", "echo hi"])
    edit_config(path, resources(memory={"limit": 256 * 1024}))
    named = r"memory limit \(\d+ bytes\) was reached"
    try:
        container = Container.create("cg-tiny-start", path, store=store, stdout=subprocess.DEVNULL)
    except InitError as exc:
        assert re.search(named, str(exc)), exc
        return
    try:
        with pytest.raises(InitError, match=named):
            container.start()
    finally:
        container.destroy()


@real
def test_a_pre_existing_cgroup_is_used_and_left(
    store: FileStore, bundle: BundleFactory, own_cgroup: str
) -> None:
    mine = cgroups.create(f"/{own_cgroup}")  # made by someone else than the container
    path = bundle(["sh", "-c", "sleep 1000 & sleep 1000"])
    edit_config(path, cgroups_path(f"/{own_cgroup}"))
    container = Container.create("cg-pre", path, store=store)
    try:
        container.start()
        supervisor = container.state().pid
        assert supervisor is not None
        wait_for(lambda: len(mine.pids()) == 2)
        assert set(mine.pids()) == set(family(supervisor)[1:])
        assert all(p.created == () for p in cgroup_of(store, "cg-pre").placements)
    finally:
        container.destroy()
    assert mine.exists() and mine.pids() == []
    mine.destroy()
    assert not mine.exists()


def test_a_pre_existing_cgroup_is_left_unmarked_by_a_creator_killed_outright(
    bundle: BundleFactory, own_cgroup: str
) -> None:
    """The sandbox of a MemoryStore's container whose creator was killed removes what the
    creator's destroy would have: of a ``cgroupsPath`` that existed before, nothing but
    the container's mark (left, it kept any other container of that id out for good)."""
    mine = cgroups.create(f"/{own_cgroup}")
    path = edit_config(bundle(["sleep", "1000"]), cgroups_path(f"/{own_cgroup}"))
    supervisor, runtime_dir = words_then_killed(
        "import sys\n"
        "from sandboxrt import Container, MemoryStore\n"
        "store = MemoryStore()\n"
        f"c = Container.create('pre', {str(path)!r}, store=store)\n"
        "c.start()\n"
        "print(c.state().pid, store.runtime_dir, flush=True)\n"
        "sys.stdin.read()\n"
    )
    try:
        wait_until(lambda: not os.path.exists(f"/proc/{supervisor}"))
        assert mine.exists() and mine.pids() == []
        assert [d for d in mine.directories if OWNER_XATTR in os.listxattr(d)] == []
        assert not os.path.exists(runtime_dir)
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
        mine.destroy()  # (what a failure left in it is the fixture's to kill)


@real
@pytest.mark.parametrize("second", ["same", "below", "above"])
def test_no_container_takes_another_ones_cgroup_or_nests_with_it(
    store: FileStore, bundle: BundleFactory, own_cgroup: str, second: str
) -> None:
    # The first one's cgroup holds no process (its program exited): a second one took it,
    # or sat below or above it, and the first one's destroy killed the second's program
    # and removed its cgroup.
    first_path = {"same": "/x", "below": "/x", "above": "/x/y"}[second]
    second_path = {"same": "/x", "below": "/x/y", "above": "/x"}[second]
    path = bundle(["true"])
    edit_config(path, cgroups_path(f"/{own_cgroup}{first_path}"))
    first = Container.create("cg-first", path, store=store)
    try:
        first.start()
        assert first.wait(timeout=10) == 0  # stopped, not destroyed: its cgroup stays
        other = bundle(["sleep", "1000"])
        edit_config(other, cgroups_path(f"/{own_cgroup}{second_path}"))
        for _ in range(2):  # (a refused create leaves the first one's mark in place)
            with pytest.raises(SandboxrtError, match='cgroup of container "cg-first"'):
                Container.create("cg-second", other, store=store)
    finally:
        first.destroy()
    assert Container.list(store=store) == []
    # Once it is destroyed, the path is free again.
    second_one = Container.create("cg-second", other, store=store)
    second_one.destroy()


@real
def test_a_cgroup_claimed_by_another_creation_meanwhile_is_refused_and_left(
    own_cgroup: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two creations racing for one ``cgroupsPath``: both looked before either marked it,
    both took it (one's destroy then killed the other's processes), or the loser's
    rollback removed the directory the winner had claimed. The other one's mark is set
    right after our look here."""
    looked = cgroups.Cgroup.owner_around

    def look_then_lose(cgroup: cgroups.Cgroup) -> str | None:
        found = looked(cgroup)
        for placement in cgroup.placements:  # as the winner's mark_owner makes it
            os.setxattr(placement.directory, OWNER_XATTR, b"winner")
        return found

    monkeypatch.setattr(cgroups.Cgroup, "owner_around", look_then_lose)
    request = library_cgroup.request_for({"linux": {"cgroupsPath": f"/{own_cgroup}/x"}})
    assert request is not None
    with pytest.raises(SandboxrtError, match=r'"loser": its cgroup .* taken by another'):
        library_cgroup.create(request, "loser")
    winners = [parent / "x" for parent in our_cgroups(own_cgroup) if (parent / "x").is_dir()]
    assert winners, "the winner's cgroup was removed"
    # The winner found it made: its destroy removes it all the same, and the loser's
    # parent level (it was left behind, as if it had existed before).
    monkeypatch.undo()
    winner = cgroups.create(f"/{own_cgroup}/x")
    assert all(p.created == () for p in winner.placements)
    winner.destroy(owner="winner")
    assert our_cgroups(own_cgroup) == []


@real
def test_a_cgroup_with_child_cgroups_says_why_its_devices_cannot_be_denied(
    store: FileStore, bundle: BundleFactory, own_cgroup: str
) -> None:
    """On v1, a deny-all in a cgroup with children is EINVAL (runc fails alike): named."""
    mine = cgroups.create(f"/{own_cgroup}")
    child = cgroups.create(f"/{own_cgroup}/sub")
    try:
        if mine.driver != "v1":
            pytest.skip("a v1 devices hierarchy only")
        path = edit_config(bundle(["true"]), cgroups_path(f"/{own_cgroup}"))
        with pytest.raises(SystemCallError, match=r"devices\.deny.*it has child cgroups"):
            Container.create("cg-parent", path, store=store)
        assert Container.list(store=store) == []
    finally:
        child.destroy()
        mine.destroy()


@real
def test_a_failed_claim_of_an_existing_cgroup_leaves_it_and_its_children_unmarked(
    own_cgroup: str,
) -> None:
    """Container q claims ``mid``, a level sandboxrt made for container p, which a user's
    cgroup keeps alive; q's creation fails (v1 refuses a deny-all above a child). Its
    rollback removed ``mid`` and the user's cgroup (they carry sandboxrt's parent mark),
    or else left q's owner mark, which refused the path for ever."""

    def request(path: str) -> library_cgroup.CgroupRequest:
        made = library_cgroup.request_for({"linux": {"cgroupsPath": f"/{own_cgroup}/{path}"}})
        assert made is not None
        return made

    p = library_cgroup.create(request("mid/leaf"), "p")
    assert p is not None
    user = cgroups.create(f"/{own_cgroup}/mid/user")
    library_cgroup.remove(p.to_dict(), "p", 5.0)
    mids = [d.parent for d in user.directories]
    try:
        q: cgroups.Cgroup | None = None
        with contextlib.suppress(SandboxrtError):  # (v2 takes it: then destroyed)
            q = library_cgroup.create(request("mid"), "q")
        if q is not None:
            library_cgroup.remove(q.to_dict(), "q", 5.0)
        assert all(d.is_dir() for d in user.directories), "the user's cgroup was removed"
        for mid in mids:
            with pytest.raises(OSError):
                os.getxattr(mid, OWNER_XATTR)  # (no one's: the path is free again)
    finally:
        user.destroy()
        for mid in mids:
            with contextlib.suppress(FileNotFoundError):
                mid.rmdir()


@real
def test_a_refused_claim_leaves_the_mark_of_a_container_of_the_same_id(own_cgroup: str) -> None:
    """Another store's container may have our id: a creation refused because the cgroup
    is its (before we marked anything) dropped its mark, and the path was free to nest in."""
    theirs = cgroups.create(f"/{own_cgroup}")
    try:
        theirs.mark_owner("c1")
        request = library_cgroup.request_for({"linux": {"cgroupsPath": f"/{own_cgroup}"}})
        assert request is not None
        with pytest.raises(SandboxrtError, match='the cgroup of container "c1"'):
            library_cgroup.create(request, "c1")
        assert all(os.getxattr(d, OWNER_XATTR) == b"c1" for d in theirs.directories)
    finally:
        theirs.destroy()


@real
def test_a_busy_cgroup_is_refused_before_any_limit_is_written_to_it(
    store: FileStore, bundle: BundleFactory, own_cgroup: str
) -> None:
    mine = cgroups.create(f"/{own_cgroup}")  # someone else's, with a process in it
    sleeper = subprocess.Popen(["sleep", "1000"])
    try:
        mine.add_process(sleeper.pid)
        pids_dir = mine.directory("pids")
        if pids_dir is None:
            pytest.skip("no pids controller")
        before = read(pids_dir, "pids.max")
        path = bundle(["true"])
        edit_config(path, cgroups_path(f"/{own_cgroup}"))
        edit_config(path, resources(pids={"limit": 3}))
        with pytest.raises(SandboxrtError, match="already holds 1 process"):
            Container.create("cg-busy", path, store=store)
        assert read(pids_dir, "pids.max") == before  # it was left at 3
        assert mine.pids() == [sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()
    wait_for(lambda: mine.pids() == [])
    mine.destroy()


@real
def test_a_relative_cgroups_path_is_below_our_own_cgroup(
    store: FileStore, bundle: BundleFactory, own_cgroup: str
) -> None:
    path = bundle(["sleep", "1000"])
    edit_config(path, cgroups_path(f"{own_cgroup}/ctr"))
    container = Container.create("cg-rel", path, store=store)
    cgroup = cgroup_of(store, "cg-rel")
    made = created_dirs(cgroup)
    try:
        supervisor = container.state().pid
        assert supervisor is not None
        own = proc_cgroups(os.getpid())
        seen = proc_cgroups(family(supervisor)[1])  # the init
        for key, where in expected_paths(cgroup).items():
            assert where == os.path.join(own[key], own_cgroup, "ctr")
            assert seen[key] == where
    finally:
        container.destroy()
    assert made and not any(d.exists() for d in made)
    assert our_cgroups(own_cgroup) == []


# -- stats -----------------------------------------------------------------------------------


@real
def test_stats_follow_memory_and_cpu(store: FileStore, bundle: BundleFactory) -> None:
    script = (
        "import sys, time\n"
        "sys.stdin.readline()\n"
        "data = b'x' * (50 << 20)\n"  # filled, so every page is charged
        "print('allocated', flush=True)\n"
        "sys.stdin.readline()\n"
        "end = time.process_time() + 0.5\n"  # CPU time, however busy the machine is
        "while time.process_time() < end: pass\n"
        "print('burnt', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    path = bundle(["python3", "-c", script], rootfs="host_usr")
    edit_config(path, resources(memory={"limit": 256 * MiB}, pids={"limit": 20}))
    container = Container.create(
        "cg-stats", path, store=store, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert container.stdin is not None and container.stdout is not None

    def step(expected: bytes) -> Stats:
        assert container.stdin is not None and container.stdout is not None
        container.stdin.write(b"go\n")
        container.stdin.flush()
        assert container.stdout.readline() == expected
        return container.stats()

    try:
        created = container.stats()
        assert isinstance(created, Stats)
        assert created.pids_current == 1 and created.pids_limit == 20  # the init, waiting
        assert created.memory_limit == 256 * MiB
        container.start()
        allocated = step(b"allocated\n")
        assert allocated.memory_usage >= created.memory_usage + 45 * MiB, (created, allocated)
        assert allocated.memory_max_usage is None or allocated.memory_max_usage >= 50 * MiB
        burnt = step(b"burnt\n")
        assert burnt.cpu_usage_ns >= allocated.cpu_usage_ns + 400_000_000, (allocated, burnt)
        assert burnt.cpu_user_ns + burnt.cpu_system_ns > 0
        container.stdin.write(b"done\n")
        container.stdin.flush()
        assert container.wait(timeout=10) == 0
        stopped = container.stats()  # (what it used in all, as wait4 tells a child's)
        assert container.status is Status.STOPPED
        assert stopped.pids_current == 0
        assert stopped.cpu_usage_ns >= burnt.cpu_usage_ns
        assert stopped.memory_max_usage is None or stopped.memory_max_usage >= 50 * MiB
        for directory in cgroup_of(store, "cg-stats").directories:  # (as a tied sandbox's end)
            directory.rmdir()
        with pytest.raises(InvalidStateError, match="its cgroup is gone"):
            container.stats()  # (not a container that used nothing)
    finally:
        container.stdin.close()
        container.stdout.close()
        container.destroy()


# -- containment -----------------------------------------------------------------------------

_FORK_BOMB = """
import os, time
while True:
    try:
        os.fork()            # parent and child both go on forking
    except OSError:
        time.sleep(0.005)    # EAGAIN: the pids limit
"""


@real
def test_a_fork_bomb_is_contained_and_stays_controllable(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["python3", "-c", _FORK_BOMB], rootfs="host_usr")
    edit_config(path, resources(pids={"limit": 32}))
    container = Container.create("cg-bomb", path, store=store, stderr=subprocess.DEVNULL)
    cgroup = cgroup_of(store, "cg-bomb")
    try:
        container.start()
        wait_for(lambda: container.stats().pids_current >= 30)
        for _ in range(20):
            stats = container.stats()
            assert stats.pids_current <= 32 and stats.pids_limit == 32
            assert len(cgroup.pids()) <= 32
            time.sleep(0.02)
        assert container.status is Status.RUNNING
        assert (
            subprocess.run(["true"], check=False, timeout=10).returncode == 0
        )  # the host still forks
        container.kill(signal.SIGKILL, all=True)
        assert cgroup.pids() == []
        assert container.wait(timeout=10) == -signal.SIGKILL  # (bounded: controllable)
    finally:
        container.destroy()
    assert not cgroup.exists()


@real
def test_a_memory_hog_is_oom_killed_and_reported(store: FileStore, bundle: BundleFactory) -> None:
    hog = "import time\nchunks = []\nwhile True: chunks.append(b'x' * (4 << 20))\n"
    path = bundle(["python3", "-c", hog], rootfs="host_usr")
    edit_config(path, resources(memory={"limit": 32 * MiB}))
    container = Container.create("cg-hog", path, store=store, stderr=subprocess.DEVNULL)
    try:
        sandbox = container.sandbox
        assert sandbox is not None
        container.start()
        assert container.wait(timeout=30) == -signal.SIGKILL
        assert sandbox.exit_status() == -signal.SIGKILL  # recorded by the surviving supervisor
        assert container.status is Status.STOPPED
        assert container.oom_killed  # (why it got -9: as Docker's State.OOMKilled)
        assert Container.load("cg-hog", store=store).oom_killed
    finally:
        container.destroy()


@real
@without_swap
def test_an_oom_kill_of_one_process_shows_in_the_stats(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The init lives on when the OOM killer kills one of its children: its stats count
    the kill, and ``oom_killed`` says so; a container that met no limit says not."""
    program = f'python3 -c "{HOG}" 2>/dev/null; echo $?; exec sleep 1000'
    path = bundle(["sh", "-c", program], rootfs="host_usr")
    edit_config(path, resources(memory={"limit": 32 * MiB}))
    calm = Container.create("cg-calm", bundle(["sleep", "1000"]), store=store)
    try:
        with Container.create("cg-child", path, store=store, stdout=subprocess.PIPE) as container:
            assert not container.oom_killed and container.stats().oom_kills == 0
            container.start()
            assert container.stdout is not None
            assert container.stdout.readline() == b"137\n"  # (128 + SIGKILL)
            assert container.stats().oom_kills == 1
            assert container.oom_killed
            assert container.status is Status.RUNNING
        calm.start()
        assert not calm.oom_killed and calm.stats().oom_kills == 0
    finally:
        calm.destroy()


@real
@without_swap
def test_an_oom_kill_in_a_cgroup_the_container_made_counts(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A process the OOM killer kills in a cgroup its container made beneath its own counts
    as the container's (cgroup v1 counts a kill in the victim's cgroup only)."""
    if LAYOUT is None or LAYOUT.driver == "v2":
        pytest.skip("cgroup v2 counts the kills beneath a cgroup in its own memory.events")
    sub = "/sys/fs/cgroup/memory/made"
    # (The subshell moves itself: "0" is the writer, and echo is the shell's own.)
    program = f'mkdir {sub} && echo 0 > {sub}/cgroup.procs && python3 -c "{HOG}" 2>/dev/null'
    path = bundle(["sh", "-c", f"({program}); echo $?; exec sleep 1000"], rootfs="host_usr")

    def writable_cgroups(document: dict[str, Any]) -> None:
        resources(memory={"limit": 32 * MiB})(document)
        for mount in document["mounts"]:
            if mount["destination"] == "/sys/fs/cgroup":
                mount["options"] = [o for o in mount["options"] if o != "ro"]

    edit_config(path, writable_cgroups)
    with Container.create("cg-made", path, store=store, stdout=subprocess.PIPE) as container:
        container.start()
        assert container.stdout is not None
        assert container.stdout.readline() == b"137\n"  # (128 + SIGKILL)
        memory = cgroup_of(store, "cg-made").directory("memory")
        assert memory is not None
        kills = [
            (level / "memory.oom_control").read_text().split()[-1]
            for level in (memory, memory / "made")
        ]
        assert kills == ["0", "1"]  # (the kernel counted it in the made one alone)
        assert container.stats().oom_kills == 1
        assert container.oom_killed


@real
def test_kill_all_through_the_cgroup_reaches_a_double_forked_daemon(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["sh", "-c", "sh -c 'sleep 1000 &' ; sleep 1000"])
    container = Container.create("cg-daemon", path, store=store)
    cgroup = cgroup_of(store, "cg-daemon")
    try:
        container.start()
        # The init (sh execs its last sleep) and the daemon, reparented.
        wait_for(lambda: len(cgroup.pids()) == 2)
        members = cgroup.pids()
        container.kill(signal.SIGKILL, all=True)
        assert cgroup.pids() == []
        for pid in members:
            info = procfs.read_stat(pid)
            assert info is None or info.state in "ZX"
        assert container.wait(timeout=10) == -signal.SIGKILL
        assert container.status is Status.STOPPED
        container.kill(signal.SIGKILL, all=True)  # stopped: allowed, nothing left to kill
    finally:
        container.destroy()
    assert not cgroup.exists()


@real
def test_kill_all_with_another_signal_spares_the_supervisor(
    store: FileStore, bundle: BundleFactory
) -> None:
    # SIGALRM: the supervisor does not handle it, so receiving it would end the sandbox.
    script = "sh -c 'sleep 1000 &'; trap '' ALRM; echo ready; sleep 1000"
    container = Container.create(
        "cg-alrm", bundle(["sh", "-c", script]), store=store, stdout=subprocess.PIPE
    )
    cgroup = cgroup_of(store, "cg-alrm")
    try:
        container.start()
        assert container.stdout is not None
        assert container.stdout.readline() == b"ready\n"
        supervisor = container.state().pid
        # The init (sh execs its last sleep, ALRM still ignored) and the daemon.
        wait_for(lambda: len(cgroup.pids()) == 2)
        assert supervisor not in cgroup.pids()
        container.kill(signal.SIGALRM, all=True)
        wait_for(lambda: len(cgroup.pids()) == 1)  # the daemon died, the init ignored it
        assert supervisor is not None and procfs.read_stat(supervisor) is not None
        assert container.status is Status.RUNNING
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()
    assert not cgroup.exists()


# -- the library's choices, without a kernel -------------------------------------------------

V1_ONLY = CgroupLayout((Hierarchy(Path("/x/memory"), "/", frozenset({"memory"}), 1),))
V2_ONLY = CgroupLayout(
    (Hierarchy(Path("/x/unified"), "/", frozenset({"memory", "pids", "cpu"}), 2),)
)
NONE = CgroupLayout(())
DENY_ALL = {"linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]}}}


def test_device_rules_get_runc_defaults_on_v1_and_v2() -> None:
    spec = {
        "linux": {
            **DENY_ALL["linux"],
            "devices": [
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
                {"path": "/dev/fifo", "type": "p"},
            ],
        }
    }
    rules = library_cgroup.resources_for(spec).devices
    assert rules[0] == DeviceRule(False, "a", None, None, "rwm")
    assert rules[1] == DeviceRule(True, "c", 10, 229)  # the spec's own device
    assert rules[2:] == library_cgroup.DEFAULT_DEVICE_RULES
    # No device rule in the spec: the same deny-all and defaults (it allowed every device).
    everyone = (rules[0], *library_cgroup.DEFAULT_DEVICE_RULES)
    assert library_cgroup.resources_for({"linux": {}}).devices == everyone
    # A deny of one of the spec's own devices wins over its implicit allow.
    deny_fuse = {"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
    spec["linux"]["resources"]["devices"].append(deny_fuse)
    assert library_cgroup.resources_for(spec).devices[1:3] == (
        DeviceRule(True, "c", 10, 229),
        DeviceRule(False, "c", 10, 229),
    )


def test_without_any_hierarchy_a_cgroup_is_required_only_when_asked_for() -> None:
    with pytest.raises(MissingFeatureError, match="cgroups is not available"):
        library_cgroup.request_for(DENY_ALL, layout=NONE)
    with pytest.raises(MissingFeatureError):
        library_cgroup.request_for({"linux": {"cgroupsPath": "/a"}}, layout=NONE)
    assert library_cgroup.request_for({"linux": {}}, layout=NONE) is None
    request = library_cgroup.request_for(DENY_ALL, layout=V2_ONLY)
    assert request is not None and request.required
    assert request.resources.devices[0] == DeviceRule(False, "a", None, None, "rwm")
    request = library_cgroup.request_for({}, layout=V1_ONLY)
    assert request is not None and not request.required and request.path is None


#: Sandboxes launched in a private mount namespace where the host's cgroupfs is not mounted
#: (``umount -l`` there, after ``--propagation private``: the host keeps it).
_HIDE_CGROUPFS = [
    *["unshare", "--mount", "--propagation", "private", "--"],
    *["sh", "-c", 'umount -l /sys/fs/cgroup && exec "$@"', "sh"],
]


@real
def test_a_sandbox_that_sees_no_cgroupfs_still_joins_its_cgroup(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The library opens the cgroup's directories and sends them: the sandbox resolves no
    host cgroup path (decision 38), so hiding the cgroupfs from it changes nothing."""
    path = bundle(["sleep", "1000"])
    edit_config(path, resources(memory={"limit": 64 * MiB}, pids={"limit": 50}))
    launcher = SubprocessLauncher(prefix=_HIDE_CGROUPFS)
    container = Container.create("nocgfs", path, store=store, launcher=launcher)
    try:
        supervisor = container.state().pid
        assert supervisor is not None
        container.start()
        cgroup = cgroup_of(store, "nocgfs")
        wait_for(lambda: len(family(supervisor)) >= 2)
        assert container.exec_run(["true"], timeout=30).returncode == 0
        members = family(supervisor)[1:]
        assert members and set(members) <= set(cgroup.pids())
        want = expected_paths(cgroup)
        assert {k: proc_cgroups(members[0]).get(k) for k in want} == want
        container.pause()
        assert read(cgroup.require("freezer"), "freezer.state") == "FROZEN"
        container.resume()
        container.kill(signal.SIGKILL, all=True)
        assert container.wait(timeout=10) == -signal.SIGKILL
    finally:
        container.destroy()
    assert not any(d.exists() for d in cgroup.directories)


# -- the spec's cgroup mount -----------------------------------------------------------------


def _cgroup_mount_script(layout: CgroupLayout | None) -> str:
    """Prints the memory and pids limits seen under ``/sys/fs/cgroup``, then whether a
    write there fails, then ``own`` unless the supervisor (outside the container's cgroup)
    is listed, then the names at the top of the mount."""
    if layout is not None and layout.driver == "v2":
        limits, procs, scratch = "memory.max pids.max", "cgroup.procs", "x"
    else:
        limits = "memory/memory.limit_in_bytes pids/pids.max"
        procs, scratch = "pids/cgroup.procs", "memory/x"
    return (
        f"cd /sys/fs/cgroup && cat {limits} && mkdir {scratch} 2>&1;"
        f" grep -qx 1 {procs} && echo above || echo own; ls"
    )


def _check_cgroup_mount(out: str, limit: int) -> None:
    lines = out.splitlines()
    assert lines[:2] == [str(limit), "50"], out
    assert "Read-only file system" in lines[2], out
    assert lines[3] == "own", out
    if LAYOUT is not None and LAYOUT.driver == "v1":
        names = set(" ".join(lines[4:]).split())
        # Only the hierarchies the container was placed in: in the others (blkio,
        # name=systemd, the hybrid cgroup2) its cgroup is its supervisor's, above it.
        assert {"memory", "pids"} <= names, out
        assert all(part in V1_CONTROLLERS for name in names for part in name.split(",")), out


def _no_cgroup_namespace(document: dict[str, Any]) -> None:
    namespaces = document["linux"]["namespaces"]
    document["linux"]["namespaces"] = [ns for ns in namespaces if ns["type"] != "cgroup"]


@real
@pytest.mark.parametrize("kind", ["cgroupns", "no-cgroupns", "userns", "rro", "no-proc"])
def test_a_cgroup_mount_shows_the_container_its_own_cgroups(
    store: FileStore, bundle: BundleFactory, kind: str
) -> None:
    """As runc: the spec's ``cgroup`` mount holds the hierarchies the container is in, each
    showing its own cgroup and beneath (a JVM sizes itself from them), read-only (also by
    ``rro``), in a cgroup namespace or not, in a user namespace too, and without ``/proc``
    (a FIFO there hangs nobody). It was an empty tmpfs."""
    limit = 64 * MiB
    path = bundle(["sh", "-c", _cgroup_mount_script(LAYOUT)])
    edit_config(path, resources(memory={"limit": limit}, pids={"limit": 50}))
    edits = {"no-cgroupns": _no_cgroup_namespace, "userns": with_userns, "rro": _rro}
    if kind in edits:
        edit_config(path, edits[kind])
    if kind == "no-proc":
        _no_proc_but_a_fifo(path)
    code, out = run_output(store, path, "cgmount")
    assert code == 0, out
    _check_cgroup_mount(out, limit)
    if kind == "no-cgroupns":
        # Its hierarchies were mounted from a cgroup namespace of their own (a cgroup2
        # mount from the host's sets the host's mount options), which the init then left.
        edit_config(path, lambda d: d["process"].update(args=["readlink", "/proc/self/ns/cgroup"]))
        code, out = run_output(store, path, "cgns")
        assert (code, out.strip()) == (0, os.readlink("/proc/self/ns/cgroup"))


def _rro(document: dict[str, Any]) -> None:
    """The cgroup mount read-only through ``rro`` (``mount_setattr``), not ``ro``."""
    for mount in document["mounts"]:
        if mount["type"] == "cgroup":
            mount["options"] = ["rro" if o == "ro" else o for o in mount["options"]]


def _no_proc_but_a_fifo(path: Path) -> None:
    """No ``/proc`` mount, and the rootfs's ``/proc/self/cgroup`` a FIFO: whoever reads it
    through the container's root hangs."""

    def no_proc(document: dict[str, Any]) -> None:
        document["mounts"] = [m for m in document["mounts"] if m["destination"] != "/proc"]

    edit_config(path, no_proc)
    (path / "rootfs/proc/self").mkdir(parents=True, exist_ok=True)
    os.mkfifo(path / "rootfs/proc/self/cgroup")


#: The pids limit file under the cgroup mount, as the layout places it.
PIDS_MAX = "pids.max" if LAYOUT is not None and LAYOUT.driver == "v2" else "pids/pids.max"


@real
@pytest.mark.parametrize("kind", ["plain", "masked", "no-proc"])
def test_a_root_built_ahead_fills_its_cgroup_mount_once_claimed(
    store: FileStore, bundle: BundleFactory, kind: str
) -> None:
    """A root built ahead mounts its tmpfs before its container's cgroup exists; the
    hierarchies go in once its claim placed it there, then what the spec masks in them is
    masked; its ``/proc/self/cgroup`` is read through the runtime's procfs, not the
    container's root (where a FIFO hung the claim)."""
    limit = 64 * MiB
    script = _cgroup_mount_script(LAYOUT)
    if kind == "masked":
        script = f"cat /sys/fs/cgroup/{PIDS_MAX}; echo masked"
    path = bundle(["sh", "-c", script])
    edit_config(path, resources(memory={"limit": limit}, pids={"limit": 50}))
    if kind == "masked":
        masked = f"/sys/fs/cgroup/{PIDS_MAX}"
        edit_config(path, lambda d: d["linux"].setdefault("maskedPaths", []).append(masked))
    if kind == "no-proc":
        _no_proc_but_a_fifo(path)
    launcher = ForkServerLauncher(build_ahead=True)
    try:
        ahead = _ahead_of(launcher, store, path)
        c = Container.create(
            "cgahead", path, store=store, launcher=launcher, stdout=subprocess.PIPE
        )
        try:
            assert _init_of(c) == ahead
            c.start()
            assert c.stdout is not None
            out = c.stdout.read().decode()
            c.stdout.close()
            assert c.wait(timeout=30) == 0, out
        finally:
            c.destroy()
        if kind == "masked":
            assert out == "masked\n", out  # (/dev/null over the limit)
        else:
            _check_cgroup_mount(out, limit)
    finally:
        launcher.close()


@real
@pytest.mark.parametrize("named", [False, True], ids=["default-path", "cgroupsPath"])
def test_destroy_removes_a_cgroup_its_dead_creation_left_unrecorded(
    store: FileStore, bundle: BundleFactory, named: bool, own_cgroup: str
) -> None:
    """A creation killed after making its cgroup, before recording it: destroy removes the
    cgroup (it stayed for ever, and a default path's kept the id from being created again:
    "it exists already"); a cgroupsPath's loses its mark, so the id may claim it again."""
    path = bundle(["true"])
    if named:
        edit_config(path, cgroups_path(f"/{own_cgroup}"))
        where = f"*/{own_cgroup}"
    else:
        where = f"*/sandboxrt/{library_cgroup.scope_for(store.runtime_dir)}/dead"
    killed = in_python(
        "import os\n"
        "from sandboxrt import Container, FileStore, _cgroup\n"
        "made = _cgroup.create\n"
        "def create(*args, **kwargs):\n"
        "    made(*args, **kwargs)\n"
        "    os._exit(9)\n"
        "_cgroup.create = create\n"
        f"Container.create('dead', {str(path)!r}, store=FileStore({str(store.root)!r}))\n"
    )
    assert killed.returncode == 9, killed.stderr
    left = list(Path("/sys/fs/cgroup").glob(where))
    assert left  # what the creation made
    container = Container.load("dead", store=store)
    assert container.status is Status.STOPPED
    container.destroy()
    if named:  # (made by it, but not known to be: it stays, as a cgroupsPath that existed)
        assert not any(OWNER_XATTR in os.listxattr(d) for d in left)
    else:
        assert not any(d.exists() for d in left)
    assert run_output(store, path, "dead")[0] == 0
    for directory in left if named else ():
        directory.rmdir()
