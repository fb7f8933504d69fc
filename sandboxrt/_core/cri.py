"""The CRI annotations that put a container into an existing sandbox (a pod). Pure.

Kubernetes runtimes mark every container of a pod: the first one (the pause
container) is of type ``sandbox`` and makes the sandbox; the others are of
type ``container`` and name the sandbox to join, whose id is the id of that
first container. containerd and CRI-O spell the annotations differently.
A spec without them makes a sandbox of its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from sandboxrt.errors import SpecError

__all__ = [
    "CONTAINER",
    "CONTAINERD_SANDBOX_ID",
    "CONTAINERD_TYPE",
    "CRIO_SANDBOX_ID",
    "CRIO_TYPE",
    "SANDBOX",
    "annotation_problems",
    "sandbox_to_join",
]

#: containerd: the container's type, and the id of the sandbox it belongs to.
CONTAINERD_TYPE = "io.kubernetes.cri.container-type"
CONTAINERD_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
#: CRI-O: the same two annotations.
CRIO_TYPE = "io.kubernetes.cri-o.ContainerType"
CRIO_SANDBOX_ID = "io.kubernetes.cri-o.SandboxID"

#: The type values: makes the sandbox / joins one.
SANDBOX = "sandbox"
CONTAINER = "container"

_SPELLINGS = ((CONTAINERD_TYPE, CONTAINERD_SANDBOX_ID), (CRIO_TYPE, CRIO_SANDBOX_ID))


def _role(annotations: Mapping[str, str]) -> tuple[str, str, str, str] | None:
    """``(type key, type, sandbox-id key, sandbox id)`` of the first spelling present."""
    for type_key, id_key in _SPELLINGS:
        if type_key in annotations:
            return type_key, annotations[type_key], id_key, annotations.get(id_key) or ""
    return None


def annotation_problems(annotations: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """What is wrong with a spec's CRI annotations, as ``(json path, message)`` pairs.

    An unknown type, or type ``container`` without a sandbox id, is wrong.
    """
    role = _role(annotations or {})
    if role is None:
        return []
    type_key, kind, id_key, sandbox_id = role
    if kind not in (SANDBOX, CONTAINER):
        return [(f"annotations.{type_key}", f"unknown container type {kind!r}")]
    if kind == CONTAINER and not sandbox_id:
        return [(f"annotations.{id_key}", f"a {CONTAINER!r} type container needs a sandbox id")]
    return []


def sandbox_to_join(container_id: str, annotations: Mapping[str, str] | None) -> str | None:
    """The id of the sandbox container ``container_id`` joins; ``None`` makes a new one.

    Raises :class:`SpecError` for the problems of :func:`annotation_problems`,
    and for a container that names its own id as the sandbox to join.
    """
    problems = annotation_problems(annotations)
    if problems:
        raise SpecError(problems)
    role = _role(annotations or {})
    if role is None or role[1] == SANDBOX:
        return None
    _, _, id_key, sandbox_id = role
    if sandbox_id == container_id:
        raise SpecError([(f"annotations.{id_key}", "a container cannot join its own sandbox")])
    return sandbox_id
