"""A container's creation: its arguments and spec checked, its plan made, then, under its
lock, its record, cgroup, gofer and sandbox (launched, or a pod's joined), each undone by
the container's teardown should a later step fail."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import getpass
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from sandboxrt import _cgroup
from sandboxrt._caller_paths import absolute_path, check_path_argument, dial_console, write_pid_file
from sandboxrt._container_state import cgroup_scope, sandbox_to_join
from sandboxrt._core.ids import validate_id
from sandboxrt._core.plan import build_container_plan, build_plan
from sandboxrt._core.protocol import ContainerPlan, InitPlan, SandboxPlan
from sandboxrt._core.records import ContainerRecord, ProcessIdentity, spec_text
from sandboxrt._core.spec import Spec, dump_spec, read_spec_file
from sandboxrt._core.spec_validate import document_problems, validate_spec
from sandboxrt._core.status import Status
from sandboxrt._os import channel, mounts
from sandboxrt._os.seccomp import compile_bpf
from sandboxrt._pod_join import (
    give_pipes_to_mapped_root,
    mapped_root,
    namespaces_we_share,
    pod_id_maps,
    pod_network,
    refuse_another_user_namespace,
    refuse_sysctls_in_our_namespaces,
    sandbox_id_for,
)
from sandboxrt._proc.init import open_cgroup_dirs
from sandboxrt._proc.launcher import Launcher
from sandboxrt._stdio import StdioArg, StdioPlan
from sandboxrt._teardown import teardown
from sandboxrt.config import Config
from sandboxrt.errors import (
    GoferError,
    InvalidArgumentError,
    SandboxDiedError,
    SpecError,
    arguments_of,
)
from sandboxrt.gofer import PendingGofer
from sandboxrt.sandbox import Sandbox, identity_of
from sandboxrt.stores import MemoryStore, MetadataStore, memory_dirs, store_or_default

if TYPE_CHECKING:
    from sandboxrt.container import Container, CreateOptions

__all__ = ["apply_config", "create", "naming_container"]

log = logging.getLogger("sandboxrt")


def create(
    container_type: type[Container],
    id: str,
    bundle: str | os.PathLike[str],
    options: CreateOptions,
    *,
    autostart: bool,
    join: str | None,
    root: bool,
) -> Container:
    """:meth:`Container.create`; with ``autostart`` (for :meth:`Container.run`) the
    program starts at once, without a start round trip, unless hooks or a terminal need
    one.

    The container joins sandbox ``join`` when given, makes a new one with
    ``root``, else does what its spec's CRI annotations say (see
    ``sandboxrt._core.cri``); annotations naming another sandbox than
    ``join``, or one to join with ``root``, are a :class:`SpecError`.
    """
    asked = checked_arguments(id, bundle, options, autostart=autostart, join=join, root=root)
    return _Creation(container_type, id, asked, autostart=autostart).run()


class _Creation:
    """One create, from its checked arguments on: its plan, then what it makes, step by
    step; should a step fail, the container's teardown removes what was made."""

    _container: Container  # (once its record is made)

    def __init__(
        self, container_type: type[Container], id: str, asked: CreateArguments, *, autostart: bool
    ) -> None:
        self._type = container_type
        self._id = id
        self._asked = asked
        self._store = asked.store
        plan, self._host, self._id_maps, self._config = planned(id, asked)
        # Started with a round trip of its own where something must come first: its hooks,
        # its terminal's console, a pid file (written before the program runs, as runc).
        self._autostart = (
            autostart
            and not plan.init.start_container_hooks
            and not plan.init.terminal
            and asked.pid_file is None
        )
        if self._autostart:
            plan = dataclasses.replace(plan, init=dataclasses.replace(plan.init, autostart=True))
        self._plan: SandboxPlan | ContainerPlan = plan
        with naming_container(id):
            self._cgroup_request = _cgroup.request_for(asked.document)
        #: The pty master the sandbox sent (``process.terminal``), until handed over.
        self._pty: int | None = None
        #: The detached mounts of its rootfs and bind sources, until the sandbox has them.
        self._trees: list[int] = []

    def run(self) -> Container:
        """Make the container; any failure leaves nothing behind."""
        id, asked, store = self._id, self._asked, self._store
        # Each closed or ended if the creation fails, from here on (the id in use, say).
        with contextlib.ExitStack() as undo:
            # The caller's fds are checked before we open any.
            with arguments_of(id):
                stdio = undo.enter_context(StdioPlan(asked.stdin, asked.stdout, asked.stderr))
            # Dialled first, as runc does: one that takes no connection fails the create
            # before anything is made, and no hook runs for it.
            console = (
                None
                if asked.console_socket is None
                else undo.enter_context(dial_console(id, asked.console_socket))
            )
            gofer: PendingGofer | None = None
            if not self._config.lazy_gofer:
                # The container's gofer, started with it, opens its rootfs and bind sources
                # as detached mounts, which go to the sandbox (decisions 30, 37 and 38):
                # asked now, it opens them while we take the lock and make the record.
                gofer = undo.enter_context(PendingGofer(asked.launcher, id))
                gofer.ask(tree_plan(self._plan.init).tree_sources())
            undo.enter_context(store.lock(id, timeout=self._config.lock_timeout))
            record = self._first_record()
            store.create(record)  # raises ContainerExistsError, touching nothing
            self._container = self._type(record, store)
            try:
                give_pipes_to_mapped_root(stdio, self._id_maps)
                sandbox = self._make_sandbox(stdio, gofer)
                self._finish(sandbox, stdio, gofer, console)
            except BaseException as exc:
                self._undo(exc)
                raise
        return self._container

    def _first_record(self) -> ContainerRecord:
        """The record saved first, ``creating``, once the id is ours."""
        asked, host = self._asked, self._host
        return ContainerRecord(
            id=self._id,
            bundle=str(asked.bundle),
            spec=asked.document,
            status=Status.CREATING,
            created_at=_dt.datetime.now(_dt.UTC),
            owner=owner(),
            sandbox_id=asked.sandbox_id,
            # A subcontainer's sandbox is known (and recorded) from the start: a
            # failure from here on has the teardown ask it to forget the container.
            sandbox=host.supervisor if host is not None else None,
            runtime_dir=host.runtime_dir if host is not None else "",
            config=attrs.asdict(self._config),
            annotations=dict(asked.document.get("annotations") or {}),
            creator=this_process(),
            id_maps=self._id_maps,
        )

    def _make_sandbox(self, stdio: StdioPlan, gofer: PendingGofer | None) -> Sandbox:
        """The container's sandbox, with its init made in it: one launched for it, or its
        pod's, joined."""
        id, container, plan = self._id, self._container, self._plan
        if self._cgroup_request is not None and isinstance(plan, SandboxPlan):
            # Made while the sandbox starts: the init joins it after its mounts.
            plan = dataclasses.replace(plan, init=dataclasses.replace(plan.init, await_cgroup=True))
        if self._host is not None:  # first: a root destroy finds it by it, even after a crash
            self._host.note_member(id)
        if self._cgroup_request is not None and isinstance(plan, ContainerPlan):
            # A subcontainer's init is forked at once: its cgroup is made first.
            procs, orphaned = self._make_cgroup()
            self._record_cgroup()
            plan = dataclasses.replace(
                plan,
                init=dataclasses.replace(plan.init, cgroup_procs=procs),
                cgroup_orphaned=orphaned,
            )
        if gofer is None:  # ``lazy_gofer``: one starts on first use
            init, self._trees = with_trees(plan.init, id, mounts.open_host_trees)
        else:
            init, self._trees = with_trees(plan.init, id, functools.partial(gofer.prepare, id))
            container._record = attrs.evolve(container._record, gofer=gofer.identity)
        plan = dataclasses.replace(plan, init=init)
        if isinstance(plan, SandboxPlan):
            return self._launch(plan, stdio)
        return self._join(plan, stdio)

    def _launch(self, plan: SandboxPlan, stdio: StdioPlan) -> Sandbox:
        """A sandbox of the container's own, launched."""
        sandbox, self._pty = Sandbox.launch(
            plan,
            [*stdio.child_fds, *self._trees],
            launcher=self._asked.launcher,
            on_mounted=self._container._run_runtime_hooks,
            on_created=self._save_running if self._autostart else None,
            make_cgroup=self._make_cgroup,
            on_cgroup=self._record_cgroup,
            timeout=self._config.create_timeout,
        )
        tie = sandbox.take_tie()
        if tie is not None:  # (a MemoryStore's: it ends with this process)
            assert isinstance(self._store, MemoryStore)
            self._store.keep_tie(self._id, tie)
        return sandbox

    def _join(self, plan: ContainerPlan, stdio: StdioPlan) -> Sandbox:
        """The pod's sandbox, with the container's init made in it."""
        host, container = self._host, self._container
        assert host is not None
        # Its supervisor reaches no host path (decision 33): the cgroup's
        # directories go as fds, and the host's root where hooks need it.
        self._trees += open_cgroup_dirs(plan.init.cgroup_procs)
        has_hooks = plan.init.create_container_hooks or plan.init.start_container_hooks
        # In a user namespace of the sandbox's own, its init may not mknod: it
        # binds the host's device nodes, from the host's root.
        mapped = container._record.id_maps is not None
        if has_hooks or mapped or not plan.init.rootfs_tree:
            self._trees.append(mounts.open_host_tree("/"))
            plan = dataclasses.replace(plan, host_tree=True)
        try:
            self._pty = host.create_container(
                plan,
                [*stdio.child_fds, *self._trees],
                on_mounted=container._run_runtime_hooks,
                timeout=self._config.create_timeout,
            )
        except SandboxDiedError:
            # The sandbox ended since we looked (its root exited): refused
            # as it would have been a moment earlier, naming the root.
            sandbox_to_join(self._store, self._asked.sandbox_id, self._id)
            raise
        if mapped and not self._autostart:
            container._grant_oom_score()
        return host

    def _finish(
        self,
        sandbox: Sandbox,
        stdio: StdioPlan,
        gofer: PendingGofer | None,
        console: socket.socket | None,
    ) -> None:
        """Once the init is made: the record saved, the caller's streams, gofer, console
        and pid file given out."""
        container, asked = self._container, self._asked
        if self._autostart:
            container._launched = sandbox
        unsaved = container._record.status is Status.CREATING  # (else _save_running)
        if unsaved:
            self._record_sandbox(sandbox)  # a teardown from here on stops the sandbox
        stdio.close_child_ends()
        channel.close_fds(self._trees)
        self._trees = []
        if gofer is not None:
            try:
                container._hand_over_gofer(gofer, sandbox)
            except (GoferError, OSError) as exc:
                # It died already: the file API says so, the container lives on
                # (decision 26).
                log.warning('container "%s": its gofer did not start: %s', self._id, exc)
        if unsaved:
            self._store.save(container._record)
        container.stdin, container.stdout, container.stderr = (
            stdio.stdin,
            stdio.stdout,
            stdio.stderr,
        )
        if self._pty is not None:
            master, self._pty = self._pty, None
            container._hand_over_console(master, console)
        if asked.pid_file is not None:
            write_pid_file(self._id, asked.pid_file, sandbox.pid)

    def _undo(self, exc: BaseException) -> None:
        """After ``exc``: what was made is torn down; an init the OOM killer killed is
        raised as the :class:`InitError` that names the memory limit it met."""
        if self._pty is not None:
            os.close(self._pty)
        channel.close_fds(self._trees)
        container = self._container
        if container.console is not None:
            container.console.close()
        # (read before the teardown removes the cgroup)
        named = _cgroup.naming_memory_limit(exc, container._record)
        try:
            teardown(container)
        except Exception as cleanup:  # (out of fds too, say): the first error says why
            log.warning(
                'container "%s": cleaning up after a failed create failed too: %s: %s'
                " (destroy() finishes it)", self._id, type(cleanup).__name__, cleanup,
            )  # fmt: skip
        if named is not exc:
            raise named from exc

    def _make_cgroup(self) -> tuple[list[str], list[list[str]]]:
        """The container's cgroup, made and recorded in our copy of the record: the
        ``cgroup.procs`` files its init joins, and the levels its sandbox removes if this
        process dies (a :class:`MemoryStore`'s sandbox is ``tied``)."""
        assert self._cgroup_request is not None
        container = self._container
        cgroup = _cgroup.create(self._cgroup_request, self._id, cgroup_scope(self._store))
        if cgroup is None:
            return [], []
        owner = mapped_root(container._record.id_maps)
        if owner is not None:  # its processes join it as that root (see the function)
            _cgroup.delegate_joining(cgroup, *owner)
        container._record = attrs.evolve(container._record, cgroup=cgroup.to_dict())
        tied = isinstance(self._store, MemoryStore)
        orphaned = _cgroup.orphan_levels(cgroup, self._id) if tied else []
        return _cgroup.procs_files(cgroup), orphaned

    def _record_cgroup(self) -> None:
        """Saved at once (a destroy after a crash from here on removes it)."""
        if self._container._record.cgroup is not None:
            self._store.save(self._container._record)

    def _record_sandbox(self, sandbox: Sandbox) -> None:
        container = self._container
        record = attrs.evolve(
            container._record,
            sandbox=sandbox.supervisor,
            runtime_dir=sandbox.runtime_dir,
        ).with_status(Status.CREATED)
        container._record = record.with_status(Status.RUNNING) if self._autostart else record

    def _save_running(self, sandbox: Sandbox) -> None:
        """Created, with the program on its way (``run``): saved as running while it
        execs, rather than after."""
        self._record_sandbox(sandbox)
        self._store.save(self._container._record)


@dataclasses.dataclass(frozen=True)
class CreateArguments:
    """What a create was asked for, checked: the store and config to use, the spec as the
    document the record keeps, and the sandbox the container goes into."""

    store: MetadataStore
    config: Config
    launcher: Launcher | None
    bundle: Path
    document: dict[str, Any]
    sandbox_id: str
    stdin: StdioArg
    stdout: StdioArg
    stderr: StdioArg
    console_socket: str | os.PathLike[str] | None
    pid_file: str | os.PathLike[str] | None


def checked_arguments(
    id: str,
    bundle: str | os.PathLike[str],
    options: CreateOptions,
    *,
    autostart: bool,
    join: str | None,
    root: bool,
) -> CreateArguments:
    """A create's arguments and spec checked, before anything is made (its options'
    names were, by :meth:`Container._create`): typed errors naming the container."""
    config = options.get("config")
    spec = options.get("spec")
    launcher = options.get("launcher")
    pid_file = options.get("pid_file")
    console_socket = options.get("console_socket")
    stdin, stdout, stderr = options.get("stdin"), options.get("stdout"), options.get("stderr")
    validate_id(id)
    store = store_or_default(options.get("store"))
    config = config if config is not None else Config()
    if not isinstance(config, Config):
        raise TypeError(f"config must be a sandboxrt.Config, not {config!r}")
    if spec is not None and not isinstance(spec, Spec):
        raise TypeError(f"spec must be a sandboxrt Spec (load_spec() makes one), not {spec!r}")
    if launcher is not None and not isinstance(launcher, Launcher):
        raise TypeError(f"launcher must be a sandboxrt Launcher (with launch()), not {launcher!r}")
    check_path_argument(id, "the bundle path", bundle)
    bundle_path = absolute_path(bundle, "bundle path", container_id=id)
    try:  # (one stat on create's path, not two)
        is_directory = stat.S_ISDIR(os.stat(bundle_path).st_mode)
    except OSError:  # (missing: said when its config.json is read)
        is_directory = True
    if not is_directory:  # (its config.json, say)
        raise InvalidArgumentError(
            id,
            f"the bundle {bundle_path} is no directory: a bundle is the directory of config.json",
        )
    with naming_container(id):
        if spec is None:
            spec = bundle_spec(bundle_path / "config.json")
        else:  # made in code: checked as a config.json is
            validate_spec(spec)
    try:
        document = apply_config(dump_spec(spec), config)
        problems = document_problems(document, spec_text(document))  # (the record's, kept)
    except RecursionError:  # (an unknown key's value: copied deeper than JSON parses)
        problems = [("", "nested too deeply")]
    if problems:
        raise SpecError(problems, source=f'container "{id}"', container_id=id)
    terminal = bool((document.get("process") or {}).get("terminal"))
    if terminal and any(arg is not None for arg in (stdin, stdout, stderr)):
        raise InvalidArgumentError(
            id,
            "with process.terminal, the terminal is the program's stdin, stdout and "
            "stderr: leave them out and use container.console or a console socket",
        )
    if console_socket is not None and not terminal:
        raise InvalidArgumentError(
            id, "a console socket is for a terminal: the spec has no process.terminal"
        )
    for name, path in (("console_socket", console_socket), ("pid_file", pid_file)):
        check_path_argument(id, name, path)
    if autostart and terminal and console_socket is None:
        raise InvalidArgumentError(
            id,
            "Container.run of a process.terminal spec needs a console_socket: nothing "
            "would read the terminal; or use create() and start() and container.console",
        )
    with naming_container(id):
        source = str(bundle_path / "config.json") if options.get("spec") is None else None
        sandbox_id = sandbox_id_for(id, document, join=join, root=root, source=source)
    return CreateArguments(
        store=store,
        config=config,
        launcher=launcher,
        bundle=bundle_path,
        document=document,
        sandbox_id=sandbox_id,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        console_socket=console_socket,
        pid_file=pid_file,
    )


def planned(
    id: str, asked: CreateArguments
) -> tuple[SandboxPlan | ContainerPlan, Sandbox | None, tuple[str, str] | None, Config]:
    """The plan of a create (before the lock: a spec the plan refuses leaves nothing
    behind, not even a lock file); the sandbox it joins (``None``: a sandbox of its own),
    the maps of that sandbox's user namespace if it has one (kept in the record), and the
    config, whose network a pod member takes from its pod."""
    store, config, document = asked.store, asked.config, asked.document
    overlay_size = config.overlay_size if config.overlay else 0
    with naming_container(id):
        if asked.sandbox_id == id:
            refuse_sysctls_in_our_namespaces(id, document)
            plan = build_plan(
                container_id=id,
                sandbox_id=id,
                spec=document,
                bundle=str(asked.bundle),
                runtime_root=str(store.runtime_dir),
                compile_seccomp=compile_bpf,
                overlay_size=overlay_size,
            )
            id_maps = (plan.uid_map, plan.gid_map) if plan.uid_map else None
            if isinstance(store, MemoryStore):  # none but this process can reach it
                lock = memory_dirs.LOCK_NAME if store.made_runtime_dir else ""
                plan = dataclasses.replace(plan, tied=True, runtime_root_lock=lock)
            return plan, None, id_maps, config
        host, root_record = sandbox_to_join(store, asked.sandbox_id, id)
        shared = namespaces_we_share(host.pid)
        config = pod_network(id, config, root_record, on_ours="network" in shared)
        root_namespaces = (root_record.spec.get("linux") or {}).get("namespaces") or []
        refuse_sysctls_in_our_namespaces(id, document, shared=shared)
        id_maps = pod_id_maps(host)
        refuse_another_user_namespace(id, document, id_maps)
        member_plan = build_container_plan(
            container_id=id,
            sandbox_id=asked.sandbox_id,
            spec=document,
            bundle=str(asked.bundle),
            runtime_dir=host.runtime_dir,
            compile_seccomp=compile_bpf,
            overlay_size=overlay_size,
            sandbox_namespaces={ns.get("type") for ns in root_namespaces},
        )
        return member_plan, host, id_maps, config


@contextlib.contextmanager
def naming_container(container_id: str) -> Iterator[None]:
    """A :class:`SpecError` raised in the block names the container (before the file it
    came from, if any), unless it does already."""
    try:
        yield
    except SpecError as exc:
        who = f'container "{container_id}"'
        if exc.source is not None and exc.source.startswith(who):
            exc.container_id = exc.container_id or container_id
            raise
        source = f"{who}, {exc.source}" if exc.source else who
        raise SpecError(exc.problems, source=source, container_id=container_id) from None


def apply_config(document: dict[str, Any], config: Config) -> dict[str, Any]:
    if config.network == "host":
        linux = document.get("linux") or {}
        namespaces = [ns for ns in linux.get("namespaces") or [] if ns.get("type") != "network"]
        document = {**document, "linux": {**linux, "namespaces": namespaces}}
    return document


def bundle_spec(path: Path) -> Spec:
    """The validated spec in ``path``; unchanged files are parsed once (specs are frozen)."""
    try:
        st = path.stat()
    except OSError:
        return read_spec_file(path)  # raises the SpecError that names the problem
    return _cached_spec(str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_spec(path: str, *_identity: int) -> Spec:
    return read_spec_file(path)


def owner() -> str:
    return _user_name(os.getuid())


def this_process() -> ProcessIdentity:
    """This process's identity (read once per process: a fork gets its own)."""
    identity = _identity_of_pid(os.getpid())
    assert identity is not None  # (we run)
    return identity


_identity_of_pid = functools.lru_cache(maxsize=1)(identity_of)


@functools.lru_cache(maxsize=8)
def _user_name(uid: int) -> str:
    """The name of the user creating containers (looked up once: it reads /etc/passwd)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(uid)


def with_trees(
    init: InitPlan,
    container_id: str,
    open_trees: Callable[[Sequence[tuple[str, bool]]], list[int]],
) -> tuple[InitPlan, list[int]]:
    """``init`` with its rootfs and bind sources as detached mounts opened on the host
    side by ``open_trees`` (the container's gofer, or this process with ``lazy_gofer``;
    ``open_tree``, symlinks resolved on the host), and those trees (decisions 30, 37, 38).

    Where a tree cannot be made (a missing source, no ``open_tree``), the plan goes
    by path, as before: the init then reports what is wrong.
    """
    planned = tree_plan(init)
    try:
        return planned, open_trees(planned.tree_sources())
    except OSError as exc:
        log.debug("container %s: its root goes by path: %s", container_id, exc)
        return init, []


def tree_plan(init: InitPlan) -> InitPlan:
    """``init`` with its rootfs and bind sources to come as detached mounts: tree 0 the
    rootfs, then each bind mount's source, numbered in order."""
    numbered, index = [], 1
    for mount in init.mounts:
        if mount.bind:
            mount = dataclasses.replace(mount, tree=index)
            index += 1
        numbered.append(mount)
    return dataclasses.replace(init, mounts=numbered, rootfs_tree=True)
