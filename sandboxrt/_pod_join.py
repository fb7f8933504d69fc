"""What a container's namespaces share with others': the pod's sandbox it joins (which
one, its network, the maps and root of its user namespace) and this process's own
(sysctls refused there).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from sandboxrt._core import idmap
from sandboxrt._core.cri import sandbox_to_join
from sandboxrt._core.records import ContainerRecord
from sandboxrt._core.spec_validate import sysctl_namespace
from sandboxrt._os import procfs
from sandboxrt._proc.init import give_stdio
from sandboxrt._stdio import StdioPlan
from sandboxrt.config import Config
from sandboxrt.errors import ContainerExistsError, InvalidArgumentError, SpecError
from sandboxrt.sandbox import Sandbox

__all__ = [
    "give_pipes_to_mapped_root",
    "mapped_root",
    "namespaces_we_share",
    "own_pid_namespace",
    "pod_id_maps",
    "pod_network",
    "refuse_another_user_namespace",
    "refuse_sysctls_in_our_namespaces",
    "sandbox_id_for",
]


def sandbox_id_for(
    container_id: str,
    document: Mapping[str, Any],
    *,
    join: str | None,
    root: bool,
    source: str | None,
) -> str:
    """The id of the sandbox the container goes in: its own id when it makes one.

    A :class:`SpecError` it raises names ``source`` (the spec's file, if it came from one).
    """
    try:
        annotated = sandbox_to_join(container_id, document.get("annotations"))
    except SpecError as exc:
        raise SpecError(exc.problems, source=exc.source or source) from None
    if annotated is not None and (root or (join is not None and annotated != join)):
        where = "a new sandbox" if root else f'sandbox "{join}"'
        problem = f'they put the container in sandbox "{annotated}", not {where}'
        raise SpecError([("annotations", problem)], source=source)
    target = join if join is not None else annotated
    if target == container_id and join is not None:  # (the id is the sandbox's root's)
        raise ContainerExistsError(container_id)
    return target or container_id


def refuse_another_user_namespace(
    container_id: str, document: dict[str, Any], theirs: tuple[str, str] | None
) -> None:
    """A :class:`SpecError` for a pod member that asks for a new user namespace mapped
    otherwise than its sandbox's own (``theirs``; or when it has none): it would run in
    the sandbox's, which the member's spec did not ask for. (One given by path is the
    sandbox's, as CRI runtimes write it.)"""
    linux = document.get("linux") or {}
    if not any(
        ns.get("type") == "user" and not ns.get("path") for ns in linux.get("namespaces") or []
    ):
        return
    wanted = (
        idmap.map_text(idmap.extents_from_spec(linux.get("uidMappings"))),
        idmap.map_text(idmap.extents_from_spec(linux.get("gidMappings"))),
    )
    # (Compared as sets: the kernel keeps more than five extents sorted.)
    if theirs is not None and [sorted(idmap.extents_from_text(t)) for t in theirs] == [
        sorted(idmap.extents_from_text(t)) for t in wanted
    ]:
        return
    has = "its own user namespace, mapped otherwise" if theirs else "no user namespace"
    problem = f"a new user namespace, but the pod's sandbox has {has}: its containers share it"
    raise SpecError(
        [("linux.namespaces", problem)],
        source=f'container "{container_id}"',
        container_id=container_id,
    )


def refuse_sysctls_in_our_namespaces(
    container_id: str, document: dict[str, Any], *, shared: dict[str, str] | None = None
) -> None:
    """A :class:`SpecError` for a sysctl of a namespace that is this process's own (the
    host's, as runc has it): setting it would change ours. The namespaces are those the
    spec joins by path, or ``shared`` (a pod's container runs in its sandbox's: those
    its supervisor is in, see :func:`namespaces_we_share`)."""
    linux = document.get("linux") or {}
    # What each setting belongs to: a sysctl's namespace; a root's hostname and
    # domainname are set in the UTS namespace it joins, as its sysctls.
    wanted = {f'linux.sysctl["{key}"]': sysctl_namespace(key) for key in linux.get("sysctl") or {}}
    if shared is None:
        wanted.update({name: "uts" for name in ("hostname", "domainname") if document.get(name)})
    if not wanted:
        return
    ours = shared
    if ours is None:
        ours = {
            ns["type"]: ns["path"]
            for ns in linux.get("namespaces") or []
            if ns.get("path")
            and ns.get("type") in _NAMESPACE_FILES
            and _same_file(ns["path"], _NAMESPACE_FILES[ns["type"]])
        }
    problems = [
        (where, f"not allowed in the runtime's own {kind} namespace ({ours[kind]})")
        for where, kind in wanted.items()
        if kind in ours
    ]
    if problems:
        raise SpecError(problems, source=f'container "{container_id}"', container_id=container_id)


#: The files under ``/proc/self/ns`` of the namespace types a sysctl may belong to.
_NAMESPACE_FILES = {
    "network": "/proc/self/ns/net",
    "ipc": "/proc/self/ns/ipc",
    "uts": "/proc/self/ns/uts",
}


def namespaces_we_share(supervisor: int) -> dict[str, str]:
    """The namespaces (of the kinds a sysctl may belong to) that sandbox ``supervisor``
    is in and this process too: read from the supervisor itself, not from the paths its
    spec joined, which may name nothing by now (a process's ``/proc/PID/ns`` that has
    exited, a network namespace deleted since)."""
    shared = {}
    for kind, ours in _NAMESPACE_FILES.items():
        theirs = f"/proc/{supervisor}/ns/{os.path.basename(ours)}"
        if _same_file(theirs, ours):
            shared[kind] = theirs
    return shared


def _same_file(a: str, b: str) -> bool:
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return False  # (a path that cannot be joined fails later, with its own error)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def pod_network(
    container_id: str, config: Config, root: ContainerRecord, *, on_ours: bool
) -> Config:
    """``config`` with its pod's network mode (a member shares the pod's network namespace,
    whatever its own spec and config say); an :class:`InvalidArgumentError` for one asking
    for the host's network in a pod that has one of its own. The pod is on the host's
    network when its sandbox is in ours (``on_ours``: what its supervisor is in)."""
    pod: Literal["sandbox", "host"] = "host" if on_ours else "sandbox"
    if config.network == pod:
        return config
    if config.network == "host":
        problem = f'Config(network="host") in pod "{root.id}", whose network is its own'
        raise InvalidArgumentError(container_id, problem)
    return attrs.evolve(config, network=pod)


def own_pid_namespace(pid: int) -> bool:
    """Whether process ``pid`` (a supervisor) is in a PID namespace other than ours."""
    try:
        theirs, ours = os.stat(f"/proc/{pid}/ns/pid"), os.stat("/proc/self/ns/pid")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)


def pod_id_maps(host: Sandbox) -> tuple[str, str] | None:
    """The maps of a living sandbox's own user namespace (None without one), read from
    its supervisor."""
    maps = procfs.id_maps(host.supervisor.pid)
    if maps is None or idmap.is_identity(*(idmap.extents_from_text(m) for m in maps)):
        return None
    return maps


def give_pipes_to_mapped_root(stdio: StdioPlan, id_maps: tuple[str, str] | None) -> None:
    """In a sandbox with a user namespace of its own, give the pipes the library made for
    a process's stdio (``PIPE``) to root there, as runc gives the pipes it makes: the
    host's root is not mapped there, so the process's side could not give them on to its
    user (``give_stdio``), who could not reopen them (``/dev/stderr``). The caller's own
    fds keep their owners."""
    owner = mapped_root(id_maps)
    if owner is not None:  # (both ids: the namespace's root may chown only what it maps)
        give_stdio(stdio.made_pipes, *owner)


def mapped_root(id_maps: tuple[str, str] | None) -> tuple[int, int] | None:
    """The host uid and gid of root in the sandbox's own user namespace (None without
    one): its supervisor, and the inits and exec'd processes it forks, are that root
    there and join the container's cgroup as it, so it must own the joining files."""
    return idmap.mapped_root(*id_maps) if id_maps is not None else None
