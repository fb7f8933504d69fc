"""``Container.update``: a live container's limits changed, as ``runc update`` changes them."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from conftest import BundleFactory, edit_config, needs_busybox, needs_root

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

MiB = 1 << 20


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
    document = {"linux": {"resources": {"memory": {"limit": 128 * MiB, "swap": 256 * MiB}}}}
    changes = resources_update.checked_changes({"memory": {"swap": 512 * MiB}, "pids": {}})
    updated = resources_update.updated_document(document, changes)
    assert updated["linux"]["resources"]["memory"] == {"limit": 128 * MiB, "swap": 512 * MiB}
    assert document["linux"]["resources"]["memory"]["swap"] == 256 * MiB  # (left as it was)
    # A new swap limit goes with the memory limit (v1 orders the two writes by it).
    written = resources_update.to_write(updated, changes)
    assert written["memory"] == {"swap": 512 * MiB, "limit": 128 * MiB}
    assert resources_update.restored(document, changes)["memory"] == {
        "swap": 256 * MiB,
        "limit": 128 * MiB,
    }
    # What the spec left unset before has nothing to put back.
    assert resources_update.restored(document, {"pids": {"limit": 5}}) == {}
    for refused in ({"devices": []}, {"memory": {"swappiness": 1}}, {"hugepageLimits": []}):
        with pytest.raises(ValueError, match="cannot be updated"):
            resources_update.checked_changes(refused)
    with pytest.raises(ValueError, match="nothing to update"):
        resources_update.checked_changes({})
    with pytest.raises(TypeError, match="must be a mapping"):
        resources_update.checked_changes([("pids", {"limit": 1})])
    with pytest.raises(ValueError, match="cpuset hierarchy"):
        resources_update.check_placed({"cpu": {"cpus": "0"}}, frozenset({"cpu", "memory"}))
    resources_update.check_placed({"cpu": {"cpus": "0"}}, None)  # (cgroup v2: one for all)


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
    ],
    ids=["devices", "swappiness", "not-a-number", "swap-below-limit", "no-cpuset", "empty"],
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
def test_a_value_the_kernel_refuses_puts_back_what_the_update_wrote(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The memory limit is written before the CPUs, which the kernel refuses (no such
    CPU): the memory limit is put back and the record keeps the old spec."""
    path = with_resources(
        bundle(["sleep", "1000"]), {"memory": {"limit": 128 * MiB}, "cpu": {"cpus": "0"}}
    )
    with Container.create("up-back", path, store=store) as container:
        container.start()
        spec = store.load("up-back").spec
        with pytest.raises(SystemCallError) as info:
            container.update({"memory": {"limit": 64 * MiB}, "cpu": {"cpus": "4000"}})
        assert info.value.container_id == "up-back"
        assert cgroup_value(container, "memory", "memory.limit_in_bytes") == str(128 * MiB)
        assert cgroup_value(container, "cpuset", "cpuset.cpus") == "0"
        assert store.load("up-back").spec == spec


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
