"""``Pod``: several containers in one sandbox, without CRI annotations.

A pod is a sandbox and its containers: the root container, which makes the
sandbox (often a pause container), and the subcontainers added to it. They
share the sandbox's PID, network, IPC and UTS namespaces; each has its own
mount namespace, root, cgroup, hooks and record. Every container stays a
:class:`Container` (start, wait, kill, exec, destroy address it alone); the
pod only creates them and finds them. Destroying the root destroys them all.
"""

from __future__ import annotations

import os

from typing_extensions import Unpack

from sandboxrt.container import Container, CreateOptions
from sandboxrt.errors import ContainerNotFoundError, InvalidArgumentError
from sandboxrt.sandbox import Sandbox
from sandboxrt.stores import MetadataStore, store_or_default

__all__ = ["Pod"]


class Pod:
    """A sandbox with its root container and the subcontainers added to it."""

    def __init__(self, root: Container) -> None:
        if root.is_subcontainer:
            raise InvalidArgumentError(root.id, "it is not the root of a sandbox")
        self.root = root

    def __repr__(self) -> str:
        return f"Pod(id={self.id!r})"

    def __enter__(self) -> Pod:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leaving a ``with`` block destroys the pod, and closes our ends of its root's
        pipes, as a :class:`Container`'s does."""
        self.root.__exit__(*exc)

    @property
    def id(self) -> str:
        """The sandbox's id: its root container's."""
        return self.root.id

    @property
    def sandbox(self) -> Sandbox | None:
        """The sandbox (its supervisor), as :attr:`Container.sandbox`."""
        return self.root.sandbox

    @classmethod
    def create(
        cls, id: str, bundle: str | os.PathLike[str], **options: Unpack[CreateOptions]
    ) -> Pod:
        """Create the pod's root container ``id`` in a new sandbox (see
        :meth:`Container.create`; it waits for ``pod.root.start()``).

        The bundle's CRI annotations, if any, must not name a sandbox to join.
        """
        return cls(Container._create(id, bundle, options, autostart=False, root=True))

    def add_container(
        self, id: str, bundle: str | os.PathLike[str], **options: Unpack[CreateOptions]
    ) -> Container:
        """Create container ``id`` in this pod's sandbox; it waits for its ``start()``.

        Takes :meth:`Container.create`'s options (``store`` defaults to the
        root's). The root must be created or running
        (:class:`InvalidStateError` otherwise). Its CRI annotations, if any,
        must name this pod.
        """
        options.setdefault("store", self.root._store)
        return Container._create(id, bundle, options, autostart=False, join=self.id)

    @classmethod
    def load(cls, id_or_prefix: str, *, store: MetadataStore | None = None) -> Pod:
        """The pod of a container: the root's id, or any of its containers' (or a
        unique prefix of one)."""
        store = store_or_default(store)
        container = Container.load(id_or_prefix, store=store)
        if container.is_subcontainer:  # (its root's exact id: never a prefix of another)
            container = Container(store.load(container.sandbox_id), store)
        return cls(container)

    def containers(self) -> list[Container]:
        """The pod's containers: the root first, then the subcontainers by id."""
        store = self.root._store
        found = [self.root]
        sandbox = self.sandbox
        for container_id in sandbox.container_ids() if sandbox is not None else []:
            try:
                container = Container(store.load(container_id), store)
            except ContainerNotFoundError:
                continue  # destroyed, or its creation failed
            if container.sandbox_id == self.id and container.id != self.id:
                found.append(container)
        return found

    def destroy(self) -> None:
        """Destroy the root container, which destroys the sandbox and every container in it."""
        self.root.destroy()
