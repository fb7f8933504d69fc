"""User-namespace maps in the pure core: ids both ways, the kernel's text, and what the
spec validator refuses (no sandbox: see test_userns.py for real ones)."""

from __future__ import annotations

from typing import Any

import attrs

from sandboxrt import default_spec
from sandboxrt._core import idmap
from sandboxrt._core.spec import IDMapping, Namespace, Spec
from sandboxrt._core.spec_validate import spec_problems

HOST_BASE = 100000


def test_ids_map_both_ways_and_to_the_kernels_text() -> None:
    extents = ((0, 1000, 1), (1, 100000, 65535))
    assert idmap.to_host(extents, 0) == 1000
    assert idmap.to_host(extents, 5) == 100004
    assert idmap.to_host(extents, 65536) is None
    assert idmap.to_container(extents, 100004) == 5
    assert idmap.to_container(extents, 0) is None
    text = idmap.map_text(extents)
    assert text == "0 1000 1\n1 100000 65535\n"
    assert idmap.extents_from_text(text) == extents
    assert idmap.mapped_root(text, text) == (1000, 1000)
    assert idmap.mapped_root("0 0 4294967295\n", "0 0 4294967295\n") is None


def test_extents_the_kernel_would_refuse_are_named() -> None:
    assert idmap.map_problems([(0, 1000, 10), (10, 2000, 5)]) == []
    assert idmap.map_problems([(0, 1000, 10), (5, 2000, 10)]) == [
        "extents [0] and [1] overlap in their containerID ranges"
    ]
    assert idmap.map_problems([(0, 1000, 10), (100, 1005, 1)]) == [
        "extents [0] and [1] overlap in their hostID ranges"
    ]
    assert idmap.map_problems([(0, 2**32 - 10, 9)]) == []
    assert idmap.map_problems([(0, 2**32 - 10, 10)]) == [
        "extent [0] runs past the last id (4294967294)"
    ]
    # Fewer than the most, but longer than the page the kernel takes the map's text in.
    long = [(i * 10, 4_000_000_000 - i * 10, 1) for i in range(300)]
    (problem,) = idmap.map_problems(long)
    assert problem.startswith("300 extents make ") and "under 4096" in problem
    too_many = [(i, 1000 + i, 1) for i in range(idmap.MAX_EXTENTS + 1)]
    assert idmap.map_problems(too_many) == [
        f"{idmap.MAX_EXTENTS + 1} extents: the kernel takes at most {idmap.MAX_EXTENTS}"
    ]


def _userns_spec(uids: list[IDMapping], gids: list[IDMapping], **process: Any) -> Spec:
    spec = default_spec(["true"])
    assert spec.linux is not None and spec.process is not None
    linux = attrs.evolve(
        spec.linux,
        namespaces=[*(spec.linux.namespaces or []), Namespace(type="user")],
        uid_mappings=uids,
        gid_mappings=gids,
    )
    user = attrs.evolve(spec.process.user, **process)
    return attrs.evolve(spec, linux=linux, process=attrs.evolve(spec.process, user=user))


def test_a_spec_whose_user_namespace_cannot_work_is_refused() -> None:
    good = [IDMapping(container_id=0, host_id=HOST_BASE, size=65536)]
    assert spec_problems(_userns_spec(good, good)) == []
    no_root = [IDMapping(container_id=1, host_id=HOST_BASE, size=10)]
    problems = dict(spec_problems(_userns_spec(no_root, good)))
    assert "must map uid 0" in problems["linux.uidMappings"]
    overlapping = [*good, IDMapping(container_id=10, host_id=1, size=1)]
    problems = dict(spec_problems(_userns_spec(good, overlapping)))
    assert "overlap in their containerID ranges" in problems["linux.gidMappings"]
    problems = dict(spec_problems(_userns_spec(good, good, uid=70000, additional_gids=[5, 99999])))
    assert problems["process.user.uid"] == ("70000 is not mapped in the container's user namespace")
    assert "process.user.additionalGids[1]" in problems
    assert "process.user.additionalGids[0]" not in problems
    only_root = [IDMapping(container_id=0, host_id=HOST_BASE, size=1)]
    problems = dict(spec_problems(_userns_spec(only_root, only_root)))
    assert list(problems) == ["mounts[2].options"]  # runc's /dev/pts: gid=5
    assert problems["mounts[2].options"] == "gid=5: gid 5 is not mapped in the user namespace"
