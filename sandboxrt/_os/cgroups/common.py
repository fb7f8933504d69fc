"""What the cgroup v1 and v2 drivers share.

File access with errors mapped to :class:`SystemCallError`, directory creation
that records which levels it made, removal with retries on ``EBUSY``, process
listing, the freeze-kill-thaw loop, and the serialisable record of a cgroup.

Parent levels that sandboxrt creates (such as ``/sandboxrt`` above every
default cgroup) are shared by many containers, so each is marked with the
extended attribute :data:`PARENT_XATTR`. Destroying a cgroup removes the
levels it created and then every marked parent left empty, whichever
container made it: when the last container is gone, no parent is left.
With ``keep_parents`` the parents' removal is put off until
:func:`release_parents` (called at the process's exit): a process making
container after container does not remove and remake them each time.
Unmarked levels that existed before are never removed. Where the mark cannot
be set (no ``trusted.*`` xattrs without ``CAP_SYS_ADMIN``), a parent is
removed only by the cgroup that created it, if empty by then.

Writes create missing files only where the filesystem allows it: on cgroupfs
a missing control file stays missing (``ENOENT``), while a fake tree of plain
directories (used by the tests) simply gains the file. Standard library only.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import errno
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from sandboxrt._os.cgroup_marks import (
    LOST_XATTR,
    OWNER_XATTR,
    PARENT_XATTR,
    owner_of,
    release_owner,
)
from sandboxrt._os.exiting import call_at_exit
from sandboxrt.errors import MissingFeatureError, SpecError, SystemCallError

from .layout import CgroupLayout, Hierarchy
from .resources import CpuResources, Resources, ResourcesLike, as_resources

__all__ = [
    "TRANSIENT_SCOPE_PREFIX",
    "UNLIMITED",
    "Cgroup",
    "CgroupStats",
    "Placement",
    "WriteJournal",
    "block_device_errors",
    "burst_before_quota",
    "read_file",
    "read_int",
    "read_keyed",
    "read_optional",
    "release_parents",
    "write_file",
    "write_lines",
    "write_newer_cpu_settings",
    "write_newer_file",
]

#: Values at or above this are "no limit" (v1 reports 2**63 rounded down to a page).
UNLIMITED = 1 << 62
_MAX_DELAY = 0.2
#: The name of a default path's store level starts with this for a store nothing will
#: use again once its process ends (a ``MemoryStore``): that level is not kept for the
#: next container (``keep_parents``), but removed with its last one, as no later process
#: would ever remove it.
TRANSIENT_SCOPE_PREFIX = "mem-"
#: How often creation starts over when a parent level vanished under it.
_MAKE_ATTEMPTS = 8
#: Parent directories whose removal was put off (``keep_parents``), each with its level
#: (its path below the hierarchy's root) and whether this process created it (else it
#: goes only if marked), for :func:`release_parents`; the one put off last comes last.
_PUT_OFF: dict[Path, tuple[PurePosixPath, bool]] = {}

#: How many levels stay put off, in every hierarchy: the top one and those of the stores
#: used last, not one per store a process ever used (a test harness making a store per
#: test piled them up, a memory cgroup each).
_KEPT_LEVELS = 4


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """Usage counters of a cgroup; ``None`` limits are unlimited or unknown."""

    cpu_usage_ns: int = 0
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    memory_usage: int = 0
    memory_limit: int | None = None
    memory_max_usage: int | None = None
    memory_failcnt: int = 0
    pids_current: int = 0
    pids_limit: int | None = None
    #: Processes of the cgroup the kernel's OOM killer killed (its memory limit reached).
    oom_kills: int = 0


# -- files -------------------------------------------------------------------------------


def write_file(directory: Path, name: str, value: str | int) -> None:
    """Write ``value`` to the control file ``name`` of the cgroup ``directory`` in one write."""
    write_lines(directory, [(name, value)])


def write_newer_file(
    directory: Path, names: str | Sequence[str], value: str | int, *, field: str = ""
) -> None:
    """:func:`write_file` to a control file a kernel may lack (or to the first of
    ``names`` it has: a setting whose file some kernels name otherwise); where it has
    none, :class:`MissingFeatureError` naming them, and the spec's ``field`` they serve."""
    candidates = [names] if isinstance(names, str) else list(names)
    for name in candidates:
        if (directory / name).exists():
            write_file(directory, name, value)
            return
    named = " or ".join(candidates)
    feature = f"{field} ({named})" if field else named
    raise MissingFeatureError(feature, f"the cgroup {directory} has no {named} on this kernel")


def write_newer_cpu_settings(directory: Path, burst_file: str, cpu: CpuResources) -> None:
    """``cpu.burst`` (to ``burst_file``: v1 and v2 name it apart) and ``cpu.idle``, files
    older kernels lack (:func:`write_newer_file`); an idle of 0, the default, is skipped
    where there is no file."""
    for name, key, value in ((burst_file, "burst", cpu.burst), ("cpu.idle", "idle", cpu.idle)):
        if value is None or (value == 0 and not (directory / name).exists()):
            continue
        write_newer_file(directory, name, value, field=f"linux.resources.cpu.{key}")


def burst_before_quota(directory: Path, burst_file: str, cpu: CpuResources) -> None:
    """A new burst written ahead of a new quota too (:func:`write_newer_cpu_settings`
    writes it after): the kernel refuses a quota below the burst in force and a burst
    above the quota in force, so one of the two writes goes through (as runc's)."""
    if cpu.burst is None or cpu.quota is None or not (directory / burst_file).exists():
        return
    with contextlib.suppress(SystemCallError):
        write_file(directory, burst_file, cpu.burst)


@contextlib.contextmanager
def block_device_errors() -> Iterator[None]:
    """Writing ``linux.resources.blockIO`` settings: a device the kernel does not know
    (``ENODEV``) is the spec's error, one whose I/O scheduler has no weights
    (``EOPNOTSUPP``) a missing feature; both named so."""
    try:
        yield
    except SystemCallError as err:
        if err.errno == errno.ENODEV:
            raise SpecError([("linux.resources.blockIO", f"no such block device: {err}")]) from err
        if err.errno == errno.EOPNOTSUPP:
            raise MissingFeatureError(
                "linux.resources.blockIO weights for that device", str(err)
            ) from err
        raise


class WriteJournal:
    """What the control files written while :meth:`recording` held before, for
    :meth:`undo` to give back (an update of a live cgroup that fails half-way)."""

    #: Files whose writes are not the limits' own: ``cgroup.subtree_control`` of the
    #: levels above (a controller enabled there stays, as at creation).
    NOT_NOTED = frozenset({"cgroup.subtree_control"})

    def __init__(self) -> None:
        #: Each file written, with what it held before its first write, in the order of
        #: their last writes.
        self._before: dict[Path, str] = {}

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Note, in the block, what each control file held before its first write."""
        token = _JOURNAL.set(self)
        try:
            yield
        finally:
            _JOURNAL.reset(token)

    def note(self, path: Path) -> None:
        """``path`` is written now: what it holds, read at its first write (kept as the
        file's last write: :meth:`undo` goes from the last written back)."""
        if path.name in self.NOT_NOTED:
            return
        before = self._before.pop(path, None)
        if before is None:
            try:
                with open(path) as f:
                    before = f.read()
            except OSError:
                return  # (a write-only file, or none: nothing to give back)
        self._before[path] = before

    def undo(self) -> list[str]:
        """Give each file noted back what it held, a line a write (an empty one as a
        newline: v2's ``cpuset.cpus`` then inherits again), the last written first, going
        over those the kernel refused again while that gets any further (a quota and a
        burst, a memory and a memory+swap limit, may each need the other given back
        first); what could not be given back, as messages."""
        pending = [
            (path, [line for line in text.splitlines() if line.strip()] or ["\n"])
            for path, text in reversed(self._before.items())
        ]
        while True:
            refused, errors = [], []
            for path, lines in pending:
                try:
                    write_lines(path.parent, [(path.name, line) for line in lines])
                except SystemCallError as err:
                    refused.append((path, lines))
                    errors.append(str(err))
            if len(refused) in (0, len(pending)):
                return errors
            pending = refused


#: The journal of the :meth:`WriteJournal.recording` block we are in, if any.
_JOURNAL: contextvars.ContextVar[WriteJournal | None] = contextvars.ContextVar(
    "sandboxrt_cgroup_journal", default=None
)


def write_lines(directory: Path, lines: Iterable[tuple[str, str | int]]) -> None:
    """Write each ``(name, value)`` in order, one write each, to the control files of the
    cgroup ``directory``, opening each file once (rules such as ``devices.allow`` take
    one line per write); in a :meth:`WriteJournal.recording` block, what each held before
    is noted first."""
    fds: dict[str, int] = {}
    journal = _JOURNAL.get()
    try:
        for name, value in lines:
            data = os.fsencode(str(value))  # (a spec's undecodable bytes stay bytes)
            try:
                fd = fds.get(name)
                if fd is None:
                    if journal is not None:
                        journal.note(directory / name)
                    fd = fds[name] = _open_control(directory / name)
                os.write(fd, data)
            except OSError as err:
                what = f"cgroup {directory}: writing {str(value)!r} to {name}"
                if name == "devices.deny" and err.errno == errno.EINVAL and _subdirs(directory):
                    # (v1 refuses to deny a device a child cgroup may use: runc fails alike)
                    what += " (it has child cgroups, which a deny must not leave more)"
                raise SystemCallError(what, err) from err
    finally:
        for fd in fds.values():
            os.close(fd)


def _open_control(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError as missing:
        try:  # a fake tree: create the file; cgroupfs refuses (EACCES)
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError:
            raise missing from None


def read_optional(directory: Path, name: str) -> str | None:
    """The content of a control file, or ``None`` when it does not exist."""
    try:
        with open(directory / name) as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise SystemCallError(f"cgroup {directory}: reading {name}", err) from err


def read_file(directory: Path, name: str) -> str:
    """The content of a control file that must exist."""
    text = read_optional(directory, name)
    if text is None:
        err = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        raise SystemCallError(f"cgroup {directory}: reading {name}", err)
    return text


def read_int(directory: Path, name: str) -> int | None:
    """An integer control file; ``None`` when missing, empty, ``max`` or unlimited."""
    text = (read_optional(directory, name) or "").strip()
    if not text or text == "max":
        return None
    value = int(text.split()[0])
    return None if value >= UNLIMITED else value


def read_keyed(directory: Path, name: str) -> dict[str, int]:
    """A flat keyed file (``key value`` lines) such as ``cpu.stat``; empty when missing."""
    result: dict[str, int] = {}
    for line in (read_optional(directory, name) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            result[key] = int(value)
    return result


def _subdirs(directory: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _rmdir(directory: Path, deadline: float, *, shared: bool) -> bool:
    """Remove one cgroup directory, retrying while it is busy.

    A ``shared`` level (a parent we created) that still has child cgroups is
    in use by someone else: it is left alone and ``False`` returned.
    """
    delay = 0.005
    while True:
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            return True
        except OSError as err:
            if err.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise SystemCallError(f"removing cgroup {directory}", err) from err
            children = _subdirs(directory)
            if shared and children:
                return False
            if err.errno == errno.ENOTEMPTY and not children:
                # A fake tree of plain files (cgroupfs says EBUSY, never ENOTEMPTY).
                for entry in os.scandir(directory):
                    os.unlink(entry.path)
                continue
            if time.monotonic() >= deadline:
                raise SystemCallError(f"removing cgroup {directory}", err) from err
            time.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)
        else:
            return True


def _remove_tree(directory: Path, deadline: float) -> None:
    """Remove a cgroup we own with every cgroup below it, deepest first."""
    try:
        os.rmdir(directory)  # the common case: no cgroup below, nothing in it
        return
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            raise SystemCallError(f"removing cgroup {directory}", err) from err
    for child in _subdirs(directory):
        _remove_tree(child, deadline)
    _rmdir(directory, deadline, shared=False)


def _parse_pids(text: str | None) -> Iterator[int]:
    return (int(line) for line in (text or "").split())


# -- the cgroup of one container ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """A cgroup's directory in one hierarchy, and the levels of it sandboxrt created."""

    mountpoint: Path
    controllers: frozenset[str]
    rel: PurePosixPath
    created: tuple[PurePosixPath, ...]

    @property
    def directory(self) -> Path:
        return self.mountpoint / self.rel

    def to_dict(self) -> dict[str, Any]:
        return {
            "mountpoint": str(self.mountpoint),
            "controllers": sorted(self.controllers),
            "path": str(self.rel),
            "created": [str(c) for c in self.created],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Placement:
        """Parse and check a record; raises ``ValueError`` when it is malformed."""
        if not isinstance(data, dict):
            raise ValueError("placement must be an object")
        mountpoint = data["mountpoint"]
        if not isinstance(mountpoint, str) or not mountpoint.startswith("/"):
            raise ValueError(f"mountpoint {mountpoint!r} is not absolute")
        rel = _below(data["path"])
        created = [_below(level) for level in data["created"]]
        for level in created:
            if level != rel and not rel.startswith(level + "/"):
                raise ValueError(f"created level {level} is not the cgroup or one of its parents")
        return cls(
            Path(mountpoint),
            frozenset(str(c) for c in data["controllers"]),
            PurePosixPath(rel),
            tuple(PurePosixPath(level) for level in created),
        )


def _below(path: Any) -> str:
    """``path`` of a record, a relative path with no ``..`` (normalised), or ``ValueError``."""
    if not isinstance(path, str):
        raise ValueError(f"cgroup path {path!r} is not a string")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if path.startswith("/") or ".." in parts or not parts:
        raise ValueError(f"cgroup path {path!r} is not below the mountpoint")
    return "/".join(parts)


def make_levels(
    mountpoint: Path,
    rel: PurePosixPath,
    *,
    before: Callable[[Path], None] | None = None,
    after: Callable[[Path], None] | None = None,
) -> tuple[PurePosixPath, ...]:
    """Create the missing levels of ``mountpoint/rel``; return those created, parents first.

    ``before(parent)`` runs for every parent level (existing or not) before
    its child is made; ``after(level)`` for every level this call created.
    Parent levels created are marked with :data:`PARENT_XATTR`. A parent
    removed meanwhile (the last other container under it was destroyed) makes
    the creation start over. On failure the levels already created are
    removed again.
    """
    if before is None and len(rel.parts) > 1:
        # The common case, parents in place: one mkdir.
        try:
            os.mkdir(mountpoint / rel, 0o755)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.EEXIST):
                raise SystemCallError(f"creating cgroup {mountpoint / rel}", err) from err
            if err.errno == errno.EEXIST:
                return ()
        else:
            if after is not None:
                after(mountpoint / rel)
            return (rel,)
    created: list[PurePosixPath] = []
    try:
        for attempt in range(1, _MAKE_ATTEMPTS + 1):
            try:
                _make_missing(mountpoint, rel, created, before, after)
                break
            except OSError as err:
                if err.errno != errno.ENOENT or attempt == _MAKE_ATTEMPTS:
                    raise
                if not mountpoint.is_dir():
                    raise
                created[:] = [level for level in created if (mountpoint / level).is_dir()]
    except BaseException:
        _remove_levels(mountpoint, rel, tuple(created), time.monotonic() + 1.0)
        raise
    return tuple(created)


def _make_missing(
    mountpoint: Path,
    rel: PurePosixPath,
    created: list[PurePosixPath],
    before: Callable[[Path], None] | None,
    after: Callable[[Path], None] | None,
) -> None:
    for depth in range(1, len(rel.parts) + 1):
        level = PurePosixPath(*rel.parts[:depth])
        if before is not None:
            before(mountpoint / level.parent)
        try:
            os.mkdir(mountpoint / level, 0o755)
        except FileExistsError:
            continue
        except OSError as err:
            raise SystemCallError(f"creating cgroup {mountpoint / level}", err) from err
        created.append(level)
        if level != rel:
            with contextlib.suppress(OSError):  # unmarked: removed by its creator only
                os.setxattr(mountpoint / level, PARENT_XATTR, b"1")
        if after is not None:
            after(mountpoint / level)


def _is_marked(directory: Path, mark: str = PARENT_XATTR) -> bool:
    """Whether ``directory`` carries ``mark`` (:data:`PARENT_XATTR`, :data:`LOST_XATTR`)."""
    try:
        return os.getxattr(directory, mark) == b"1"
    except OSError:
        return False


def _remove_levels(
    mountpoint: Path,
    rel: PurePosixPath,
    created: tuple[PurePosixPath, ...],
    deadline: float,
    *,
    keep_parents: bool = False,
    owner: str | None = None,
) -> None:
    """Remove the cgroup (if created, or marked and ``owner``'s: see
    :meth:`Cgroup.disown_created`) and then, upwards, each empty created or marked
    parent; with ``keep_parents``, the parents are left for :func:`release_parents`."""
    leaf = mountpoint / rel
    if _leaf_removable(leaf, rel, created, owner):
        _remove_tree(leaf, deadline)
    for level in rel.parents:
        if not level.parts:
            break  # the hierarchy's root
        directory = mountpoint / level
        if keep_parents and not level.name.startswith(TRANSIENT_SCOPE_PREFIX):
            _put_off(directory, level, level in created)
            continue
        if not _parent_removable(directory, level, created):
            break  # existed before sandboxrt: never removed
        if not _rmdir(directory, deadline, shared=True):
            break  # still holds other cgroups


def _leaf_removable(
    leaf: Path, rel: PurePosixPath, created: Sequence[PurePosixPath], owner: str | None
) -> bool:
    """Whether the cgroup itself goes: sandboxrt made it for this container, or another
    creation made it and lost it to ``owner`` (see :meth:`Cgroup.disown_created`)."""
    if rel in created:
        return True
    return owner is not None and _is_marked(leaf, LOST_XATTR) and owner_of(leaf) == owner


def _parent_removable(
    directory: Path, level: PurePosixPath, created: Sequence[PurePosixPath]
) -> bool:
    """Whether a cgroup's parent level ``directory`` goes once empty: sandboxrt made it
    (this cgroup's creation, or another's that marked it)."""
    return level in created or _is_marked(directory)


def _orphan_names(
    mountpoint: Path,
    rel: PurePosixPath,
    created: Sequence[PurePosixPath],
    keep_parents: bool,
    owner: str,
) -> list[str]:
    """What :func:`_remove_levels` would remove, bottom up, as names (each of a directory
    in the one above), but for parents it would put off: those stay in any case."""
    if not _leaf_removable(mountpoint / rel, rel, created, owner):
        return []
    names = [rel.name]
    for level in rel.parents:
        if not level.parts or (keep_parents and not level.name.startswith(TRANSIENT_SCOPE_PREFIX)):
            break
        if not _parent_removable(mountpoint / level, level, created):
            break
        names.append(level.name)
    return names


def _put_off(directory: Path, level: PurePosixPath, ours: bool) -> None:
    """Keep ``directory`` (at ``level``) for the next container (``ours``: made by this
    process); past :data:`_KEPT_LEVELS` levels, those of the level put off longest ago go
    where empty (one in use is put off again when its last container goes)."""
    call_at_exit(release_parents)
    _, was_ours = _PUT_OFF.pop(directory, (level, False))
    _PUT_OFF[directory] = (level, ours or was_ours)
    # The levels by when one of their directories was put off last, the latest first.
    recent = list(dict.fromkeys(kept for kept, _ in reversed(list(_PUT_OFF.values()))))
    for stale in recent[_KEPT_LEVELS:]:
        for kept_dir, (kept_level, kept_ours) in list(_PUT_OFF.items()):
            if kept_level == stale and _PUT_OFF.pop(kept_dir, None) is not None:
                _release(kept_dir, kept_ours)


def _release(directory: Path, ours: bool) -> None:
    if ours or _is_marked(directory):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def release_parents() -> None:
    """Remove the parent levels whose removal was put off, deepest first, where empty
    (and marked, or made by this process); one still in use stays. Never raises."""
    while kept := list(_PUT_OFF):  # (a copy: other threads may put off and evict)
        directory = max(kept, key=lambda d: len(d.parts))
        entry = _PUT_OFF.pop(directory, None)
        if entry is not None:
            _release(directory, entry[1])


class Cgroup(abc.ABC):
    """The cgroup of one container, in one or (v1) several hierarchies.

    Create one with :func:`sandboxrt._os.cgroups.create`; persist
    :meth:`to_dict` and reattach from another process with
    :func:`sandboxrt._os.cgroups.load`.
    """

    driver: ClassVar[str]

    def __init__(self, path: str, placements: Iterable[Placement]) -> None:
        self.path = path
        self.placements = tuple(placements)
        #: The container this object marked its cgroup as (:meth:`mark_owner`), if any.
        self.marked_as: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}>"

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        layout: CgroupLayout,
        path: str,
        resources: ResourcesLike | None = None,
        *,
        exclusive: bool = False,
        check: Callable[[Cgroup], None] | None = None,
    ) -> Cgroup:
        """Create the cgroup ``path`` (an OCI ``cgroupsPath``) and apply ``resources``.
        On failure, what was made is removed, and the marks this creation made
        (:meth:`mark_owner`, which ``check`` may call) are dropped from what stays.

        A cgroup that exists already is used as it is (and left in place by
        :meth:`destroy`), unless ``exclusive``: then it raises
        :class:`SystemCallError` (``EEXIST``), touching nothing. ``check`` may refuse
        the cgroup (by raising) before any resource is written to it.
        """
        res = as_resources(resources)
        placements: list[Placement] = []
        cgroup = cls(path, placements)
        try:
            for hierarchy in cls._hierarchies(layout, res):
                rel = layout.resolve(hierarchy, path)
                created = cgroup._make(hierarchy, rel)
                if exclusive and rel not in created:
                    err = FileExistsError(errno.EEXIST, "it exists already")
                    raise SystemCallError(f"creating cgroup {hierarchy.mountpoint / rel}", err)
                placements.append(
                    Placement(hierarchy.mountpoint, hierarchy.controllers, rel, created)
                )
                cgroup.placements = tuple(placements)
            if check is not None:
                check(cgroup)
            cgroup.apply(res)
        except BaseException:
            with contextlib.suppress(SystemCallError):  # keep the original error
                # (only what we marked: another store's container may have our id)
                cgroup.destroy(timeout=1.0, owner=cgroup.marked_as)
                if cgroup.marked_as is not None:
                    cgroup.release_owner(cgroup.marked_as)
            raise
        return cgroup

    @classmethod
    def left_behind(
        cls,
        layout: CgroupLayout,
        path: str,
        resources: ResourcesLike | None,
        container_id: str,
        *,
        exclusive: bool,
    ) -> Cgroup | None:
        """The cgroup :meth:`create` would make at ``path`` for ``container_id``, as a
        creation that died before it could record it left it: its directory in each
        hierarchy where it exists and carries no other container's mark; ``None`` where
        there is none. With ``exclusive`` (a default path, made by that creation alone)
        the directories count as made, so :meth:`destroy` removes them; else they are only
        the container's by its mark (see :meth:`release_owner`)."""
        placements = []
        # (An unmarked one is that creation's only at a path no one else makes.)
        owners = {container_id, None} if exclusive else {container_id}
        for hierarchy in cls._hierarchies(layout, as_resources(resources)):
            rel = layout.resolve(hierarchy, path)
            directory = hierarchy.mountpoint / rel
            if not directory.is_dir() or owner_of(directory) not in owners:
                continue
            made = (rel,) if exclusive else ()
            placements.append(Placement(hierarchy.mountpoint, hierarchy.controllers, rel, made))
        return cls(path, placements) if placements else None

    @classmethod
    @abc.abstractmethod
    def _hierarchies(cls, layout: CgroupLayout, resources: Resources) -> list[Hierarchy]:
        """The hierarchies this driver places a cgroup with ``resources`` in."""

    @abc.abstractmethod
    def _make(self, hierarchy: Hierarchy, rel: PurePosixPath) -> tuple[PurePosixPath, ...]:
        """Create the directory of this cgroup in ``hierarchy``; return the levels created."""

    def to_dict(self) -> dict[str, Any]:
        """A plain-JSON record of this cgroup, for :func:`~sandboxrt._os.cgroups.load`."""
        return {
            "driver": self.driver,
            "path": self.path,
            "placements": [p.to_dict() for p in self.placements],
        }

    # -- the interface --------------------------------------------------------------------

    @abc.abstractmethod
    def apply(self, resources: ResourcesLike) -> None:
        """Set the limits given in ``resources``; fields left ``None`` are not touched."""

    @abc.abstractmethod
    def freeze(self, timeout: float = 5.0) -> None:
        """Freeze every process of the cgroup; return once they all are frozen."""

    @abc.abstractmethod
    def thaw(self, *, below: bool = False) -> None:
        """Let the processes of the cgroup run again; with ``below``, also those of the
        cgroups beneath it that were frozen themselves (which a container with
        ``CAP_SYS_ADMIN`` may do: on v1 they would not die of ``SIGKILL``)."""

    @abc.abstractmethod
    def is_frozen(self, *, below: bool = False) -> bool:
        """Whether the cgroup is frozen now (``False`` without a freezer); with
        ``below``, or any cgroup beneath it frozen itself."""

    @abc.abstractmethod
    def stats(self) -> CgroupStats:
        """CPU, memory and pids usage of the cgroup."""

    def owner_around(self) -> str | None:
        """The container whose cgroup this one would be, or sit in or above: an
        :data:`OWNER_XATTR` on its directory or a level above it in any hierarchy, or,
        on a directory that existed before, on one below it. ``None`` if there is none
        (or the filesystem keeps no extended attributes)."""
        for placement in self.placements:
            directory = placement.mountpoint / placement.rel
            levels = [directory, *directory.parents]
            for level in levels[: len(placement.rel.parts) + 1]:
                owner = owner_of(level)
                if owner is not None:
                    return owner
            if placement.rel not in placement.created:
                for dirpath, _, _ in os.walk(directory):
                    owner = owner_of(Path(dirpath))
                    if owner is not None:
                        return owner
        return None

    def release_owner(self, container_id: str) -> None:
        """Drop ``container_id``'s :data:`OWNER_XATTR` from directories that existed
        before it (and so stay): no longer its cgroup. Another's mark stays."""
        for placement in self.placements:
            if placement.rel not in placement.created:
                release_owner(placement.mountpoint / placement.rel, container_id)

    def mark_owner(self, container_id: str) -> None:
        """Mark this cgroup as ``container_id``'s (:data:`OWNER_XATTR`; best effort where
        the filesystem keeps no extended attributes). The first directory's mark is made
        only if it has none: ``FileExistsError`` when another container marked it since
        :meth:`owner_around` looked (two creations racing for one ``cgroupsPath``)."""
        for index, placement in enumerate(self.placements):
            directory = placement.mountpoint / placement.rel
            flags = os.XATTR_CREATE if index == 0 else 0
            try:
                os.setxattr(directory, OWNER_XATTR, os.fsencode(container_id), flags)
            except FileExistsError:
                raise
            except OSError:
                continue
        self.marked_as = container_id

    def disown_created(self) -> None:
        """Forget having created this cgroup's own directories (its parents stay ours):
        another container claimed them, and a destroy of this one must leave them. They
        are marked (:data:`LOST_XATTR`), so that the claimant's destroy
        (``destroy(owner=...)``) removes them, though it found them made."""
        for placement in self.placements:
            if placement.rel in placement.created:
                with contextlib.suppress(OSError):
                    os.setxattr(placement.directory, LOST_XATTR, b"1")
        self.placements = tuple(
            replace(p, created=tuple(c for c in p.created if c != p.rel)) for p in self.placements
        )

    def can_freeze(self) -> bool:
        """Whether the cgroup has a freezer (:meth:`freeze` works)."""
        return True

    def can_kill_at_once(self) -> bool:
        """Whether the kernel kills every process of the cgroup with one write
        (``cgroup.kill``): :meth:`kill_all` then freezes nothing."""
        return False

    def _kill_at_once(self) -> bool:
        """Kill every process with one write, if the kernel can; ``False`` if not."""
        return False

    @property
    def directories(self) -> list[Path]:
        """The cgroup's directory in each hierarchy."""
        return list(dict.fromkeys(p.directory for p in self.placements))

    def orphan_levels(self, *, keep_parents: bool, owner: str) -> list[list[str]]:
        """For each of :attr:`directories`, the names of the levels :meth:`destroy` (for
        container ``owner``) would remove (bottom up: the cgroup's, then its parents'), but
        for parents it would keep (``keep_parents``): what a sandbox whose creator is gone
        removes itself once its container is, from the cgroup's directory up (through
        ``..``), no path needed."""
        first: dict[Path, Placement] = {}
        for placement in self.placements:
            first.setdefault(placement.directory, placement)
        return [
            _orphan_names(p.mountpoint, p.rel, p.created, keep_parents, owner)
            for p in first.values()
        ]

    def directory(self, controller: str) -> Path | None:
        """The cgroup's directory in the hierarchy of ``controller``, if there is one."""
        return next((p.directory for p in self.placements if controller in p.controllers), None)

    def _write_cpu_settings(self, burst_file: str, cpu: CpuResources) -> None:
        """``cpu.burst`` and ``cpu.idle`` (:func:`write_newer_cpu_settings`); a burst of
        0, the kernel's own, only where the cgroup has a cpu controller: a spec's 0 asks
        for no controller."""
        if cpu.burst or cpu.idle is not None:
            write_newer_cpu_settings(self.require("cpu"), burst_file, cpu)
        elif cpu.burst == 0 and (directory := self.directory("cpu")) is not None:
            write_newer_cpu_settings(directory, burst_file, cpu)

    def require(self, controller: str) -> Path:
        """:meth:`directory`, raising :class:`MissingFeatureError` when there is none."""
        directory = self.directory(controller)
        if directory is None:
            raise MissingFeatureError(f"cgroup controller {controller!r}")
        return directory

    def exists(self) -> bool:
        """Whether the cgroup's directory still exists (in any hierarchy)."""
        return any(d.is_dir() for d in self.directories)

    def add_process(self, pid: int) -> None:
        """Move the process ``pid`` (all its threads) into the cgroup."""
        for directory in self.directories:
            write_file(directory, "cgroup.procs", pid)

    def pids(self) -> list[int]:
        """Every process in the cgroup or in cgroups below it, sorted."""
        found: set[int] = set()
        for directory in self.directories:
            for dirpath, _, _ in os.walk(directory):
                found.update(_parse_pids(read_optional(Path(dirpath), "cgroup.procs")))
        return sorted(found)

    def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL every process of the cgroup and wait until it is empty.

        Without a kernel ``cgroup.kill``: freeze, kill every listed PID, thaw,
        and repeat, so that a process forking meanwhile cannot escape.
        """
        deadline = time.monotonic() + timeout
        delay = 0.002
        while self.pids():
            if not self._kill_at_once():
                self._freeze_kill_thaw(deadline)
            if time.monotonic() >= deadline:
                err = OSError(errno.EBUSY, "processes are still running")
                raise SystemCallError(f"killing the processes of cgroup {self.path}", err)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY / 4)

    def _freeze_kill_thaw(self, deadline: float) -> None:
        frozen = self.can_freeze()  # thawed below even if freezing fails half-way
        if frozen:
            with contextlib.suppress(SystemCallError):  # kill what we see; the next round
                self.freeze(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            if frozen:
                self.thaw(below=True)

    def destroy(
        self, timeout: float = 5.0, *, keep_parents: bool = False, owner: str | None = None
    ) -> None:
        """Remove the directories sandboxrt created (idempotent), and those made by
        another creation that lost them to ``owner``, the container this cgroup is.

        Does not kill: call :meth:`kill_all` first. A busy cgroup is retried
        until ``timeout``. Then the parent levels this cgroup created, or any
        container created (marked with :data:`PARENT_XATTR`), are removed
        upwards once empty (with ``keep_parents``: at :func:`release_parents`);
        one still holding other cgroups is left in place. Pre-existing levels
        are never removed.
        """
        deadline = time.monotonic() + timeout
        for placement in self.placements:
            _remove_levels(
                placement.mountpoint,
                placement.rel,
                placement.created,
                deadline,
                keep_parents=keep_parents,
                owner=owner,
            )
