"""Shared fixtures: stores, real bundles, and a leak check around every container test."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sandboxrt import Container, FileStore, SandboxrtError, _cgroup
from sandboxrt._os import cgroups, procfs
from sandboxrt._proc.children import SUPERVISOR_NAME as PROCESS_NAME
from sandboxrt._proc.gofer import PROCESS_NAME as GOFER_NAME
from sandboxrt._proc.init import AGENT_PROCESS_NAME
from sandboxrt._proc.init import PROCESS_NAME as INIT_NAME
from sandboxrt.bundle import BUSYBOX, make_bundle

IS_ROOT = os.geteuid() == 0

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to create namespaces and mounts")
needs_busybox = pytest.mark.skipif(
    not os.access(BUSYBOX, os.X_OK), reason="needs busybox-static (apt-get install busybox-static)"
)

BundleFactory = Callable[..., Path]

# Sandboxes inherit the environment (through the fork server), so this marks the
# ones this test session started: the leak check never touches anyone else's.
OWNER_MARK = f"SANDBOXRT_TEST_OWNER={os.getpid()}".encode()
os.environ["SANDBOXRT_TEST_OWNER"] = str(os.getpid())


def supervisor_pids() -> set[int]:
    """Live (non-zombie) sandboxrt supervisors, inits, exec agents and gofers this test
    session started."""
    found = set()
    for pid, comm, ours in sandboxrt_processes():
        if comm in (PROCESS_NAME, INIT_NAME, AGENT_PROCESS_NAME, GOFER_NAME) and ours:
            info = procfs.read_stat(pid)
            if info is not None and info.state not in "ZX":
                found.add(pid)
    return found


def sandboxrt_processes() -> Iterator[tuple[int, str, bool]]:
    """Each process named ``sandboxrt-*``: its pid, its name, and whether this test session
    started it."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm.startswith("sandboxrt-"):
            yield int(name), comm, _ours(name)


def _ours(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return OWNER_MARK in f.read().split(b"\0")
    except OSError:
        return False


def host_mounts() -> list[str]:
    """The host's mount table, without mount ids (which stay stable anyway)."""
    with open("/proc/self/mountinfo") as f:
        return sorted(" ".join(line.split()[3:]) for line in f)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileStore]:
    """A FileStore of the test's own. Containers a test leaves in it (a failed test's,
    say) are destroyed after it, so that none of their processes, cgroups or mounts
    outlives it, and then reported."""
    store = FileStore(tmp_path / "store")
    yield store
    left = Container.list(store=store)
    for container_id in left:
        with contextlib.suppress(SandboxrtError):
            Container.load(container_id, store=store).destroy()
    assert not left, f"containers left in the store: {left}"
    if IS_ROOT:
        cgroups.release_parents()  # the levels kept for this process's next containers
        cgroups_left = store_cgroups(store)
        assert not cgroups_left, f"cgroups left by the store's containers: {cgroups_left}"


@pytest.fixture
def bundle(tmp_path: Path) -> BundleFactory:
    """Make a bundle: ``bundle(args, rootfs="busybox"|"host_usr", name=..., **kw)``."""
    counter = iter(range(10_000))

    def make(
        args: Sequence[str] = ("true",),
        *,
        rootfs: str = "busybox",
        name: str | None = None,
        **kwargs: object,
    ) -> Path:
        path = tmp_path / (name or f"bundle{next(counter)}")
        make_bundle(path, list(args), rootfs=rootfs, **kwargs)  # type: ignore[arg-type]
        return path

    return make


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves supervisors running, changes the host's mount table or
    leaves a cgroup under a ``sandboxrt`` level (that one only where no process of
    sandboxrt that this session did not start ran before or after the test: a cgroup that
    came meanwhile may be theirs). What was left is removed first, whichever check
    fails."""
    if not IS_ROOT:
        yield
        return
    before_pids = supervisor_pids()
    before_mounts = host_mounts()
    before_cgroups = sandboxrt_cgroups()
    others_before = others_use_sandboxrt()
    yield
    cgroups.release_parents()  # the parent levels kept for this process's next containers
    problems = []
    leaked = supervisor_pids() - before_pids
    for pid in leaked:  # clean up what we started, by pid, then fail
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    for pid in leaked:
        ended(pid)
    if leaked:
        problems.append(f"sandbox supervisors left running: {sorted(leaked)}")
    if host_mounts() != before_mounts:
        problems.append("the host's mount table changed")
    if not others_before and not others_use_sandboxrt():
        left = sandboxrt_cgroups() - before_cgroups
        if left:
            remove_cgroups(left)
            problems.append(f"cgroups left behind: {sorted(left)}")
    assert not problems, "; ".join(problems)


def remove_cgroups(paths: set[str]) -> None:
    """Remove these cgroup directories, the deepest first, waiting up to 2 s for each
    to empty (the processes of a supervisor just killed are on their way out)."""
    deadline = time.monotonic() + 2
    for path in sorted(paths, key=len, reverse=True):
        while True:
            try:
                os.rmdir(path)
            except OSError as exc:
                if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
            break


def others_use_sandboxrt() -> bool:
    """Whether a process of sandboxrt that this test session did not start runs."""
    return any(not ours for _, _, ours in sandboxrt_processes())


def sandboxrt_cgroups() -> set[str]:
    """Every cgroup directory at or beneath a ``sandboxrt`` level of any hierarchy (where
    default cgroup paths go)."""
    root = Path("/sys/fs/cgroup")
    found: set[str] = set()
    for top in [root / "sandboxrt", *root.glob("*/sandboxrt")]:
        for directory, _, _ in os.walk(top):
            found.add(directory)
    return found


def store_cgroups(store: FileStore) -> list[str]:
    """The cgroup directories at the default path's level of ``store`` (see
    ``_cgroup.scope_for``), in every hierarchy: none once its containers are destroyed
    and this process released the levels it kept."""
    scope = _cgroup.scope_for(store.runtime_dir)
    root = Path("/sys/fs/cgroup")
    found = [*root.glob(f"sandboxrt/{scope}"), *root.glob(f"*/sandboxrt/{scope}")]
    return sorted(str(path) for path in found)


def edit_config(bundle: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """Change a bundle's config.json in place (``change`` edits the parsed document);
    the bundle."""
    path = bundle / "config.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return bundle


def run_output(store: FileStore, bundle: Path, cid: str = "c1") -> tuple[int, str]:
    """Create, start, wait for and destroy a container; its exit code and output."""
    container = Container.create(
        cid, bundle, store=store, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        container.start()
        assert container.stdout is not None
        out = container.stdout.read().decode()
        return container.wait(timeout=30), out
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()


def children_of_this_process() -> set[int]:
    """Our child processes, zombies included (a launched process nobody waited for).

    When this process is PID 1 of its namespace, the zombies of orphans it
    adopted are not ours to wait for, and are left out.
    """
    found: set[int] = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            found.update(int(pid) for pid in f.read().split())
    if os.getpid() == 1:
        found = {pid for pid in found if not is_zombie(pid)}
    return found


def ended(pid: int) -> bool:
    """Whether ``pid`` has exited, waiting up to 5 s for it (a destroyed sandbox's
    supervisor is a zombie until its parent, the fork server, reaps it)."""
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or is_zombie(pid), timeout=5.0)
    return True


def is_zombie(pid: int) -> bool:
    info = procfs.read_stat(pid)
    return info is not None and info.state == "Z"


#: This checkout (a second Python process imports its sandboxrt from here).
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def running(store: FileStore, bundle: BundleFactory) -> Iterator[Container]:
    """A running busybox container whose program sleeps."""
    container = Container.create("run1", bundle(["sleep", "1000"]), store=store)
    try:
        container.start()
        yield container
    finally:
        container.destroy()


def has_sys_resource() -> bool:
    """Whether this process holds ``CAP_SYS_RESOURCE`` (24), which raising a hard rlimit,
    lowering ``oom_score_adj`` below its floor and changing a supervisor's rlimits (whose
    saved gid is no caller's) take even as root."""
    with open("/proc/self/status") as f:
        caps = next(line for line in f if line.startswith("CapEff:")).split()[1]
    return bool(int(caps, 16) >> 24 & 1)


def small_pid_space(container: Container, pid_max: int) -> None:
    """Give the PID namespace of ``container``'s sandbox a small ``pid_max``, so that its
    PID space wraps after hundreds of forks (not millions); the test is skipped where a
    PID namespace has no ``pid_max`` of its own (before Linux 6.14)."""
    # Before 6.14 the sysctl is the whole machine's, and root may write it from any PID
    # namespace: written then, it would leave the host a few hundred pids.
    if tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2]) < (6, 14):
        pytest.skip("needs a pid_max of the sandbox's own PID namespace (Linux 6.14)")
    supervisor = container.state().pid
    assert supervisor is not None
    host = Path("/proc/sys/kernel/pid_max")
    before = host.read_text()
    script = f"echo {pid_max} > /proc/sys/kernel/pid_max"
    command = ["nsenter", "-t", str(supervisor), "-p", "--", "sh", "-c", script]
    written = subprocess.run(command, capture_output=True, check=False).returncode == 0
    if host.read_text() != before:  # (a kernel that reports 6.14 without the change)
        host.write_text(before)
        pytest.fail("writing pid_max in the sandbox's PID namespace changed the host's")
    if not written:
        pytest.skip("needs a pid_max of the sandbox's own PID namespace (Linux 6.14)")


def in_python(code: str, *, under: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a second Python process that imports this checkout's sandboxrt
    (``under``: through that command, such as ``setpriv``)."""
    return subprocess.run(
        [*under, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def words_then_killed(code: str) -> list[str]:
    """Run ``code`` in a second Python process (this checkout's sandboxrt) that prints a
    line and then waits for its stdin; the words of that line, once it is SIGKILLed (a
    creator killed outright)."""
    creator = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert creator.stdout is not None
        return creator.stdout.readline().split()
    finally:
        creator.kill()
        creator.wait()  # (not for its pipes' end: a child it forked may hold them)
        for stream in (creator.stdin, creator.stdout):
            if stream is not None:
                stream.close()


def killed_after(
    target: str, operation: str, container_id: str, store: FileStore, arguments: str = ""
) -> int:
    """Run ``operation`` (a method of ``Container``, called with ``arguments``, their
    Python text) on the container in a second Python process that SIGKILLs itself right
    after ``target`` (``"module:function"`` or ``"module:Class.method"``) returns, as a
    ``kill -9`` landing there would; its return code."""
    module, _, attribute = target.partition(":")
    owner, _, name = attribute.rpartition(".")
    code = (
        "import importlib, os, signal\n"
        "from sandboxrt import Container, FileStore\n"
        f"owner = importlib.import_module({module!r})\n"
        + (f"owner = getattr(owner, {owner!r})\n" if owner else "")
        + f"done = getattr(owner, {name!r})\n"
        "def then_killed(*args, **kwargs):\n"
        "    done(*args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"setattr(owner, {name!r}, then_killed)\n"
        f"container = Container.load({container_id!r}, store=FileStore({str(store.root)!r}))\n"
        f"getattr(container, {operation!r})({arguments})\n"
    )
    return in_python(code).returncode


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds (a bound on a
    wait, not a timed assert)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def assert_minimal_root(pid: int) -> None:
    """``pid``'s root holds its /proc only, and it sees no other mount (the supervisor's
    and the gofer's once confined: decisions 33 and 38)."""
    root = f"/proc/{pid}/root"
    assert os.listdir(root) == ["proc"]
    for host_file in ("etc/hostname", "usr", "etc", "sys", "dev", "tmp"):
        assert not os.path.lexists(os.path.join(root, host_file))

    def mounts_seen() -> list[tuple[str, str]]:
        with open(f"/proc/{pid}/mountinfo") as f:
            return sorted((line.split()[4], line.split(" - ")[1].split()[0]) for line in f)

    # The host's mounts are detached aside, right after the pivot.
    wait_until(lambda: len(mounts_seen()) == 2)
    assert mounts_seen() == [("/", "tmpfs"), ("/proc", "proc")]


#: A program's first line that reopens its stdout and stderr by path, as a program logging
#: to /dev/stderr does; the container's program is ``sh -c f"{REOPEN_STDIO}; exec sleep 60"``.
REOPEN_STDIO = "echo out > /proc/self/fd/1; echo err > /dev/stderr"


@contextlib.contextmanager
def reopened_stdio(
    store: FileStore, path: Path, cid: str, exec_users: Sequence[int | None]
) -> Iterator[Container]:
    """The started container of bundle ``path`` once its init, then an exec as each of
    ``exec_users`` (``None``: the spec's user), reopened their stdio (REOPEN_STDIO);
    destroyed after."""
    container = Container.create(
        cid, path, store=store, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        container.start()
        assert container.stdout is not None and container.stderr is not None
        assert (container.stdout.readline(), container.stderr.readline()) == (b"out\n", b"err\n")
        for user in exec_users:
            done = container.exec_run(["sh", "-c", REOPEN_STDIO], capture_output=True, user=user)
            assert (done.returncode, done.stdout, done.stderr) == (0, b"out\n", b"err\n")
        yield container
    finally:
        for stream in (container.stdout, container.stderr):
            if stream is not None:
                stream.close()
        container.destroy()
