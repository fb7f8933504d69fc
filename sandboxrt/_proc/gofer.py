"""The gofer: one per container, the only way the file API reaches the container's files.

Started like a sandbox: a child of the fork server (:func:`serve_here`), or
a fresh stdlib-only interpreter whose :func:`main` forks the gofer, names it
to the library (``Launched``) and exits. Started with its container, it first
gets ``GoferPrepare``: still privileged, in the host's mount namespace, it opens
the container's rootfs and bind sources as detached mounts and sends them back
(the library hands them to the sandbox). Then it enters a mount namespace of its
own (every mount private), keeps only the capabilities that serving files as the
container's user needs (:data:`KEPT_CAPABILITIES`), sets ``no_new_privs`` and is
not dumpable. ``GoferStart`` (the first message of a gofer started for an existing
container) brings a pidfd of the sandbox's supervisor and its listening socket; at
the first request it asks the supervisor for an ``O_PATH`` fd of the container's
root as the container sees it (its spec mounts included). It serves
``FileRequest``s until the supervisor exits.

Every path is resolved beneath that root (:func:`beneath.open_beneath`:
``openat2`` with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS``); mutations
happen relative to the resolved parent's fd. Opened regular files go back to
the library as fds; directory fds never leave this process (``..`` from
one could climb above the root): listings and tree walks happen here.
Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import posixpath
import resource
import selectors
import signal
import socket
import stat
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn, TypeVar

from sandboxrt._core import abi
from sandboxrt._core.file_protocol import (
    OPEN_FLAGS,
    FileReply,
    FileRequest,
    FileStat,
    GoferPrepare,
    GoferStart,
    WalkEntry,
)
from sandboxrt._core.protocol import Launched, Reply, Request
from sandboxrt._os import beneath, capabilities, channel, mounts, procfs, removal, syscalls
from sandboxrt._proc.entry import reset_inherited_signals

T = TypeVar("T")

__all__ = ["KEPT_CAPABILITIES", "PROCESS_NAME", "WARM_NAME", "main", "serve_here"]

#: The gofer's name in ``/proc/PID/comm``.
PROCESS_NAME = "sandboxrt-gofer"
#: The name of a gofer the fork server forked ahead, until a container takes it.
WARM_NAME = "sandboxrt-wgof"

#: The capabilities the gofer keeps: reading and writing any file of the container and
#: giving what it creates to the container's user. No ``CAP_SYS_ADMIN``, no ptrace, no net,
#: and no ``CAP_DAC_READ_SEARCH``: ``CAP_DAC_OVERRIDE`` passes every permission check it
#: would, and it alone allows ``open_by_handle_at``, which opens any file of a filesystem
#: (the host's too, if the container's root is on it) from any fd on it.
KEPT_CAPABILITIES = (
    abi.CAP_CHOWN,
    abi.CAP_DAC_OVERRIDE,
    abi.CAP_FOWNER,
    abi.CAP_FSETID,
)


#: Kept until ``GoferStart`` too: to take the container user's ids as saved ids, then
#: drop these from the bounding set (:func:`_take_user`).
_UNTIL_START = (abi.CAP_SETUID, abi.CAP_SETGID, abi.CAP_SETPCAP)


def _confine() -> None:
    """Own mount namespace (all private) whose root holds only ``/proc`` (no host file in
    sight: what we need of the host comes as fds), only :data:`KEPT_CAPABILITIES` (and,
    until ``GoferStart``, :data:`_UNTIL_START`), no_new_privs."""
    syscalls.unshare(abi.CLONE_NEWNS)
    syscalls.mount(None, "/", None, abi.MS_REC | abi.MS_PRIVATE)
    mounts.confine_to_proc()
    # May wait for an RCU grace period: we have nothing else to do until GoferStart.
    mounts.detach_old_root()
    capabilities.drop_bounding((*KEPT_CAPABILITIES, *_UNTIL_START))
    kept = capabilities.mask((*KEPT_CAPABILITIES, *_UNTIL_START))
    syscalls.capset(kept, kept, 0)
    syscalls.ambient_clear_all()
    syscalls.prctl(abi.PR_SET_NO_NEW_PRIVS, 1)


def _take_user(uid: int, gid: int, *, mapped: bool) -> None:
    """For a sandbox with a user namespace and a PID namespace of its own (``mapped``),
    make the container user's host ids our saved ids: we may switch our filesystem ids
    between theirs and ours (:meth:`Files.creating`), and to no other. (Those ids may
    then signal us, as they could any process of theirs: only the sandbox's, which do
    not see us.) Then drop what allowed it."""
    if mapped:
        os.setresgid(-1, -1, gid)
        os.setresuid(-1, -1, uid)
    capabilities.drop_bounding(KEPT_CAPABILITIES)  # (CAP_SETPCAP last)
    kept = capabilities.mask(KEPT_CAPABILITIES)
    syscalls.capset(kept, kept, 0)


_O_DIR = os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


def _is_symlink(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode)
    except OSError:
        return False


class _Parent(NamedTuple):
    """The directory an entry is made or removed in: an ``O_PATH`` fd, its ``stat``; the
    entry's name, and whether the path ended in a slash (then it must be a directory)."""

    fd: int
    st: os.stat_result
    name: str
    slash: bool


def _split(path: str) -> tuple[str, str, bool]:
    """``path``'s parent as given (the kernel resolves it, as it would for the container's
    processes: ``..`` after a symlink is the parent of its target, never a lexical step
    back), its last name, and whether a slash followed that name."""
    trimmed = path.rstrip("/")
    parent, name = posixpath.split(trimmed)
    if not name:
        raise OSError(errno.EINVAL, "the container's root itself", path)
    if name in (".", ".."):  # (as ``rm`` refuses them)
        raise OSError(errno.EINVAL, "a path ending in . or .. names no entry", path)
    return parent or ("/" if trimmed.startswith("/") else "."), name, trimmed != path


class Files:
    """The file operations, beneath one root fd, creating as ``uid:gid``. ``root`` is the
    fd, or what fetches it at the first operation (the gofer asks the supervisor then)."""

    def __init__(self, root: int | Callable[[], int], uid: int, gid: int) -> None:
        self._root = root
        self.uid = uid
        self.gid = gid

    def creating(self, make: Callable[[], T]) -> T:
        """``make()`` (which creates a file). In a filesystem a user namespace owns (a
        tmpfs the container mounted), the kernel refuses a new file whose owner that
        namespace does not map (``EOVERFLOW``), ours (the host's root) among them: then
        again, as the container process's user (our filesystem ids), with our
        capabilities kept."""
        try:
            return make()
        except OSError as err:
            if err.errno != errno.EOVERFLOW:
                raise
        effective, permitted, inheritable = syscalls.capget()
        syscalls.set_fs_ids(self.uid, self.gid)
        try:
            syscalls.capset(effective, permitted, inheritable)  # (leaving 0 dropped some)
            return make()
        finally:
            syscalls.set_fs_ids(0, 0)
            syscalls.capset(effective, permitted, inheritable)

    @property
    def root(self) -> int:
        if not isinstance(self._root, int):
            self._root = self._root()
        return self._root

    def resolve(self, path: str, *, follow: bool = True) -> int:
        return beneath.open_beneath(self.root, path, follow=follow)

    def parent(self, path: str) -> _Parent:
        """``path``'s parent directory, resolved beneath the root (close its ``fd``)."""
        parent, name, slash = _split(path)
        fd = self.resolve(parent)
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), parent)
        return _Parent(fd, st, name, slash)

    def group_in(self, parent: _Parent) -> int:
        """The group of what is made in ``parent``: a set-group-ID directory's own, as the
        kernel gives it to what the container's processes make there; else the user's."""
        return parent.st.st_gid if parent.st.st_mode & stat.S_ISGID else self.gid

    def _regular(self, fd: int, flags: int, path: str) -> int:
        """Reopen ``O_PATH`` ``fd`` with ``flags`` if it is a regular file (closes ``fd``)."""
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            if syscalls.filesystem_type(fd) in beneath.KERNEL_FILESYSTEMS:
                # (The sandbox's processes' settings, /proc/1/oom_score_adj say: the
                # gofer's privileges would write what the container's may not.)
                raise OSError(errno.EACCES, "a file of procfs or sysfs is not served", path)
            # Never blocking: a lease the container holds on the file is not waited out
            # (the lease-break time, 45 s by default, with every other request waiting).
            opened = beneath.reopen(fd, flags | os.O_NONBLOCK)
            if not flags & os.O_NONBLOCK:
                os.set_blocking(opened, True)
            return opened
        finally:
            os.close(fd)

    def open(self, request: FileRequest) -> int:
        flags = request.flags & OPEN_FLAGS
        path = request.path
        for _ in range(8):  # a file appearing between the lookup and the creation: again
            try:
                fd = self.resolve(path)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
            else:
                if flags & os.O_CREAT and flags & os.O_EXCL:
                    os.close(fd)
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
                return self._regular(fd, flags & ~(os.O_CREAT | os.O_EXCL), path)
            parent = self.parent(path)
            try:
                if parent.slash:  # (as open(2) says of a new file named with one)
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
                group = self.group_in(parent)
                created = self.creating(
                    functools.partial(
                        os.open,
                        parent.name,
                        flags | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
                        request.mode & 0o7777,
                        dir_fd=parent.fd,
                    )
                )
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                if _is_symlink(parent.fd, parent.name):
                    raise FileExistsError(
                        errno.EEXIST, "a symlink to nothing is in the way", path
                    ) from None
                continue
            finally:
                os.close(parent.fd)
            try:
                os.fchown(created, self.uid, group)
                os.fchmod(created, request.mode & 0o7777)  # chown cleared set-id bits
            except BaseException:
                os.close(created)
                raise
            return created
        raise OSError(errno.EAGAIN, "the path kept changing", path)

    def stat(self, request: FileRequest) -> FileStat:
        fd = self.resolve(request.path, follow=request.follow)
        try:
            return FileStat.from_os(os.fstat(fd))
        finally:
            os.close(fd)

    def _directory(self, path: str) -> int:
        """``path`` opened for reading as a directory (never leaves this process)."""
        fd = self.resolve(path)
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            return beneath.reopen(fd, os.O_RDONLY | os.O_DIRECTORY)
        finally:
            os.close(fd)

    def listdir(self, request: FileRequest) -> list[str]:
        fd = self._directory(request.path)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def _mkdir_one(self, path: str, mode: int) -> None:
        if posixpath.basename(path.rstrip("/")) in (".", ".."):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        parent = self.parent(path)
        name, at = parent.name, parent.fd
        try:
            if parent.st.st_mode & stat.S_ISGID:
                mode |= stat.S_ISGID  # (a new directory keeps the bit, as mkdir(2) gives it)
            # Made with no permission at all, then given away through an fd of it, checked
            # to be that empty directory: by name, the container could swap another one in
            # (one root owns) between the two, and have it given to its user.
            self.creating(lambda: os.mkdir(name, 0, dir_fd=at))
            made = os.open(name, os.O_RDONLY | _O_DIR, dir_fd=at)
            try:
                st = os.fstat(made)
                # (Empty, by its listing: some filesystems count no links of directories.)
                if stat.S_IMODE(st.st_mode) & ~stat.S_ISGID or os.listdir(made):
                    raise OSError(errno.EAGAIN, "the directory was swapped while made", path)
                try:
                    os.fchown(made, self.uid, self.group_in(parent))
                    os.fchmod(made, mode)
                except BaseException:
                    removal.remove_if_same(at, name, st)  # (no mode-000 directory of root's left)
                    raise
            finally:
                os.close(made)
        finally:
            os.close(at)

    def mkdir(self, request: FileRequest) -> None:
        mode = request.mode & 0o7777
        if not request.parents:
            self._mkdir_one(request.path, mode)
            return
        # One component at a time, as ``mkdir -p``: the missing parents get ``parent_mode``.
        parts = [p for p in request.path.split("/") if p not in ("", ".")]
        for i in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:i])
            try:
                fd = self.resolve(prefix)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    self._mkdir_one(prefix, mode if i == len(parts) else request.parent_mode)
                fd = self.resolve(prefix)
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    raise FileExistsError(errno.EEXIST, "exists and is not a directory", prefix)
            finally:
                os.close(fd)

    def remove(self, request: FileRequest) -> None:
        parent = self.parent(request.path)
        name, at = parent.name, parent.fd
        try:
            removal.refuse_mount_point(at, name, request.path)
            st = os.lstat(name, dir_fd=at)
            if not stat.S_ISDIR(st.st_mode):
                if parent.slash:  # (``rm file/`` too)
                    raise NotADirectoryError(
                        errno.ENOTDIR, os.strerror(errno.ENOTDIR), request.path
                    )
                os.unlink(name, dir_fd=at)
            elif request.recursive:
                removal.remove_tree(at, name)
            else:
                os.rmdir(name, dir_fd=at)
        finally:
            os.close(at)

    def symlink(self, request: FileRequest) -> None:
        parent = self.parent(request.path)
        name, at = parent.name, parent.fd
        try:
            if parent.slash:  # (as ``ln -s``)
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), request.path)
            self.creating(lambda: os.symlink(request.target, name, dir_fd=at))
            # Given away through an fd of it, checked to be a symlink (by name, the
            # container could swap a file root owns in, and have it given to its user).
            made = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at)
            try:
                if not stat.S_ISLNK(os.fstat(made).st_mode):
                    raise OSError(errno.EAGAIN, "the symlink was swapped while made", request.path)
                syscalls.chown_fd(made, self.uid, self.group_in(parent))
            finally:
                os.close(made)
        finally:
            os.close(at)

    def walk(self, request: FileRequest) -> list[WalkEntry]:
        """Every entry below a directory, parents first; symlinks are listed, not followed."""
        entries: list[WalkEntry] = []
        top = self._directory(request.path)
        todo = [("", top)]
        try:
            while todo:
                prefix, fd = todo.pop()
                try:
                    for entry in sorted(os.scandir(fd), key=lambda e: e.name):
                        rel = prefix + entry.name
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISLNK(st.st_mode):
                            target = os.readlink(entry.name, dir_fd=fd)
                            entries.append(WalkEntry(rel, "symlink", st.st_mode, target))
                        elif stat.S_ISDIR(st.st_mode):
                            entries.append(WalkEntry(rel, "dir", st.st_mode))
                            try:
                                sub = os.open(entry.name, os.O_RDONLY | _O_DIR, dir_fd=fd)
                            except OSError:  # replaced meanwhile (by a symlink, say): skipped
                                continue
                            todo.append((rel + "/", sub))
                        elif stat.S_ISREG(st.st_mode):
                            entries.append(WalkEntry(rel, "file", st.st_mode))
                        else:
                            entries.append(WalkEntry(rel, "other", st.st_mode))
                finally:
                    os.close(fd)
        finally:
            channel.close_fds([fd for _, fd in todo])
        return entries


def handle(files: Files, request: FileRequest) -> tuple[FileReply, list[int]]:
    """Serve one request: its reply, and the fd that goes with it (``open``)."""
    if "\0" in request.path or "\0" in (request.target or ""):  # C strings end there
        return FileReply(False, error="a path holds a NUL byte", errno=errno.EINVAL), []
    try:
        if request.op == "open":
            return FileReply(True), [files.open(request)]
        if request.op == "stat":
            return FileReply(True, stat=files.stat(request)), []
        if request.op == "listdir":
            return FileReply(True, names=files.listdir(request)), []
        if request.op == "walk":
            return FileReply(True, entries=files.walk(request)), []
        if request.op == "mkdir":
            files.mkdir(request)
        elif request.op == "remove":
            files.remove(request)
        elif request.op == "symlink":
            files.symlink(request)
        return FileReply(True), []
    except OSError as exc:
        error, number = exc.strerror or str(exc), exc.errno or 0
        return FileReply(False, error=error, errno=number, no_root=isinstance(exc, NoRootError)), []
    except Exception as exc:
        return FileReply(False, error=f"{type(exc).__name__}: {exc}"), []


def _serve(files: Files, listener: socket.socket, ends: Sequence[int]) -> NoReturn:
    """Serve ``FileRequest``s until one of the pidfds ``ends`` (the supervisor's, maybe
    the container init's) is readable: the container is gone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # (removing a tree holds an fd per level, and the container sets depth)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "listen")
    for pidfd in ends:
        selector.register(pidfd, selectors.EVENT_READ, "end")
    while True:
        for key, _ in selector.select():
            if key.data == "end":
                os._exit(0)  # the sandbox or the container's init is gone: so is the container
            if key.data == "listen":
                with contextlib.suppress(OSError):
                    accepted, _ = listener.accept()
                    selector.register(accepted, selectors.EVENT_READ, "conn")
                continue
            conn = key.fileobj
            if not isinstance(conn, socket.socket):
                continue
            try:
                request, fds = channel.receive(conn, FileRequest)
            except (OSError, ValueError):  # ChannelClosedError included
                selector.unregister(conn)
                conn.close()
                continue
            channel.close_fds(fds)
            reply, sent = handle(files, request)
            try:
                channel.send(conn, reply, sent)
            except (OSError, ValueError) as exc:
                with contextlib.suppress(OSError):
                    channel.send(conn, FileReply(False, error=f"cannot reply: {exc}"))
            finally:
                channel.close_fds(sent)


def _prepare(bootstrap: socket.socket, request: GoferPrepare) -> None:
    """Open the container's rootfs and bind sources as detached mounts, on the host's
    side (we are still privileged, in the host's mount namespace), and send them back."""
    try:
        trees = mounts.open_host_trees((str(path), bool(rec)) for path, rec in request.sources)
    except OSError as exc:
        channel.send(bootstrap, FileReply(False, error=str(exc), errno=exc.errno or 0))
        return
    try:
        channel.send_many(bootstrap, FileReply(True), trees)
    finally:
        channel.close_fds(trees)


def _fetch_root(start: GoferStart, runtime_dir: int, supervisor: int) -> tuple[int, int]:
    """The container's root (``O_PATH``) and a pidfd of its init, from its supervisor (a
    ``root`` request on its control socket, in the ``runtime_dir`` we hold an fd of),
    which must be the process of the pidfd ``supervisor``: whatever else listens there
    gets no request of ours, and gives us no root."""
    name = os.path.basename(start.control_socket)
    try:
        with channel.connect(f"/proc/self/fd/{runtime_dir}/{name}", timeout=10.0) as conn:
            if channel.peer_pid(conn) != procfs.pidfd_pid(supervisor):
                raise OSError(errno.EPERM, "the control socket is not the supervisor's")
            channel.send(conn, Request("root", start.container_id))
            reply, fds = channel.receive(conn, Reply)
    except (ConnectionError, FileNotFoundError) as exc:  # (it is gone, or going)
        raise NoRootError(errno.ESRCH, f"no root from the supervisor: {exc}") from exc
    if not reply.ok or len(fds) != 2:
        channel.close_fds(fds)
        raise NoRootError(errno.ESRCH, f"no root from the supervisor: {reply.error}")
    return fds[0], fds[1]


class NoRootError(OSError):
    """The container's root could not be had from its supervisor."""


def _root_only(start: GoferStart, runtime_dir: int, supervisor: int) -> int:
    """:func:`_fetch_root`'s root (its init is watched through the supervisor's exit)."""
    root, init = _fetch_root(start, runtime_dir, supervisor)
    os.close(init)
    return root


def _run(bootstrap: socket.socket) -> NoReturn:
    problem: BaseException | None = None
    try:
        syscalls.prctl(abi.PR_SET_DUMPABLE, 0)  # the container must not reach into us
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.umask(0)  # requests carry the exact modes
    except Exception as exc:
        problem = exc
    try:
        first, fds = channel.receive_one_of(bootstrap, GoferPrepare, GoferStart)
        syscalls.set_process_name(PROCESS_NAME)  # a container's from now on
        if isinstance(first, GoferPrepare):
            channel.close_fds(fds)
            _prepare(bootstrap, first)
    except BaseException:
        os._exit(0)  # the creation failed or was abandoned
    if problem is None:
        try:
            _confine()
        except Exception as exc:
            problem = exc
    try:
        if not isinstance(first, GoferStart):
            first, fds = channel.receive(bootstrap, GoferStart)
    except BaseException:
        os._exit(0)  # the creation failed or was abandoned
    bootstrap.close()
    if not isinstance(first, GoferStart) or len(fds) != 4:
        os._exit(1)
    supervisor, listen_fd, log_fd, runtime_dir = fds
    os.dup2(log_fd, 2)
    os.close(log_fd)
    if problem is None:
        try:
            _take_user(first.uid, first.gid, mapped=first.mapped)
        except Exception as exc:
            problem = exc
    if problem is not None:
        print(f"{PROCESS_NAME}: {type(problem).__name__}: {problem}", file=sys.stderr)
        os._exit(1)
    listener = socket.socket(fileno=listen_fd)
    start = first
    ends = [supervisor]
    root: int | Callable[[], int] = functools.partial(_root_only, start, runtime_dir, supervisor)
    if start.watch_init:  # a subcontainer's: we end with its init
        try:
            root, init = _fetch_root(start, runtime_dir, supervisor)
        except OSError:
            os._exit(0)  # it is gone already: so is what we would serve
        ends.append(init)
    _serve(Files(root, first.uid, first.gid), listener, ends)


def serve_here(bootstrap_fd: int, *, warm: bool = False) -> NoReturn:
    """Be the gofer in this process (a child of the fork server, which reaps it, or of
    :func:`main`): name ourselves to the library first. ``warm``: forked ahead, it waits
    under the name :data:`WARM_NAME` until a container takes it."""
    bootstrap = socket.socket(fileno=bootstrap_fd)
    os.set_inheritable(bootstrap_fd, False)
    if warm:
        syscalls.set_process_name(WARM_NAME)
    info = procfs.read_stat(os.getpid())
    try:
        channel.send(bootstrap, Launched(os.getpid(), info.start_ticks if info is not None else 0))
        _run(bootstrap)
    finally:
        os._exit(1)


def main(bootstrap_fd: int) -> NoReturn:
    """Entry point of a fresh interpreter: fork the gofer, which names itself to the
    library (``Launched``, before any reply), and exit (so that the launcher can wait
    for the launched process)."""
    reset_inherited_signals()
    try:
        pid = os.fork()
    except BaseException:
        os._exit(1)
    if pid == 0:
        serve_here(bootstrap_fd)
    os._exit(0)
