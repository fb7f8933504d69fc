"""The container's init, and processes exec'd into a container.

The init is forked by the supervisor and runs in a mount namespace of its
own: it builds its root, waits for start and becomes the program. An exec'd
process is forked by the supervisor too, joins the init's namespaces and
root, and becomes its program the same way (:func:`_become`). Both talk to
the supervisor over a message socket (close-on-exec, so a successful exec
shows as end of stream) and report any failure as a ``Progress("error")``.
Standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import mmap
import os
import posixpath
import resource
import selectors
import signal
import socket
import stat
import termios
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn

from sandboxrt._core import abi, users
from sandboxrt._core.protocol import (
    DEFAULT_UMASK,
    Claim,
    ExecPlan,
    InitPlan,
    MountPlan,
    ProcessPlan,
    Progress,
    Request,
)
from sandboxrt._os import beneath, capabilities, channel, mounts, procfs, syscalls
from sandboxrt._proc import hooks
from sandboxrt.errors import HookError, MissingFeatureError

__all__ = [
    "AGENT_BOARD",
    "AGENT_PROCESS_NAME",
    "AHEAD_PROCESS_NAME",
    "EXEC_PROCESS_NAME",
    "PROCESS_NAME",
    "error_progress",
    "find_executable",
    "give_stdio",
    "join_cgroup_fds",
    "open_cgroup",
    "open_cgroup_dirs",
    "raise_fd_limit",
    "run_agent",
    "run_exec",
    "run_init",
    "speculate",
    "tree_identities",
]

#: The init's name in ``/proc/PID/comm`` until it execs the program.
PROCESS_NAME = "sandboxrt-init"

#: The name of an init building a root ahead (:func:`speculate`), until it has its plan.
AHEAD_PROCESS_NAME = "sandboxrt-ahead"

#: An exec'd process's name in ``/proc/PID/comm`` until it execs its program.
EXEC_PROCESS_NAME = "sandboxrt-exec"

#: The name of a container's exec agent (:func:`run_agent`).
AGENT_PROCESS_NAME = "sandboxrt-agent"

#: The namespaces an init hands its supervisor at ``created`` (:func:`open_handles`), which
#: an exec'd process joins where they differ from the supervisor's: ``(name in
#: /proc/PID/ns, OCI kind)``; the mount namespace, always joined, last. Only these can
#: differ: an init makes no other (the PID, network, IPC and UTS namespaces are the
#: sandbox's, which its supervisor is in).
_HANDLED = (("cgroup", "cgroup"), ("mnt", "mount"))
#: How many fds :func:`open_handles` gives: the root's, then one per namespace.
HANDLE_COUNT = 1 + len(_HANDLED)


def error_progress(exc: BaseException) -> Progress:
    """A ``Progress("error")`` that lets the library rebuild ``exc``'s meaning."""
    details: dict[str, Any] = {}
    if isinstance(exc, HookError):
        details = {
            "path": exc.path,
            "phase": exc.phase,
            "returncode": exc.returncode,
            "output": exc.output,
            "reason": exc.reason,
        }
    elif isinstance(exc, MissingFeatureError):
        details = {"feature": exc.feature, "detail": exc.detail}
    return Progress("error", error=str(exc), error_type=type(exc).__name__, details=details)


def _size_terminal(tty: int, plan: ProcessPlan) -> None:
    """Give the terminal the spec's ``process.consoleSize`` (as runc: else it is 0x0
    until the caller sizes it)."""
    if plan.console_size:
        rows, columns = plan.console_size
        termios.tcsetwinsize(tty, (rows, columns))


def find_executable(name: str, env: Sequence[str], cwd: str = "/") -> str:
    """Resolve ``name`` as ``execvp`` would, with the container's own PATH; a relative
    name (``./app``) or PATH entry is relative to the process's working directory
    ``cwd`` (Docker's ``WORKDIR /app`` with ``CMD ["./app"]``)."""
    if "/" in name:
        candidates = [name]
    else:
        path = next((e[5:] for e in env if e.startswith("PATH=")), "/usr/bin:/bin")
        candidates = [os.path.join(d or ".", name) for d in path.split(":")]
    for candidate in candidates:
        candidate = os.path.join(cwd, candidate)  # (an absolute one stays as it is)
        try:  # resolved beneath the root: never through /proc/1/root (the host's root)
            candidate = beneath.resolve_beneath_root(candidate)
        except OSError:
            continue
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    if "/" in name:
        raise FileNotFoundError(f"executable {name!r} does not exist or is not executable")
    raise FileNotFoundError(f"executable file {name!r} not found in $PATH")


#: A spec's ``cgroup`` mounts and the ids of the tmpfs each became (see
#: :func:`mounts.fill_cgroup_mount`).
_CgroupMounts = list[tuple[MountPlan, int | None]]


def _prepare_root(
    plan: InitPlan,
    sync: socket.socket,
    new_cgroup_namespace: bool,
    trees: Sequence[int] = (),
    host_tree: int | None = None,
    *,
    placed: list[mounts.CgroupPlacement] | None = None,
) -> _CgroupMounts:
    """Build the root of ``plan``. ``trees`` are the detached mounts (``open_tree`` on the
    host side) of :meth:`InitPlan.tree_sources`: with :attr:`InitPlan.rootfs_tree` the
    root is built in the rootfs's tree, entered with ``chroot`` (no host path is resolved
    for it, or for a bind source), and pivoted into by fd. ``placed``: the hierarchies
    the container is in (see :func:`_join_cgroup`), for its ``cgroup`` mounts, which are
    filled after ``pivot_root``; ``None`` for a root built ahead of its cgroup (its caller
    fills the mounts returned once it joined)."""
    syscalls.unshare(abi.CLONE_NEWNS)
    syscalls.mount(None, "/", None, abi.MS_REC | abi.MS_PRIVATE)
    if host_tree is not None:  # forked by a confined supervisor: the host's view, for hooks
        mounts.enter_host_tree(host_tree)
    if plan.create_container_hooks or plan.start_container_hooks:
        _import_hook_runner()  # while the host's files are what we see
    host: int | None = None
    upper = -1
    if plan.rootfs_tree:
        if len(trees) != len(plan.tree_sources()) or any(
            m.bind and m.tree < 0 for m in plan.mounts
        ):
            raise ValueError("the plan's rootfs comes as a tree, but not all its trees came")
        if not stat.S_ISDIR(os.fstat(trees[0]).st_mode):
            raise NotADirectoryError(f"rootfs {plan.rootfs} is not a directory")
        top = trees[0]
        if plan.overlay_size:  # the rootfs's tree is the lower layer, never attached
            top, upper = mounts.overlay_tree(
                trees[0], plan.overlay_size, container_id=plan.container_id, what=plan.rootfs
            )
        try:
            host, root = mounts.enter_tree(top), "/"
        finally:
            if top != trees[0]:
                os.close(top)
    else:
        root = os.path.realpath(plan.rootfs)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"rootfs {plan.rootfs} does not exist or is not a directory")
        if plan.overlay_size:
            upper = mounts.overlay_root(root, plan.overlay_size, container_id=plan.container_id)
        else:
            mounts.bind_rootfs(root)
    if upper >= 0:
        try:  # the supervisor keeps it: the upper layer is seen nowhere else
            channel.send(sync, Progress("overlay"), [upper])
        finally:
            os.close(upper)
    dev_mounted: int | None = None  # the mount id of the spec's tmpfs on /dev
    # Where the spec's device nodes may be made: the rootfs's mount and the spec's that
    # are no binds (the defaults go to a /dev that dev_kind checks).
    ours = {beneath.mount_id_beneath(root, "/")} if plan.devices else set()
    cgroup_mounts: _CgroupMounts = []
    for mount in plan.mounts:
        tree = trees[mount.tree] if 0 <= mount.tree < len(trees) else None
        mounts.make_mount(root, mount, tree)
        if _is_cgroup_mount(mount):
            cgroup_mounts.append((mount, beneath.mount_id_beneath(root, mount.destination)))
        if plan.devices and not mount.bind:
            ours.add(beneath.mount_id_beneath(root, mount.destination))
        if mount.destination.rstrip("/") == "/dev":
            dev_mounted = None if mount.bind else beneath.mount_id_beneath(root, "/dev")
    channel.close_fds(trees)
    # As runc: /dev gets the default nodes and symlinks (in a tmpfs mounted there, or the
    # rootfs's own /dev: a name taken there is left as it is); a bind-mounted one (the
    # host's /dev, say, also one a bind put over the tmpfs through a symlinked
    # destination) is left as it is, the spec's nodes too.
    dev_mounts = [m for m in plan.mounts if m.destination.rstrip("/") == "/dev"]
    dev_bound = bool(dev_mounts) and dev_mounts[-1].bind
    dev = "foreign" if dev_bound else mounts.dev_kind(root, mounted=dev_mounted)
    dev_is_ours = dev == "ours"
    devices = [] if dev == "foreign" else list(plan.devices)
    mounts.create_devices(root, devices, host=host, ours={m for m in ours if m is not None})
    if dev_is_ours and plan.default_devices:
        # As runc: a default the spec lists itself is the spec's (its mode and owner).
        listed = {os.path.normpath(device.path) for device in devices}
        defaults = [d for d in mounts.DEFAULT_DEVICES if d.path not in listed]
        mounts.create_devices(root, defaults, host=host)
    if dev_is_ours:
        has_devpts = any(m.type == "devpts" for m in plan.mounts)
        mounts.default_dev_symlinks(root, has_devpts=has_devpts)
    built: int | None = None
    shown_at: str | None = None
    if host is not None:  # back to the root we came from: hooks are host programs
        built = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        mounts.leave_tree(host)
        if plan.create_container_hooks:  # host programs: they look at the bundle's rootfs
            shown_at = os.path.realpath(plan.rootfs)
            try:
                mounts.show_at(built, shown_at)
            except PermissionError as err:  # (as runc, whose init mounts it by path)
                raise PermissionError(
                    err.errno,
                    "showing the built root at the bundle's rootfs for the createContainer"
                    f" hooks: {err.strerror} (in a user namespace, its root must be able to"
                    " reach the bundle)",
                    plan.rootfs,
                ) from None
    if plan.await_cgroup:  # made by the library meanwhile; joined through files it opened
        step, joiners = channel.receive(sync, Progress)
        if step.step != "cgroup":
            channel.close_fds(joiners)
            raise RuntimeError(step.error or "creation was cancelled")
        placed = _join_cgroup(joiners, new_cgroup_namespace, plan)
    if plan.pause_for_hooks:
        channel.send(sync, Progress("mounted"))
        go, _ = channel.receive(sync, Progress)
        if go.step != "go":
            raise RuntimeError(go.error or "creation was cancelled")
        state = go.details.get("state", {})
        hooks.run_hooks(
            plan.create_container_hooks,
            state,
            phase="createContainer",
            container_id=plan.container_id,
            cwd=shown_at,  # (the root built, as runc's init runs them in its rootfs)
        )
    if built is not None:
        mounts.pivot_into_fd(built)
    else:
        mounts.pivot_into(root)
    if placed is not None:
        fill_cgroup_mounts(cgroup_mounts, placed)
    # Sysctls first: the default readonlyPaths make /proc/sys read-only.
    for key, value in plan.sysctl.items():
        with _saying(f"setting sysctl {key} to {value!r}"):  # (the kernel's EINVAL says not which)
            procfs.write_proc_file("/proc/sys/" + key.replace(".", "/"), os.fsencode(value))
    # Read-only first, then masked, as runc: a path both masked and read-only is the
    # null device (reading it gives nothing), not a read-only bind of it (EACCES).
    mounts.readonly_paths(plan.readonly_paths)
    mounts.mask_paths(plan.masked_paths)
    if plan.rootfs_propagation:
        syscalls.mount(None, "/", None, plan.rootfs_propagation)
    if plan.readonly_root:
        beneath.make_dir_beneath_root(plan.cwd)  # a missing cwd, while it can still be made
        mounts.remount_root_readonly()
    return cgroup_mounts


def _is_cgroup_mount(mount: MountPlan) -> bool:
    return mount.type == "cgroup" and not mount.bind


def _join_cgroup(
    fds: Sequence[int], new_namespace: bool, plan: InitPlan
) -> list[mounts.CgroupPlacement]:
    """Join the container's cgroup through ``fds`` (:func:`open_cgroup`; closed here), then
    make its cgroup namespace when ``new_namespace``. The hierarchies joined (those where
    our cgroup changed: where the library placed the container), with the path there as
    we now see it, when ``plan`` has a ``cgroup`` mount to fill; else, or when our
    ``/proc/PID/cgroup`` cannot be read, none. That is read through the runtime's procfs
    (opened by :func:`_init_process`): our root may be the container's by now, where
    ``/proc`` is whatever its rootfs holds."""
    proc_self: int | None = None  # (our /proc/PID, which our root may no longer show)
    if any(map(_is_cgroup_mount, plan.mounts)):
        flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        if _ns_dir < 0:  # (not yet: our root and /proc are still the runtime's)
            proc_self = os.open("/proc/self", flags)
        else:
            proc_self = os.open("..", flags, dir_fd=_ns_dir)
    try:
        before = procfs.own_cgroups(proc_self) if proc_self is not None else None
        try:
            join_cgroup_fds(fds)
        finally:
            channel.close_fds(fds)
        after = procfs.own_cgroups(proc_self) if proc_self is not None else None
    finally:
        if proc_self is not None:
            os.close(proc_self)
    if new_namespace:
        syscalls.unshare(abi.CLONE_NEWCGROUP)
    if before is None or after is None:
        return []
    return [
        (controllers, "/" if new_namespace else path)
        for key, (controllers, path) in after.items()
        if before.get(key) != (controllers, path)
    ]


def _beneath(paths: Iterable[str], found: _CgroupMounts) -> list[str]:
    """Those of ``paths`` strictly beneath one of the ``cgroup`` mounts ``found``."""
    tops = [posixpath.normpath(mount.destination).rstrip("/") + "/" for mount, _ in found]
    return [p for p in paths if any(posixpath.normpath(p).startswith(t) for t in tops)]


def fill_cgroup_mounts(found: _CgroupMounts, placed: list[mounts.CgroupPlacement]) -> None:
    """Fill each of a root's ``cgroup`` mounts ``found`` (:func:`_prepare_root`) with the
    hierarchies ``placed`` (after ``pivot_root``).

    Outside a cgroup namespace of its own, the container's hierarchies are mounted from
    a new one, rooted at its cgroups, which we leave right after: a cgroup2 mount made
    from the host's cgroup namespace sets the host's cgroup2 options (``nsdelegate``...)
    to its own, and a mount there would show the host's whole tree. Where we may not go
    back to our cgroup namespace (a user namespace's root), they are left out."""
    if found and any(path != "/" for _, path in placed):
        home = os.open("cgroup", os.O_RDONLY | os.O_CLOEXEC, dir_fd=_ns_dir)
        try:
            try:
                syscalls.setns(home, abi.CLONE_NEWCGROUP)  # (ours already: may we come back?)
            except OSError:
                placed = []
            else:
                syscalls.unshare(abi.CLONE_NEWCGROUP)
                try:
                    rooted = [(controllers, "/") for controllers, _ in placed]
                    for mount, mount_id in found:
                        mounts.fill_cgroup_mount(mount, mount_id, rooted)
                finally:
                    syscalls.setns(home, abi.CLONE_NEWCGROUP)
                return
        finally:
            os.close(home)
    for mount, mount_id in found:
        mounts.fill_cgroup_mount(mount, mount_id, placed)


def _seccomp_program(plan: ProcessPlan) -> bytes | None:
    """The plan's seccomp filter, compiled by the library: classic BPF for ``seccomp(2)``.

    Decoded and checked before the root is built, so that a malformed program
    fails the creation rather than the start.
    """
    if plan.seccomp is None:
        return None
    program = bytes.fromhex(plan.seccomp.bpf)
    if not program or len(program) % 8:
        raise ValueError(f"malformed seccomp program ({len(program)} bytes)")
    return program


#: The NOFILE limits the supervisor had before :func:`raise_fd_limit`, for its children.
_caller_fd_limit: tuple[int, int] | None = None


def raise_fd_limit() -> None:
    """Raise this process's soft NOFILE limit to its hard one (the supervisor: each live
    ``Process`` and each waiter holds a connection to it); the processes it forks for a
    container go back to the limits it had (:func:`_apply_process`), as a program
    started by the caller would have."""
    global _caller_fd_limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        _caller_fd_limit = (soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _apply_process(
    plan: ProcessPlan,
    seccomp_program: bytes | None = None,
    *,
    chdir: bool = True,
    make_cwd: bool = False,
    before_filter: Callable[[Callable[[], None] | None], None] | None = None,
) -> None:
    """Become the program's process: limits, user, cwd (unless not ``chdir``; made first
    if missing with ``make_cwd``, for an init; entered as root, as the user where root may
    not), capabilities, no_new_privs, seccomp (``before_filter`` runs just before a
    profile that goes in last, and is given what loads it, or ``None``).

    The order is the kernel's: bounding set dropped while privileged,
    ``PR_SET_KEEPCAPS`` across the uid change, then ``capset`` and the ambient
    set, then ``no_new_privs``. Without ``no_new_privs`` installing a filter
    needs ``CAP_SYS_ADMIN``, so it goes in before any privilege is dropped (and
    must allow what follows); with it, the filter goes in last and only
    ``execve`` is left for it to allow. The plan says which (``seccomp.early``).
    """
    seccomp_flags = plan.seccomp.flags if plan.seccomp is not None else 0
    seccomp_early = plan.seccomp is not None and plan.seccomp.early
    if make_cwd:  # an init's missing cwd is made by the runtime (root), as runc does
        beneath.make_dir_beneath_root(plan.cwd)
    if chdir:
        # Entered as root first, as runc does (a cwd only root may search works), and
        # again as the user only where root was refused (a root-squashed mount, say).
        try:
            beneath.chdir_beneath_root(plan.cwd)  # never through /proc/1/root (the host's)
            chdir = False
        except PermissionError:
            pass
    if _caller_fd_limit is not None:  # the supervisor raised its own: ours is the caller's
        resource.setrlimit(resource.RLIMIT_NOFILE, _caller_fd_limit)
    for name, soft, hard in plan.rlimits:
        what = f"setting {name} to {soft}/{hard}"
        try:
            resource.setrlimit(abi.RLIMIT_NUMBERS[name], (soft, hard))
        except ValueError as exc:  # (how Python reports EPERM: a hard limit raised)
            raise PermissionError(errno.EPERM, f"{what}: {exc}") from None
        except OSError as exc:
            raise OSError(exc.errno, f"{what}: {exc.strerror}") from None
    if plan.oom_score_adj is not None:
        # (In a user namespace, the file is the host root's until we exec: set from
        # outside then, see ``limits.grant_ahead``; equal, it is left alone.)
        with _saying(f"setting oomScoreAdj to {plan.oom_score_adj}"):
            procfs.set_oom_score_adj(plan.oom_score_adj)
    # While privileged: a real-time class or policy needs it.
    if plan.io_priority is not None:
        with _saying("setting ioPriority"):
            syscalls.ioprio_set(plan.io_priority)
    if plan.scheduler is not None:
        real_time = plan.scheduler[0] in _REAL_TIME_POLICIES
        with _saying("setting the scheduler", _REAL_TIME_REFUSED if real_time else ""):
            syscalls.sched_setattr(plan.scheduler)
    os.umask(plan.umask if plan.umask is not None else DEFAULT_UMASK)
    if seccomp_program is not None and seccomp_early:
        syscalls.seccomp_set_filter(seccomp_program, seccomp_flags)
    caps = plan.capabilities
    if caps is not None:
        _drop_bounding(caps.bounding)
        syscalls.set_keepcaps(True)
    try:
        os.setgroups(plan.additional_gids)
        os.setresgid(plan.gid, plan.gid, plan.gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        # The kernel's EINVAL for an id a user namespace of the sandbox's does not map.
        ids = f"uid {plan.uid}, gid {plan.gid}, additional gids {plan.additional_gids}"
        raise OSError(
            exc.errno, f"{ids}: one is not mapped in the sandbox's user namespace"
        ) from None
    if chdir:
        beneath.chdir_beneath_root(plan.cwd)
    if caps is not None:
        syscalls.set_keepcaps(False)
        capabilities.apply_final_sets(
            caps.effective, caps.permitted, caps.inheritable, caps.ambient
        )
    if plan.no_new_privileges:
        syscalls.prctl(abi.PR_SET_NO_NEW_PRIVS, 1)
    late = None
    if seccomp_program is not None and not seccomp_early:
        late = functools.partial(syscalls.seccomp_set_filter, seccomp_program, seccomp_flags)
    if before_filter is not None:
        before_filter(late)
    if late is not None:
        late()


#: The bounding set this process has dropped to already: an init built ahead does it
#: before it is claimed (for the plan it guessed: ``RootAhead.serves`` takes only a
#: plan with the same one), so that it is not done again on the way to ``execve``.
_bounded: frozenset[int] | None = None


#: ``SCHED_FIFO``, ``SCHED_RR`` and ``SCHED_DEADLINE``.
_REAL_TIME_POLICIES = frozenset({1, 2, 6})
#: Why the kernel may refuse a real-time policy (``EPERM``) to a privileged process.
_REAL_TIME_REFUSED = (
    " (a real-time policy also needs real-time CPU time in the container's cgroup,"
    " cpu.rt_runtime_us on cgroup v1, which sandboxrt does not give)"
)


@contextlib.contextmanager
def _saying(what: str, if_refused: str = "") -> Iterator[None]:
    """Name ``what`` failed in the ``OSError`` of the block (and ``if_refused`` too when
    that is ``EPERM``)."""
    try:
        yield
    except OSError as exc:
        extra = if_refused if exc.errno == errno.EPERM else ""
        raise OSError(exc.errno, f"{what}: {exc.strerror}{extra}") from None


def _drop_bounding(keep: Iterable[int]) -> None:
    global _bounded
    wanted = frozenset(keep)
    if wanted != _bounded:
        capabilities.drop_bounding(wanted)
        _bounded = wanted


def _install_stdio(stdio: Sequence[int], tty_slave: int | None) -> None:
    # The fds came over SCM_RIGHTS and are inheritable (Python 3.11's
    # socket.recv_fds drops MSG_CMSG_CLOEXEC): only the 0-2 made below may
    # reach the program.
    for fd in set(stdio):
        os.set_inheritable(fd, False)
    if tty_slave is not None:
        fcntl.ioctl(tty_slave, termios.TIOCSCTTY, 0)
        stdio = [tty_slave] * 3
    # Move the fds clear of 0-2 first, so no dup2 overwrites one still needed.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in stdio]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)


def give_stdio(fds: Iterable[int], uid: int, gid: int = -1, *, terminal: bool = False) -> None:
    """Make ``uid`` the owner of the pipes and sockets among ``fds`` (and, with
    ``terminal``, of the container's pty they are), as runc does, so that a program
    that is not root may reopen its stdio (``/dev/stdout``, ``/proc/self/fd/1``). Unlike
    runc, a file or terminal of the host's is left to its owner. ``gid`` too, unless -1.
    Best effort: an id the sandbox's user namespace does not map, say, leaves the fd as
    it is."""
    for fd in dict.fromkeys(fds):
        try:
            info = os.fstat(fd)
        except OSError:
            continue
        mode = info.st_mode
        ours = (
            (stat.S_ISFIFO(mode) and info.st_dev == _pipefs_dev())  # not a named FIFO
            or stat.S_ISSOCK(mode)
            or (terminal and stat.S_ISCHR(mode))
        )
        if ours and (info.st_uid != uid or gid not in (-1, info.st_gid)):
            with contextlib.suppress(OSError):
                os.fchown(fd, uid, gid)


@functools.cache
def _pipefs_dev() -> int:
    """The device of anonymous pipes (pipefs): a named FIFO is on another."""
    r, w = os.pipe()
    try:
        return os.fstat(r).st_dev
    finally:
        os.close(r)
        os.close(w)


#: Every signal's disposition is the default and none is blocked (:func:`_default_signals`).
_signals_reset = False


def _default_signals(mask: Iterable[int] = ()) -> None:
    """Every signal's disposition to the default, then the signal mask to ``mask``.

    The program must not inherit what Python (SIGPIPE and SIGXFSZ ignored) or
    the supervisor (handlers, a wakeup fd) set up. Handlers would be reset by
    ``execve`` anyway; ignored signals would not.
    """
    global _signals_reset
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) not in (signal.SIG_DFL, None):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # signals Python may not touch
            continue
    mask = set(mask)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    _signals_reset = not mask


def _drop_handlers(mask: Iterable[int]) -> None:
    """Forget the Python signal handlers (and wakeup fd) of the process that forked us,
    then set the signal mask to ``mask``. Ignored signals stay ignored until
    :func:`_default_signals`: the init still writes to hooks' pipes (SIGPIPE)."""
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # signals Python may not touch
            continue
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _become(
    plan: ProcessPlan,
    executable: str,
    stdio: Sequence[int],
    tty_slave: int | None,
    seccomp_program: bytes | None,
    *,
    init: bool = False,
    before_exec: Callable[[Callable[[], None] | None], None] | None = None,
) -> NoReturn:
    """Install stdio, apply the plan (user, limits, capabilities, seccomp...) and exec.
    An ``init``'s missing cwd is made (an exec'd process's is an error, as in runc).
    ``before_exec`` runs as the program's process will, but for a seccomp profile
    that goes in last, which it is given to load where it wants (the startContainer
    hooks: in each hook's process)."""
    _install_stdio(stdio, tty_slave)
    give_stdio((0, 1, 2), plan.uid, terminal=tty_slave is not None)
    env = _program_env(plan)
    _apply_process(plan, seccomp_program, make_cwd=init, before_filter=before_exec)
    os.execve(executable, plan.args, env)


def _program_env(plan: ProcessPlan, uid: int | None = None) -> dict[str, str]:
    """The program's environment: the plan's, with ``HOME`` from the container's
    ``/etc/passwd`` (read beneath its root) when the plan has none, as runc sets it:
    the home of ``uid``, else of the plan's user."""
    env = dict(e.split("=", 1) for e in plan.env)
    if "HOME" not in env:
        try:
            passwd = beneath.read_beneath_root("/etc/passwd") or b""
        except OSError:  # (not a regular file, say: no home to find there)
            passwd = b""
        who = plan.uid if uid is None else uid
        env["HOME"] = users.home_of(who, passwd.decode(errors="replace"))
    return env


def open_cgroup_dirs(procs_files: Iterable[str]) -> list[int]:
    """``O_PATH`` fds (close-on-exec) of the directories of a cgroup's ``procs_files``."""

    def open_directory(procs: str) -> int:
        directory = os.path.dirname(procs)
        try:
            return os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise OSError(err.errno, f"opening the cgroup {directory}: {err.strerror}") from err

    return channel.open_all(procs_files, open_directory)


def open_cgroup(dirs: Iterable[int]) -> list[int]:
    """The files that move a thread into the cgroup (v1 ``tasks``, else ``cgroup.procs``)
    beneath each of its directories ``dirs`` (:func:`open_cgroup_dirs`), opened for
    writing (close-on-exec), for :func:`join_cgroup_fds`."""
    flags = os.O_WRONLY | os.O_CLOEXEC

    def open_joiner(directory: int) -> int:
        name = "tasks"
        try:
            try:
                return os.open(name, flags, dir_fd=directory)
            except FileNotFoundError:  # v2
                name = "cgroup.procs"
                return os.open(name, flags, dir_fd=directory)
        except OSError as err:
            raise OSError(err.errno, f"opening the cgroup's {name}: {err.strerror}") from err

    return channel.open_all(dirs, open_joiner)


def join_cgroup_fds(fds: Iterable[int], pid: int = 0) -> None:
    """Move a single-threaded process (0: this one, just forked) into a cgroup in every
    hierarchy, through the files :func:`open_cgroup` opened (maybe by a parent).

    Done before the process forks, so that nothing it forks is born outside.
    On v1 we write to ``tasks`` (moving one thread, all there is): for the
    writer itself (``pid`` 0) the kernel then skips the global threadgroup lock
    that ``cgroup.procs`` and any move by pid take, whose first taking waits for
    an RCU grace period (1-16 ms measured, against 0.1 ms). So a process joins by
    itself wherever it can, through files opened for it if its root hides them.
    """
    for fd in fds:
        try:
            os.write(fd, str(pid).encode())
        except OSError as err:
            raise OSError(err.errno, f"joining the cgroup: {err.strerror}") from err


def run_init(
    plan: InitPlan,
    sync: socket.socket,
    stdio: Sequence[int],
    *,
    new_cgroup_namespace: bool = False,
    signal_mask: Iterable[int] | None = None,
    cgroup: Sequence[int] | None = None,
    host_tree: int | None = None,
) -> NoReturn:
    """Build the container and exec its program; never returns.

    Joins the container's cgroup first, or once the library made it (see
    :attr:`InitPlan.await_cgroup`), and then makes its cgroup namespace, when
    ``new_cgroup_namespace``, rooted there. With ``signal_mask``, forked with
    every signal blocked: the forking process's signal handlers are dropped,
    then the mask restored (all dispositions go to default before exec).
    ``stdio`` ends with the detached mounts of :meth:`InitPlan.tree_sources`.
    ``cgroup``: files that join the cgroup (:func:`open_cgroup`), opened by the
    supervisor, whose root (decision 33) shows no cgroupfs; else joined by path.
    ``host_tree``: a detached copy of the host's root (sent by the library for
    createContainer hooks or a rootfs by path), entered first (decision 33).
    """
    count = len(plan.tree_sources())
    stdio, trees = list(stdio[: len(stdio) - count]), list(stdio[len(stdio) - count :])
    try:
        if signal_mask is not None:
            _drop_handlers(signal_mask)
        placed: list[mounts.CgroupPlacement] | None = None  # (awaited: see _prepare_root)
        if not plan.await_cgroup:
            if cgroup is None and plan.cgroup_procs:
                raise ValueError("the files that join the container's cgroup did not come")
            placed = _join_cgroup(cgroup or [], new_cgroup_namespace, plan)
        _init_process()
        seccomp_program = _seccomp_program(plan)
        _prepare_root(plan, sync, new_cgroup_namespace, trees, host_tree, placed=placed)
        _create(plan, sync, stdio, seccomp_program)
    except BaseException as exc:
        try:
            channel.send(sync, error_progress(exc))
        finally:
            os._exit(127)


def _import_hook_runner() -> None:
    """Import what runs hooks (:mod:`subprocess`, which :mod:`sandboxrt._proc.hooks` imports
    only when a hook runs) now, from the host's files: later, in the container's root,
    an import would read the container's files. Only an init whose plan has hooks pays
    for it (a root built ahead never serves such a plan: ``RootAhead.serves``)."""
    import subprocess  # noqa: F401


def speculate(hint: InitPlan, sync: socket.socket, trees: Sequence[int]) -> NoReturn:
    """Build a container's root ahead of its plan, guessing it from ``hint``; never returns.

    A warm sandbox's init (see ``supervisor.warm``): it builds the root of
    ``hint`` (the last plan the fork server saw) from ``trees`` (the fork
    server opened them: see :meth:`InitPlan.tree_sources`), reports ``ready``
    with their identities (see :func:`tree_identities`), and waits. If the real
    plan builds the same root, the supervisor sends a :class:`Claim` (the plan,
    with the container's cgroup files, which we join, and the stdio fds
    alongside, and whether to make a cgroup namespace), or a ``cancel``; we go
    on as :func:`run_init` does after its root. Otherwise we are killed unused.
    """
    try:
        _init_process(AHEAD_PROCESS_NAME)
        identities = tree_identities(trees)
        ahead = hint.speculative()
        # Nothing is written to the rootfs before a container claims the root: a caller
        # may be removing or changing it (a mount point, a device node it lacks fails the
        # build instead; the container's own init makes them).
        locked = _lock_rootfs(ahead, trees)
        cgroup_mounts = _prepare_root(ahead, sync, False, trees)
        mounted = _mount_ids(ahead)
        if hint.capabilities is not None:
            _drop_bounding(hint.capabilities.bounding)  # (a claim has the same bounding set)
        _default_signals()  # ahead too: no handler of ours runs from here on
        channel.send(sync, Progress("ready", details={"identities": identities}))
        claim, fds = _await_claim(sync, ahead, mounted)
        if not isinstance(claim, Claim):
            channel.close_fds(fds)
            raise RuntimeError(claim.error or "creation was cancelled")
        cgroup, stdio = fds[: claim.cgroup_fds], fds[claim.cgroup_fds :]
        plan = claim.plan
        if locked and not plan.readonly_root:  # claimed: the rootfs as the plan has it
            _unlock_root()
        fill_cgroup_mounts(cgroup_mounts, _join_cgroup(cgroup, claim.cgroupns, plan))
        # What the spec masks or makes read-only in there was not there when the root
        # was built: done now, as the fill comes first in a root built after its cgroup.
        mounts.mask_paths(_beneath(plan.masked_paths, cgroup_mounts))
        mounts.readonly_paths(_beneath(plan.readonly_paths, cgroup_mounts))
        syscalls.set_process_name(PROCESS_NAME)
        _create(plan, sync, stdio, _seccomp_program(plan))
    except BaseException as exc:
        try:
            channel.send(sync, error_progress(exc))
        finally:
            os._exit(127)


def _lock_rootfs(plan: InitPlan, trees: Sequence[int]) -> bool:
    """Make the rootfs's tree read-only while a root is built ahead of its claim; whether
    it was made so (not an overlay's lower layer, which is never written, nor a tree
    read-only already)."""
    if plan.overlay_size or not trees or os.fstatvfs(trees[0]).f_flag & os.ST_RDONLY:
        return False
    syscalls.mount_setattr(trees[0], abi.MOUNT_ATTR_RDONLY, 0, recursive=False)
    return True


def _unlock_root() -> None:
    """Undo :func:`_lock_rootfs` on the root (pivoted into by now)."""
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syscalls.mount_setattr(root, 0, abi.MOUNT_ATTR_RDONLY, recursive=False)
    finally:
        os.close(root)


def _mount_ids(plan: InitPlan) -> list[int | None]:
    """The mount at each of ``plan``'s mount destinations, in the root (after its pivot)."""
    return [beneath.mount_id_beneath("/", mount.destination) for mount in plan.mounts]


def _await_claim(
    sync: socket.socket, plan: InitPlan, mounted: list[int | None]
) -> tuple[Claim | Progress, list[int]]:
    """The claim of a root built ahead (or its cancel), answering ``verify`` meanwhile:
    whether each mount is still what its destination reaches (``mounted``). A mount
    point removed and made again on the host since leaves its mount where nothing
    reaches it, and the container would see the empty directory."""
    while True:
        message, fds = channel.receive_one_of(sync, Claim, Progress)
        if isinstance(message, Claim):
            return message, fds
        assert isinstance(message, Progress)
        if message.step != "verify":
            return message, fds
        channel.close_fds(fds)
        fresh = _mount_ids(plan) == mounted
        channel.send(sync, Progress("verified", details={"fresh": fresh}))


def tree_identities(trees: Sequence[int]) -> list[list[int]]:
    """``[st_dev, st_ino]`` of the root of each detached mount in ``trees``: equal lists,
    for the trees a speculative root was built from and those the real plan came with,
    show the host files it mounted are the same (no host path is resolved here)."""
    found = []
    for tree in trees:
        st = os.fstat(tree)
        found.append([st.st_dev, st.st_ino])
    return found


#: An init's ``/proc/<pid>/ns``, opened while ``/proc`` is still the runtime's (the
#: container may have none): its entries name the namespaces it is in when opened.
_ns_dir = -1


def _init_process(name: str = PROCESS_NAME) -> None:
    global _ns_dir
    os.setsid()
    # Not dumpable until exec: the container's processes must not ptrace us or open
    # our /proc entries while we still hold privileges and the runtime's fds.
    syscalls.prctl(abi.PR_SET_DUMPABLE, 0)
    syscalls.set_process_name(name)
    syscalls.join_new_session_keyring()  # (not the caller's, nor another container's)
    _ns_dir = os.open("/proc/self/ns", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _create(
    plan: InitPlan, sync: socket.socket, stdio: Sequence[int], seccomp_program: bytes | None
) -> NoReturn:
    """Report ``created`` (with a pty master, for a terminal), wait for start (with
    ``plan.autostart``, the supervisor's word at once: it confines itself first), exec."""
    executable = find_executable(plan.args[0], plan.env, plan.cwd)
    tty_slave = None
    pty_fds: list[int] = []
    if plan.terminal:
        master, tty_slave = mounts.open_pty()
        _size_terminal(tty_slave, plan)
        pty_fds = [master]
    handles = open_handles()
    channel.send(sync, Progress("created"), [*pty_fds, *handles])
    channel.close_fds([*pty_fds, *handles])
    start_hooks: Callable[[Callable[[], None] | None], None] | None = None
    try:
        start, _ = channel.receive(sync, Request)
    except channel.ChannelClosedError:
        os._exit(0)  # destroyed before start
    if plan.start_container_hooks:  # (never with autostart: the library sees to it)

        def start_hooks(confine: Callable[[], None] | None) -> None:
            # As the container's process, in its cwd (as runc): a hook is a file of
            # the container's, which its processes may have changed. What it leaves
            # running must be as confined as the program, so a profile that we load
            # last, it loads first (runc's does not). Our signals are the program's
            # by now: a hook that exits unread must not SIGPIPE us.
            default = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            try:
                hooks.run_hooks(
                    plan.start_container_hooks,
                    start.state,
                    phase="startContainer",
                    container_id=plan.container_id,
                    cwd=".",
                    confine=confine,
                )
            finally:
                signal.signal(signal.SIGPIPE, default)

    if not _signals_reset:  # (an init built ahead did it before its claim)
        _default_signals()
    _become(plan, executable, stdio, tty_slave, seccomp_program, init=True, before_exec=start_hooks)


def open_handles() -> list[int]:
    """In an init, as it reports ``created``: ``O_PATH`` fds of its root and of its
    namespaces (:data:`_HANDLED`), for its supervisor to keep: exec'd processes join
    the container through them (:func:`_join_init`), its gofer gets the root.

    Not through ``/proc/PID``: in a new user namespace the init's memory still
    belongs to the host's (it was forked, not exec'd, since the namespace was
    made), so its supervisor, root only in the new one, may not open those of a
    process that is not dumpable, which the init is until it execs."""
    if _ns_dir < 0:
        raise RuntimeError("the init's namespace directory was not opened")
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        namespaces = channel.open_all(
            (name for name, _ in _HANDLED),
            lambda name: os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=_ns_dir),
        )
    except BaseException:
        os.close(root)
        raise
    return [root, *namespaces]


def _join_init(handles: Sequence[int]) -> None:
    """Enter the init's namespaces that differ from ours, then its root, through the fds
    it handed its supervisor (:func:`open_handles`), which this process closes.

    The root is the very directory the init pivoted into: a ``chroot`` into it, after
    joining its mount namespace."""
    if len(handles) != HANDLE_COUNT:
        raise ProcessLookupError("the container's init has exited")
    root, namespaces = handles[0], handles[1:]
    try:
        for (name, kind), fd in zip(_HANDLED, namespaces, strict=True):
            theirs, ours = os.fstat(fd), os.stat(f"/proc/self/ns/{name}")
            if kind == "mount" or (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
                syscalls.setns(fd, abi.NAMESPACE_FLAGS[kind])
        os.fchdir(root)
        os.chroot(".")
    finally:
        channel.close_fds(handles)


def _resolve_user(plan: ExecPlan) -> ExecPlan:
    """``plan`` with its ``user`` looked up in the container's own passwd and group files
    (read beneath its root: a symlink cannot lead to the host's)."""
    texts = []
    for path in ("/etc/passwd", "/etc/group"):
        raw = beneath.read_beneath_root(path)
        texts.append((raw or b"").decode(errors="replace"))
    found = users.resolve_user(plan.user, *texts)
    return dataclasses.replace(
        plan, uid=found.uid, gid=found.gid, additional_gids=list(found.additional_gids)
    )


def _close_fds_but(*keep: int) -> None:
    """Close every fd above 2 but ``keep`` (the supervisor's sockets must not reach exec)."""
    low = 3
    for fd in sorted(k for k in set(keep) if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def run_exec(
    plan: ExecPlan,
    handles: Sequence[int],
    status: socket.socket,
    stdio: Sequence[int],
    mask: Iterable[int] = (),
    *,
    cgroup: Iterable[int] = (),
) -> NoReturn:
    """Run ``plan`` in the container whose init handed its supervisor ``handles``
    (:func:`open_handles`); never returns.

    Joins the container's cgroup first thing, through ``cgroup``: the files
    :func:`open_cgroup` opened in the supervisor.

    Forked by the supervisor with every signal blocked (``mask`` is the mask to
    restore). Leads a process group and session of its own, so that a timeout
    can kill what it forks. On ``status`` (close-on-exec) it sends the pty
    master when the plan has a terminal, then an error, or nothing: end of
    stream means the program runs.
    """
    try:
        join_cgroup_fds(cgroup)
        _default_signals(mask)
        os.setsid()
        syscalls.prctl(abi.PR_SET_DUMPABLE, 0)  # as the init: no ptrace before exec
        syscalls.join_new_session_keyring()
        _close_fds_but(status.fileno(), *stdio, *handles)
        syscalls.set_process_name(EXEC_PROCESS_NAME)
        seccomp_program = _seccomp_program(plan)
        # Not the container's /proc, which it may lack or fake: for the user, the terminal
        # and HOME (/etc/passwd), read beneath its root through our fd table.
        beneath.open_fd_table()
        _join_init(handles)
        if plan.user:
            plan = _resolve_user(plan)
        executable = find_executable(plan.args[0], plan.env, plan.cwd)
        tty_slave = None
        if plan.terminal:
            # In the container's mount namespace: a pty of its own devpts instance.
            master, tty_slave = mounts.open_pty()
            _size_terminal(tty_slave, plan)
            try:
                channel.send(status, Progress("pty"), [master])
            finally:
                os.close(master)
        _become(plan, executable, stdio, tty_slave, seccomp_program)
    except BaseException as exc:
        try:
            channel.send(status, error_progress(exc))
        finally:
            os._exit(127)


def run_agent(
    plan: ExecPlan,
    handles: Sequence[int],
    sock: socket.socket,
    mask: Iterable[int] = (),
    board: mmap.mmap | None = None,
) -> NoReturn:
    """Be the exec agent of the container whose init handed its supervisor ``handles``
    (:func:`open_handles`); never returns.

    Forked by the supervisor with every signal blocked (``mask`` is the mask
    to restore). Joins the init's namespaces and root and becomes ``plan``'s
    process (user, capabilities, no_new_privs, seccomp; not its cwd) once, then
    reports ``ready`` on ``sock`` and serves: for each :class:`ExecPlan` (its
    stdin, stdout and stderr alongside) it changes to the plan's cwd and
    spawns the program (:func:`_spawn`: ``vfork``, so no copy of this process
    to make or tear down) as the leader of a session of its own, and reports
    ``spawned`` with its pid, or the error. It reaps what it spawned and
    reports each exit (``exited``: pid, returncode). The supervisor moves it
    into the container's cgroup for each spawn only. End of stream, or the
    supervisor's death (``PR_SET_PDEATHSIG``), ends it. On ``board`` (shared
    memory, :data:`AGENT_BOARD` words) it counts the spawns it began and ended,
    with the last pid: if it dies without an answer, the supervisor knows
    whether it spawned. See decision 31.
    """
    parent = os.getppid()
    try:
        # Imported here, from the host's files, before we enter the container's root:
        # not by the fork server, whose every child would run threading's at-fork handler.
        import subprocess  # noqa: F401  (for _spawn)

        _default_signals(mask)
        os.setsid()
        syscalls.prctl(abi.PR_SET_DUMPABLE, 0)  # as the init: no ptrace, no /proc/PID/mem
        syscalls.join_new_session_keyring()  # (its spawns share it; not the caller's)
        _close_fds_but(sock.fileno(), *handles)
        syscalls.set_process_name(AGENT_PROCESS_NAME)
        seccomp_program = _seccomp_program(plan)
        beneath.open_fd_table()  # ours, not the container's /proc (HOME's /etc/passwd)
        _join_init(handles)
        _apply_process(plan, seccomp_program, chdir=False)
        settings = _inherited_settings()
        syscalls.prctl(abi.PR_SET_DUMPABLE, 0)  # a uid change may have reset it
        syscalls.prctl(abi.PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change
        if os.getppid() != parent:
            os._exit(0)  # the supervisor is gone already
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        channel.send(sock, Progress("ready"))
    except BaseException as exc:
        try:
            channel.send(sock, error_progress(exc))
        finally:
            os._exit(127)
    _serve_agent(sock, wake_r, board, settings)


def _inherited_settings() -> tuple[object, ...]:
    """What a process we spawn inherits that another process of the container's user
    may change in us and the spawned one could not change back (``renice``, ``prlimit``,
    ``chrt``, ``ionice``, a raised ``oom_score_adj``; not the CPU affinity, which moving
    between cpusets changes and any process may set for itself within its cpuset)."""
    return (
        os.getpriority(os.PRIO_PROCESS, 0),
        os.sched_getscheduler(0),
        os.sched_getparam(0).sched_priority,
        syscalls.ioprio_get(),
        *(resource.getrlimit(limit) for limit in _RLIMITS),
        _oom_score_adj(),
    )


def _oom_score_adj() -> int | None:
    """Our ``oom_score_adj`` (``None`` without a ``/proc`` to read it in)."""
    try:
        with open("/proc/self/oom_score_adj", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


#: Every resource limit.
_RLIMITS = tuple(abi.RLIMIT_NUMBERS.values())


def _serve_agent(
    sock: socket.socket, wake: int, board: mmap.mmap | None, settings: tuple[object, ...]
) -> NoReturn:
    """The agent's loop: spawn what the supervisor asks for, report every exit. A spawn
    while what it would inherit is no longer ``settings`` (the container changed them in
    us) fails: the slow way runs it, with the spec's, and no agent serves any more."""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "request")
    selector.register(wake, selectors.EVENT_READ, "wake")
    taken = 0
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "wake":
                    _report_exits(sock, wake)
                    continue
                try:
                    plan, stdio = channel.receive(sock, ExecPlan)
                except channel.ChannelClosedError:
                    os._exit(0)
                taken += 1
                try:
                    if _inherited_settings() != settings:
                        raise OSError(errno.EPERM, "the container changed the exec agent")
                    pid = _spawn(plan, stdio, functools.partial(_mark, board, 0, taken))
                    _mark(board, 2, pid)
                    _mark(board, 1, taken)
                except Exception as exc:
                    channel.send(sock, error_progress(exc))
                else:
                    channel.send(sock, Progress("spawned", details={"pid": pid}))
                finally:
                    channel.close_fds(stdio)
    except BaseException:
        os._exit(1)  # the supervisor sees end of stream


#: The words of an agent's board (8 bytes each): spawns begun, spawns done, last pid.
AGENT_BOARD = 3


def _mark(board: mmap.mmap | None, word: int, value: int) -> None:
    if board is not None:
        board[word * 8 : word * 8 + 8] = value.to_bytes(8, "little")


def _report_exits(sock: socket.socket, wake: int) -> None:
    while True:
        try:
            if not os.read(wake, 4096):
                break
        except BlockingIOError:
            break
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        channel.send(sock, Progress("exited", details={"pid": pid, "returncode": code}))


def _spawn(plan: ExecPlan, stdio: Sequence[int], begin: Callable[[], None]) -> int:
    """Spawn ``plan``'s program with ``stdio`` as its fds 0-2 (no other fd); its pid.
    ``begin`` is called just before the spawn itself.

    ``subprocess`` spawns with ``vfork`` here (no ``preexec_fn``, user or
    groups), and resets every signal handler: glibc's ``posix_spawn`` would
    leave its internal signals (32, 33) ignored in the program.
    """
    beneath.chdir_beneath_root(plan.cwd)  # as the plan's user, as an exec'd process does
    executable = find_executable(plan.args[0], plan.env, plan.cwd)
    env = _program_env(plan, os.getuid())  # (a spawn's plan says nothing of the user)
    stdin, stdout, stderr = stdio
    import subprocess  # imported by run_agent, before it entered the container's root

    begin()
    child = subprocess.Popen(
        plan.args,
        executable=executable,
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )
    child.returncode = 0  # reaped by _report_exits, never by subprocess
    return child.pid
