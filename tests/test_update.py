"""``Container.update``: a live container's limits changed, as ``runc update`` changes them."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BundleFactory, edit_config, killed_after, needs_busybox, needs_root

from sandboxrt import (
    Container,
    FileStore,
    InvalidArgumentError,
    InvalidStateError,
    SpecError,
    SystemCallError,
)
from sandboxrt._core import resources_update
from sandboxrt._os import cgroups
from sandboxrt._os.cgroups import common as cgroups_common

MiB = 1 << 20

needs_burst = pytest.mark.skipif(
    not Path("/sys/fs/cgroup/cpu/cpu.cfs_burst_us").exists(), reason="no CPU burst (Linux 5.14)"
)


def cgroup_value(container: Container, controller: str, name: str) -> str:
    """What the file ``name`` of the container's cgroup in ``controller``'s hierarchy says."""
    record = container._store.load(container.id).cgroup
    assert record is not None
    cgroup = cgroups.load(record, container_id=container.id)
    for placement in cgroup.placements:
        if controller in placement.controllers:
            return (placement.mountpoint / placement.rel / name).read_text().strip()
    raise AssertionError(f"no {controller} hierarchy: {cgroup.placements}")


def with_resources(path: Path, resources: dict[str, Any]) -> Path:
    return edit_config(path, lambda d: d["linux"].update(resources=resources))


# -- the pure part ---------------------------------------------------------------------------


def test_changes_are_checked_and_merged_field_by_field() -> None:
    document = {
        "linux": {
            "resources": {
                "memory": {"limit": 128 * MiB, "swap": 256 * MiB},
                "cpu": {"quota": 50000, "period": 100000},
                "unified": {"memory.high": "max"},
            }
        }
    }
    changes = resources_update.checked_changes({"memory": {"swap": 512 * MiB}, "pids": {}})
    updated = resources_update.updated_document(document, changes)
    assert updated["linux"]["resources"]["memory"] == {"limit": 128 * MiB, "swap": 512 * MiB}
    assert document["linux"]["resources"]["memory"]["swap"] == 256 * MiB  # (left as it was)
    # Paired fields are written together, as the updated spec has them.
    assert resources_update.to_write(updated, changes)["memory"] == {
        "swap": 512 * MiB,
        "limit": 128 * MiB,
    }
    period = {"cpu": {"period": 50000}}
    assert resources_update.to_write(resources_update.updated_document(document, period), period)[
        "cpu"
    ] == {"period": 50000, "quota": 50000}
    shares = {"cpu": {"shares": 512}}
    assert resources_update.to_write(document, shares) == shares  # (nothing paired)
    # Unlimited memory makes the spec's swap limit unlimited too (as the write does).
    unlimited = resources_update.updated_document(document, {"memory": {"limit": -1}})
    assert unlimited["linux"]["resources"]["memory"] == {"limit": -1, "swap": -1}
    # unified: the files given change, the others stay (as in the cgroup).
    more = resources_update.updated_document(document, {"unified": {"pids.max": "5"}})
    assert more["linux"]["resources"]["unified"] == {"memory.high": "max", "pids.max": "5"}
    for refused in ({"devices": []}, {"memory": {"swappiness": 1}}, {"hugepageLimits": []}):
        with pytest.raises(ValueError, match="cannot be updated"):
            resources_update.checked_changes(refused)
    for unset in (0, "", None):
        with pytest.raises(ValueError, match="sets nothing"):
            resources_update.checked_changes({"pids": {"limit": unset}})
    with pytest.raises(ValueError, match="nothing to update"):
        resources_update.checked_changes({})
    with pytest.raises(TypeError, match="must be a mapping"):
        resources_update.checked_changes([("pids", {"limit": 1})])
    with pytest.raises(ValueError, match="cpuset hierarchy"):
        resources_update.check_placed({"cpu": {"cpus": "0"}}, frozenset({"cpu", "memory"}))
    with pytest.raises(ValueError, match="cgroup v2 files"):
        resources_update.check_placed({"unified": {"pids.max": "5"}}, frozenset({"pids"}))
    resources_update.check_placed({"cpu": {"cpus": "0"}}, None)  # (cgroup v2: one for all)
    assert resources_update.checked_changes({"cpu": {"burst": 0}}) == {"cpu": {"burst": 0}}
    # A unified entry for a field's v2 file would win over the field.
    overridden = {"linux": {"resources": {"unified": {"memory.max": "100"}}}}
    with pytest.raises(ValueError, match=r"unified sets memory\.max"):
        resources_update.check_not_overridden(overridden, {"memory": {"limit": 200}})
    resources_update.check_not_overridden(overridden, {"pids": {"limit": 5}})


def test_the_journal_gives_back_line_by_line_the_last_written_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What each file held goes back a line a write (a v2 ``io.weight`` holds a default
    and a device's), the last written first; one the kernel refuses is tried again once
    the others went back; one that held nothing gets a newline (v2's ``cpuset.cpus``
    inherits again); a parent's ``subtree_control`` is not written."""
    files = {
        "io.weight": "default 100\n8:0 200\n",
        "cpu.cfs_quota_us": "50000\n",
        "cpu.cfs_burst_us": "40000\n",
        "cpuset.cpus": "\n",
        "cgroup.subtree_control": "cpu io\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    journal = cgroups_common.WriteJournal()
    for name in ("io.weight", "cpu.cfs_burst_us", "cpu.cfs_quota_us", "cpuset.cpus"):
        journal.note(tmp_path / name)
    journal.note(tmp_path / "cgroup.subtree_control")
    journal.note(tmp_path / "cpu.cfs_burst_us")  # (written again, last)
    written: list[tuple[str, str]] = []
    refusals = {"cpu.cfs_burst_us": 1}  # (refused once: the quota must go back first)

    def write_lines(directory: Path, lines: list[tuple[str, str]]) -> None:
        for name, line in lines:
            if refusals.get(name):
                refusals[name] -= 1
                raise SystemCallError(f"writing {name}", OSError(errno.EINVAL, "Invalid"))
            written.append((name, line))

    monkeypatch.setattr(cgroups_common, "write_lines", write_lines)
    failed = journal.undo()
    assert written == [
        ("cpuset.cpus", "\n"),
        ("cpu.cfs_quota_us", "50000"),
        ("io.weight", "default 100"),
        ("io.weight", "8:0 200"),
        ("cpu.cfs_burst_us", "40000"),
    ]
    assert failed == []


# -- on real containers ---------------------------------------------------------------------


@needs_root
@needs_busybox
def test_update_changes_the_limits_of_a_running_container_and_keeps_the_others(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = with_resources(bundle(["sleep", "1000"]), {"memory": {"limit": 128 * MiB}})
    with Container.create("up", path, store=store) as container:
        container.start()
        container.update(
            {"pids": {"limit": 50}, "cpu": {"shares": 512, "quota": 50000, "period": 100000}}
        )
        assert cgroup_value(container, "pids", "pids.max") == "50"
        assert cgroup_value(container, "cpu", "cpu.shares") == "512"
        assert cgroup_value(container, "cpu", "cpu.cfs_quota_us") == "50000"
        assert cgroup_value(container, "memory", "memory.limit_in_bytes") == str(128 * MiB)
        container.update({"memory": {"limit": 64 * MiB}})
        stats = container.stats()
        assert (stats.memory_limit, stats.pids_limit) == (64 * MiB, 50)
        # Kept in the record: another process sees the new spec.
        resources = Container.load("up", store=store).spec.linux.resources  # type: ignore[union-attr]
        assert resources is not None and resources.memory is not None
        assert resources.memory.limit == 64 * MiB
        assert resources.pids is not None and resources.pids.limit == 50
        assert container.processes(), "the init did not live on"


@needs_root
@needs_busybox
def test_a_paused_container_may_be_updated_a_stopped_one_not(
    store: FileStore, bundle: BundleFactory
) -> None:
    with Container.create("up-paused", bundle(["sleep", "1000"]), store=store) as container:
        container.start()
        container.pause()
        container.update({"pids": {"limit": 30}})
        container.resume()
        assert cgroup_value(container, "pids", "pids.max") == "30"
        container.kill(9)
        container.wait(timeout=10)
        with pytest.raises(InvalidStateError, match='cannot update container "up-paused"'):
            container.update({"pids": {"limit": 40}})


@needs_root
@needs_busybox
@pytest.mark.parametrize(
    ("resources", "error", "match"),
    [
        ({"devices": [{"allow": True, "access": "rwm"}]}, InvalidArgumentError, "devices"),
        ({"memory": {"swappiness": 10}}, InvalidArgumentError, "memory.swappiness"),
        ({"pids": {"limit": "many"}}, SpecError, "pids.limit"),
        ({"memory": {"swap": 16 * MiB}}, SpecError, r"memory\.swap: memory\+swap"),
        ({"cpu": {"cpus": "0"}}, InvalidArgumentError, "cpuset hierarchy"),
        ({}, InvalidArgumentError, "nothing to update"),
        ({"pids": {"limit": 0}}, InvalidArgumentError, "sets nothing"),
        ({"unified": {"pids.max": "5"}}, InvalidArgumentError, "cgroup v2 files"),
    ],
    ids=[
        "devices",
        "swappiness",
        "not-a-number",
        "swap-below-limit",
        "no-cpuset",
        "empty",
        "zero",
        "unified-on-v1",
    ],
)
def test_what_cannot_change_is_refused_and_changes_nothing(
    store: FileStore,
    bundle: BundleFactory,
    resources: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    path = with_resources(bundle(["sleep", "1000"]), {"memory": {"limit": 64 * MiB}})
    with Container.create("up-bad", path, store=store) as container:
        container.start()
        spec = store.load("up-bad").spec
        with pytest.raises(error, match=match) as info:
            container.update(resources)
        assert getattr(info.value, "container_id", "up-bad") == "up-bad"
        assert store.load("up-bad").spec == spec
        assert cgroup_value(container, "memory", "memory.limit_in_bytes") == str(64 * MiB)


@needs_root
@needs_busybox
@pytest.mark.parametrize(
    ("created", "asked", "files"),
    [
        (
            {"memory": {"limit": 128 * MiB}, "cpu": {"cpus": "0"}},
            {"memory": {"limit": 64 * MiB}, "cpu": {"cpus": "4000"}},
            [("memory", "memory.limit_in_bytes", str(128 * MiB)), ("cpuset", "cpuset.cpus", "0")],
        ),
        (
            {},
            {"memory": {"limit": 64 * MiB}, "pids": {"limit": 10**7}},
            [("memory", "memory.limit_in_bytes", None), ("pids", "pids.max", "max")],
        ),
        pytest.param(
            {"cpu": {"quota": 50000, "period": 100000, "burst": 40000}},
            {"cpu": {"quota": 100000, "burst": 90000}, "pids": {"limit": 10**7}},
            [("cpu", "cpu.cfs_quota_us", "50000"), ("cpu", "cpu.cfs_burst_us", "40000")],
            marks=needs_burst,
        ),
    ],
    ids=["set-before", "unset-before", "quota-and-burst-raised"],
)
def test_a_value_the_kernel_refuses_gives_back_what_the_update_wrote(
    store: FileStore,
    bundle: BundleFactory,
    created: dict[str, Any],
    asked: dict[str, Any],
    files: list[tuple[str, str, str | None]],
) -> None:
    """The memory limit is written before the CPUs (or the pids limit), which the kernel
    refuses (no such CPU; over its pid limit): the memory limit gets back what it held,
    whether the spec had set it or not, and the record keeps the old spec."""
    path = with_resources(bundle(["sleep", "1000"]), created)
    with Container.create("up-back", path, store=store) as container:
        container.start()
        spec = store.load("up-back").spec
        before = {name: cgroup_value(container, ctrl, name) for ctrl, name, _ in files}
        with pytest.raises(SystemCallError) as info:
            container.update(asked)
        assert info.value.container_id == "up-back"
        assert '"up-back"' in str(info.value)
        for controller, name, value in files:
            now = cgroup_value(container, controller, name)
            assert now == (value if value is not None else before[name]), name
        assert store.load("up-back").spec == spec
        assert (
            container.spec.linux.resources
            == Container.load(  # type: ignore[union-attr]
                "up-back", store=store
            ).spec.linux.resources
        )  # type: ignore[union-attr]


@needs_root
@needs_busybox
def test_a_ctrl_c_during_an_update_comes_once_it_is_over(
    store: FileStore, bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held back while the update writes and saves (as a destroy's): a cgroup half
    written, or written and not recorded, would be what a Ctrl-C left."""
    apply = cgroups.CgroupV1.apply

    def interrupted(self: cgroups.CgroupV1, resources: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # (delivered in the main thread, as Ctrl-C)
        time.sleep(0.05)  # a handler would run here
        apply(self, resources)

    with Container.create("up-int", bundle(["sleep", "1000"]), store=store) as container:
        container.start()
        monkeypatch.setattr(cgroups.CgroupV1, "apply", interrupted)  # (not at the create's)
        with pytest.raises(KeyboardInterrupt):
            container.update({"pids": {"limit": 7}})
        assert cgroup_value(container, "pids", "pids.max") == "7"
        pids = store.load("up-int").spec["linux"]["resources"]["pids"]
        assert pids == {"limit": 7}


class FailingSave(FileStore):
    """A store whose next save of an update's outcome (not of its ``pending`` mark) fails,
    as on a full disk (``"before"``), or once the record is in place, as a durable
    store's ``fsync`` after it (``"after"``)."""

    fail = ""

    def save(self, record: Any) -> None:
        if record.pending:
            super().save(record)
            return
        fail, self.fail = self.fail, ""
        if fail == "before":
            raise OSError(errno.ENOSPC, "No space left on device")
        super().save(record)
        if fail == "after":
            raise OSError(errno.EIO, "Input/output error")


@needs_root
@needs_busybox
def test_an_update_whose_caller_died_half_way_is_finished_by_the_next_operation(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Its caller killed once the cgroup was written, before the record was saved: the
    kernel enforced limits the record did not show. The next holder of the lock
    finishes it: the record then says what the cgroup holds."""
    with Container.create("up-died", bundle(["sleep", "1000"]), store=store) as container:
        container.start()
        driver = type(cgroups.load(store.load("up-died").cgroup or {}, container_id="up-died"))
        target = f"{driver.__module__}:{driver.__name__}.apply"
        code = killed_after(target, "update", "up-died", store, '{"pids": {"limit": 42}}')
        assert code == -signal.SIGKILL
        assert cgroup_value(container, "pids", "pids.max") == "42"
        record = store.load("up-died")
        assert record.pending["operation"] == "update"
        assert record.pending["changes"] == {"pids": {"limit": 42}}
        container.kill(0)  # (any operation that takes the lock)
        record = store.load("up-died")
        assert record.pending == {} and record.spec["linux"]["resources"]["pids"] == {"limit": 42}
        assert cgroup_value(container, "pids", "pids.max") == "42"
        container.update({"pids": {"limit": 43}})  # (and updates go on)
        assert cgroup_value(container, "pids", "pids.max") == "43"


class _Full(FileStore):
    """A store that, once ``full``, saves nothing but the mark of an operation under way."""

    full = False

    def save(self, record: Any) -> None:
        if self.full and not record.pending:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().save(record)


@needs_root
@needs_busybox
def test_a_failed_update_whose_mark_stays_is_not_done_later(
    tmp_path: Path, bundle: BundleFactory
) -> None:
    """The store fills up in the middle of an update: the update fails, gives back what
    it wrote, and cannot clear its mark. Its caller lives (and was told): the next
    holder of the lock clears the mark, and does not do the update it was told failed."""
    store = _Full(tmp_path / "store")
    with Container.create("up-full", bundle(["sleep", "1000"]), store=store) as container:
        container.start()
        store.full = True
        with pytest.raises(OSError, match="No space left"):
            container.update({"pids": {"limit": 42}})
        assert store.load("up-full").pending["operation"] == "update"
        store.full = False
        container.kill(0)  # (any operation that takes the lock)
        assert store.load("up-full").pending == {}
        assert cgroup_value(container, "pids", "pids.max") == "max"
        assert container.spec.linux.resources is None or (  # type: ignore[union-attr]
            container.spec.linux.resources.pids is None  # type: ignore[union-attr]
        )


@needs_root
@needs_busybox
def test_an_update_the_record_cannot_keep_gives_back_what_it_wrote(
    tmp_path: Path, bundle: BundleFactory
) -> None:
    """Not saved: what the update wrote goes back. Saved, then failing (the record is
    in place): the update stays, in the cgroup and in the record, and the error comes."""
    store = FailingSave(tmp_path / "store")
    with Container.create("up-save", bundle(["sleep", "1000"]), store=store) as container:
        container.start()
        store.fail = "before"
        with pytest.raises(OSError, match="No space left"):
            container.update({"pids": {"limit": 5}})
        assert cgroup_value(container, "pids", "pids.max") == "max"
        assert container.spec.linux.resources is None or (  # type: ignore[union-attr]
            container.spec.linux.resources.pids is None  # type: ignore[union-attr]
        )
        store.fail = "after"
        with pytest.raises(OSError, match="Input/output error"):
            container.update({"pids": {"limit": 6}})
        assert cgroup_value(container, "pids", "pids.max") == "6"
        for seen in (container, Container.load("up-save", store=store)):
            pids = seen.spec.linux.resources.pids  # type: ignore[union-attr]
            assert pids is not None and pids.limit == 6


@needs_root
@needs_busybox
@needs_burst
def test_a_quota_and_burst_lowered_together(store: FileStore, bundle: BundleFactory) -> None:
    """The kernel refuses a quota below the burst in force: the burst goes first too."""
    path = with_resources(
        bundle(["sleep", "1000"]), {"cpu": {"quota": 50000, "period": 100000, "burst": 40000}}
    )
    with Container.create("up-burst", path, store=store) as container:
        container.start()
        container.update({"cpu": {"quota": 20000, "burst": 10000}})
        assert cgroup_value(container, "cpu", "cpu.cfs_quota_us") == "20000"
        assert cgroup_value(container, "cpu", "cpu.cfs_burst_us") == "10000"
        container.update({"cpu": {"quota": 60000, "burst": 50000}})
        assert cgroup_value(container, "cpu", "cpu.cfs_quota_us") == "60000"
        assert cgroup_value(container, "cpu", "cpu.cfs_burst_us") == "50000"
        container.update({"cpu": {"burst": 0}})  # (no burst: a value of its own)
        assert cgroup_value(container, "cpu", "cpu.cfs_burst_us") == "0"
        container.update({"cpu": {"quota": 10000}})
        assert cgroup_value(container, "cpu", "cpu.cfs_quota_us") == "10000"


def _has_swap() -> bool:
    with open("/proc/swaps") as f:
        return len(f.read().splitlines()) > 1


@needs_root
@needs_busybox
@pytest.mark.skipif(_has_swap(), reason="with swap, the kernel would swap out what is held")
def test_a_memory_limit_below_what_the_container_holds_is_refused(
    store: FileStore, bundle: BundleFactory
) -> None:
    """On cgroup v1 the kernel refuses (``EBUSY``) a limit it cannot reclaim down to: the
    container's tmpfs files, without swap. The limit stays as it was."""
    program = "head -c 33554432 /dev/zero > /dev/shm/held && echo held && exec sleep 1000"
    path = with_resources(bundle(["sh", "-c", program]), {"memory": {"limit": 128 * MiB}})
    with Container.create("up-busy", path, store=store, stdout=-1) as container:
        container.start()
        assert container.stdout is not None
        assert container.stdout.readline() == b"held\n"
        with pytest.raises(SystemCallError) as info:
            container.update({"memory": {"limit": 8 * MiB}})
        assert info.value.errno == errno.EBUSY
        assert cgroup_value(container, "memory", "memory.limit_in_bytes") == str(128 * MiB)
