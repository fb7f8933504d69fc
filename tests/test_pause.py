"""pause / resume: real containers frozen and thawed through their cgroup freezer.

A paused container's supervisor stays outside its cgroup, so state, stats,
wait, kill and destroy keep working; exec is refused. No timed asserts: a
frozen counter is compared with itself, a running one polled until it moves.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import (
    BundleFactory,
    edit_config,
    ended,
    killed_after,
    needs_busybox,
    needs_root,
)

from sandboxrt import (
    Config,
    Container,
    FileStore,
    InvalidStateError,
    MissingFeatureError,
    ProcessTimeoutError,
    SandboxrtError,
    Status,
    WaitTimeoutError,
)
from sandboxrt import _cgroup as library_cgroup
from sandboxrt._os import cgroups, procfs

REPO = Path(__file__).resolve().parent.parent


def _has_freezer() -> bool:
    try:
        layout = cgroups.detect()
    except OSError:
        return False
    if layout.driver == "v1":
        return "freezer" in layout.v1
    return layout.driver == "v2"


pytestmark = [
    needs_root,
    needs_busybox,
    pytest.mark.skipif(not _has_freezer(), reason="needs a cgroup freezer"),
]

#: Counts forever, replacing /n atomically with the count after each step.
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /n.new; mv /n.new /n; usleep 10000; done"


@pytest.fixture
def counter(store: FileStore, bundle: BundleFactory) -> Iterator[tuple[Container, Path]]:
    """A running container counting into ``<rootfs>/n``, and that file."""
    path = bundle(["sh", "-c", COUNTER])
    container = Container.create("pz1", path, store=store)
    try:
        container.start()
        count = path / "rootfs" / "n"
        first = wait_for(lambda: read_count(count))
        wait_for(lambda: read_count(count) > first)  # it counts
        yield container, count
    finally:
        container.destroy()


def read_count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except FileNotFoundError:
        return 0


def wait_for(probe: Callable[[], int | bool], timeout: float = 20.0) -> int:
    """Poll ``probe`` until it is truthy; its value (a deadline, never an assert on time)."""
    end = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < end, "condition never met"
        time.sleep(0.01)
    return int(value)


def cgroup_of(container: Container) -> cgroups.Cgroup:
    record = container._record.cgroup
    assert record is not None
    return cgroups.load(record)


def status_elsewhere(store: FileStore, cid: str) -> str:
    """The container's OCI state status as another Python process loads it."""
    code = (
        "import sys; from sandboxrt import Container, FileStore; "
        "c = Container.load(sys.argv[1], store=FileStore(sys.argv[2])); "
        "print(c.state().status, c.status)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code, cid, str(store.root)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return done.stdout.strip()


def test_a_paused_container_stops_counting_and_resumes(
    counter: tuple[Container, Path], store: FileStore
) -> None:
    container, count = counter
    cgroup = cgroup_of(container)
    container.pause()
    assert container.status is Status.PAUSED
    assert cgroup.is_frozen()
    frozen_at = read_count(count)
    time.sleep(0.5)
    assert read_count(count) == frozen_at
    assert status_elsewhere(store, container.id) == "paused paused"
    assert Container.load(container.id, store=store).state().status is Status.PAUSED
    container.resume()
    assert container.status is Status.RUNNING
    assert not cgroup.is_frozen()
    assert wait_for(lambda: read_count(count) > frozen_at)
    assert status_elsewhere(store, container.id) == "running running"


def test_stats_state_and_wait_work_while_paused(counter: tuple[Container, Path]) -> None:
    container, _ = counter
    container.pause()
    stats = container.stats()
    assert stats.pids_current >= 1 and stats.memory_usage > 0
    state = container.state()
    assert state.status is Status.PAUSED and state.pid is not None
    with pytest.raises(WaitTimeoutError):
        container.wait(timeout=0.3)  # frozen: the init cannot exit
    assert container.stats().cpu_usage_ns == stats.cpu_usage_ns  # no cpu burnt while frozen
    container.resume()


def test_exec_is_refused_while_paused(counter: tuple[Container, Path]) -> None:
    container, _ = counter
    container.pause()
    with pytest.raises(InvalidStateError, match='exec in container "pz1" in state paused'):
        container.exec(["true"])
    container.resume()
    assert container.exec_run(["true"]).returncode == 0


def test_a_signal_to_a_paused_container_arrives_on_resume(
    counter: tuple[Container, Path],
) -> None:
    container, _ = counter
    container.pause()
    container.kill(signal.SIGTERM)
    container.kill(signal.SIGTERM, all=True)  # pending too: the cgroup stays frozen
    assert container.status is Status.PAUSED
    assert cgroup_of(container).is_frozen()
    with pytest.raises(WaitTimeoutError):
        container.wait(timeout=0.3)
    container.resume()
    assert container.wait(timeout=20) == -signal.SIGTERM
    assert container.status is Status.STOPPED


@pytest.mark.parametrize("everyone", [False, True], ids=["init", "all"])
def test_sigkill_ends_a_paused_container(counter: tuple[Container, Path], everyone: bool) -> None:
    container, _ = counter
    container.pause()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(container.wait)  # blocks on the supervisor while paused
        container.kill(signal.SIGKILL, all=everyone)
        assert waiting.result(timeout=20) == -signal.SIGKILL
    assert not cgroup_of(container).is_frozen()
    wait_for(lambda: container.status is Status.STOPPED)
    wait_for(lambda: cgroup_of(container).pids() == [])  # the rest dies with the sandbox


def test_destroy_of_a_paused_container_leaves_nothing(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["sh", "-c", "sleep 1000 & sleep 1000"])
    container = Container.create("pz2", path, store=store)
    try:
        container.start()
        cgroup = cgroup_of(container)
        wait_for(lambda: len(cgroup.pids()) >= 2)
        members = cgroup.pids()
        supervisor = container.state().pid
        container.pause()
        container.destroy()
    finally:
        container.destroy()
    assert not cgroup.exists()
    for pid in [*members, supervisor]:
        assert pid is not None and ended(pid)
    assert Container.list(store=store) == []


def test_destroy_of_a_container_frozen_behind_its_record_leaves_nothing(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A caller killed between a pause's freeze and its save leaves the cgroup frozen and
    the record saying running: destroy kills and thaws it all the same (every destroy
    failed: the supervisor, PID 1, cannot end before its frozen children)."""
    path = bundle(["sh", "-c", "sleep 1000 & sleep 1000"])
    container = Container.create("pz3", path, store=store, config=Config(destroy_timeout=3))
    try:
        container.start()
        cgroup = cgroup_of(container)
        wait_for(lambda: len(cgroup.pids()) >= 2)
        members, supervisor = cgroup.pids(), container.state().pid
        library_cgroup.freeze(container._record.cgroup, container.id, timeout=5)
        assert container.status is Status.RUNNING
        container.destroy()
    finally:
        with contextlib.suppress(SandboxrtError):
            library_cgroup.thaw(container._record.cgroup, container.id)
        container.destroy()
    assert not cgroup.exists()
    for pid in [*members, supervisor]:
        assert pid is not None and ended(pid)
    assert Container.list(store=store) == []


def test_a_caller_killed_while_it_freezes_leaves_a_container_that_says_paused(
    counter: tuple[Container, Path], store: FileStore
) -> None:
    """The status is recorded before the freeze: a caller killed after freezing left a
    frozen container that said running (resume refused it, and an exec hung on its
    frozen agent for 30 s past its timeout)."""
    container, count = counter
    code = killed_after("sandboxrt._cgroup:freeze", "pause", container.id, store)
    assert code == -signal.SIGKILL
    assert library_cgroup.is_frozen(store.load(container.id).cgroup, container.id)
    assert container.status is Status.PAUSED
    with pytest.raises(InvalidStateError):
        container.exec_run(["true"], timeout=5)
    container.resume()
    first = read_count(count)
    wait_for(lambda: read_count(count) > first)  # it counts again


def test_a_caller_killed_while_a_kill_all_froze_the_cgroup_leaves_it_thawed_next(
    counter: tuple[Container, Path], store: FileStore
) -> None:
    """A kill of every process freezes the cgroup for a moment: a caller killed then left
    a frozen container that said running (resume refused it, an exec hung 30 s on its
    frozen agent, wait never returned). The next holder of the lock thaws it."""
    container, count = counter
    driver = type(library_cgroup.attach(store.load(container.id).cgroup, container.id))
    target = f"{driver.__module__}:{driver.__name__}.freeze"
    code = killed_after(target, "kill", container.id, store, arguments='"CONT", all=True')
    assert code == -signal.SIGKILL
    record = store.load(container.id)
    assert library_cgroup.is_frozen(record.cgroup, container.id)
    assert record.pending["operation"] == "kill" and container.status is Status.RUNNING
    with pytest.raises(ProcessTimeoutError):  # (a wait finishes it: it takes the lock a moment)
        container.wait(timeout=0.5)
    assert not library_cgroup.is_frozen(store.load(container.id).cgroup, container.id)
    assert store.load(container.id).pending == {}
    first = read_count(count)
    wait_for(lambda: read_count(count) > first)  # it counts again
    start = time.monotonic()
    assert container.exec_run(["echo", "hi"], capture_output=True, timeout=5).stdout == b"hi\n"
    assert time.monotonic() - start < 5
    container.kill("KILL", all=True)
    assert store.load(container.id).pending == {}  # (said, then unsaid)
    assert container.wait(timeout=10) == -signal.SIGKILL


def test_a_wait_finishing_a_mark_keeps_to_its_own_timeout(
    counter: tuple[Container, Path], store: FileStore
) -> None:
    """A wait that finds a mark takes the lock a moment to finish it, within its own
    timeout: the lock held elsewhere does not hold it up for the lock's 30 s."""
    container, _ = counter
    mark = {"operation": "kill", "by": {"pid": 1, "start_ticks": 1, "boot_id": "x"}}
    store.save(attrs.evolve(store.load(container.id), pending=mark))
    with store.lock(container.id):  # (held: by another thread or process, say)
        start = time.monotonic()
        with pytest.raises(ProcessTimeoutError):
            container.wait(timeout=0.3)
        assert time.monotonic() - start < 10  # (a bound on a wait: not the lock's 30 s)
    assert store.load(container.id).pending == mark  # (left for the next)
    with pytest.raises(ProcessTimeoutError):
        container.wait(timeout=0.3)
    assert store.load(container.id).pending == {}
    store.save(attrs.evolve(store.load(container.id), pending=mark))
    init = container.processes()[0].pid
    with pytest.raises(ProcessTimeoutError):
        container.wait_pid(init, timeout=0.3)  # (as a wait)
    assert store.load(container.id).pending == {}


def test_communicate_finishes_a_mark_before_it_reads(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A container left frozen by a kill whose caller died never ends its output: a
    communicate read it for ever (a wait, which came after the reading, never came)."""
    path = bundle(["sh", "-c", "sleep 1; echo done"])
    with Container.create("pz-talk", path, store=store, stdout=subprocess.PIPE) as container:
        container.start()
        library_cgroup.freeze(store.load("pz-talk").cgroup, "pz-talk", timeout=5)
        gone = {"pid": 1, "start_ticks": 1, "boot_id": "x"}  # (no such process)
        store.save(attrs.evolve(store.load("pz-talk"), pending={"operation": "kill", "by": gone}))
        assert container.communicate(timeout=30) == (b"done\n", None)
        assert store.load("pz-talk").pending == {}
    with Container.create("pz-neg", bundle(["sleep", "100"]), store=store) as waiting:
        with pytest.raises(ProcessTimeoutError):  # (a negative time: as without a mark)
            waiting.wait(-1)
        store.save(attrs.evolve(store.load("pz-neg"), pending={"operation": "kill", "by": gone}))
        with pytest.raises(ProcessTimeoutError):
            waiting.wait(-1)


class _MarkFails(FileStore):
    """A store that cannot save a record marked busy (a full disk, say)."""

    def save(self, record: Any) -> None:
        if record.pending:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().save(record)


def test_a_kill_of_every_process_goes_on_when_the_store_cannot_say_it(
    tmp_path: Path, bundle: BundleFactory
) -> None:
    """A container filling the disk is one to kill: the mark of a kill under way is said
    if the store can, and the kill goes on if it cannot."""
    store = _MarkFails(tmp_path / "store")
    with Container.create("pz-full", bundle(["sleep", "1000"]), store=store) as container:
        container.start()
        container.kill("KILL", all=True)
        assert container.wait(timeout=10) == -signal.SIGKILL


def test_a_destroy_is_not_stopped_by_a_bad_mark(store: FileStore, bundle: BundleFactory) -> None:
    """A mark no update could finish (a record edited by hand, say) is cleared, and a
    destroy finishes no update: it tears down."""
    container = Container.create("pz-mark", bundle(["sleep", "1000"]), store=store)
    container.start()
    bad = {"operation": "update", "changes": {"pids": "x"}, "by": {"pid": 1}}
    store.save(attrs.evolve(store.load("pz-mark"), pending=bad))
    container.kill(0)  # (logged, cleared)
    assert store.load("pz-mark").pending == {}
    store.save(attrs.evolve(store.load("pz-mark"), pending=bad))
    container.destroy()
    assert Container.list(store=store) == []


def test_pause_and_resume_need_the_right_status(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create("pz3", bundle(["true"]), store=store)
    try:
        with pytest.raises(InvalidStateError, match='pause container "pz3" in state created'):
            container.pause()
        with pytest.raises(InvalidStateError, match=r"cannot resume .* in state created"):
            container.resume()
        container.start()
        assert container.wait(timeout=20) == 0
        with pytest.raises(InvalidStateError, match=r"cannot pause .* in state stopped"):
            container.pause()
    finally:
        container.destroy()


def test_resume_of_a_running_container_is_refused(counter: tuple[Container, Path]) -> None:
    container, _ = counter
    with pytest.raises(InvalidStateError, match=r"cannot resume .* in state running"):
        container.resume()


def test_pause_without_a_freezer_names_it(
    counter: tuple[Container, Path], store: FileStore
) -> None:
    container, _ = counter
    with pytest.raises(MissingFeatureError, match=r"freezer.*no cgroup"):
        library_cgroup.freeze(None, "pz1", timeout=1.0)
    record = store.load(container.id)
    full = record.cgroup
    assert full is not None
    placements = [p for p in full["placements"] if "freezer" not in p["controllers"]]
    if full["driver"] == "v2":
        pytest.skip("a v2 cgroup always has its freezer")
    store.save(attrs.evolve(record, cgroup={**full, "placements": placements}))
    try:
        with pytest.raises(MissingFeatureError, match="freezer") as info:
            container.pause()
        assert "pz1" in str(info.value)
        assert container.status is Status.RUNNING
    finally:
        store.save(attrs.evolve(store.load(container.id), cgroup=full))


def test_a_dead_paused_sandbox_reads_stopped(counter: tuple[Container, Path]) -> None:
    container, _ = counter
    container.pause()
    sandbox = container.sandbox
    assert sandbox is not None
    # Kill what is frozen and then the supervisor, as a crash would: the record still
    # says paused, the status reconciles to stopped.
    library_cgroup.signal_all(
        container._record.cgroup or {}, container.id, signal.SIGKILL, spare=None, timeout=10
    )
    library_cgroup.thaw(container._record.cgroup, container.id)
    assert sandbox.kill(timeout=10)
    assert container._store.load(container.id).status is Status.PAUSED
    assert container.status is Status.STOPPED
    with pytest.raises(InvalidStateError, match=r"cannot resume .* in state stopped"):
        container.resume()


def test_a_supervisor_killed_while_its_container_is_paused_reads_stopped(
    counter: tuple[Container, Path], store: FileStore
) -> None:
    """A PID namespace's init killed while processes of its namespace are frozen waits
    for them (PF_EXITING) for as long as they stay frozen: it was taken for alive, and the
    container read paused for good."""
    container, _ = counter
    container.pause()
    sandbox = container.sandbox
    assert sandbox is not None
    pids = cgroup_of(container).pids()
    os.kill(sandbox.pid, signal.SIGKILL)
    wait_for(lambda: procfs.dying_name(sandbox.pid) is not None)  # (frozen children: not reaped)
    assert container.status is Status.STOPPED
    assert status_elsewhere(store, container.id) == "stopped stopped"
    with pytest.raises(InvalidStateError, match=r"cannot resume .* in state stopped"):
        container.resume()
    container.destroy()
    assert all(ended(pid) for pid in [*pids, sandbox.pid])


@pytest.mark.skipif(cgroups.detect().driver != "v1", reason="v1's freezer: v2 kills frozen tasks")
@pytest.mark.parametrize("how", ["kill_all", "destroy"])
def test_a_cgroup_the_container_froze_itself_does_not_stop_a_kill(
    store: FileStore, bundle: BundleFactory, how: str
) -> None:
    """A container with CAP_SYS_ADMIN freezes a child cgroup of its own with a process in
    it: on v1 that process would not die of SIGKILL, and kill(all=True) and destroy failed
    after their timeouts, leaving the sandbox; they thaw it now."""
    script = (
        "mkdir -p /tmp/f && mount -t cgroup -o freezer cgroup /tmp/f && mkdir /tmp/f/child"
        " && (sleep 900 & echo $! > /tmp/f/child/cgroup.procs)"
        " && echo FROZEN > /tmp/f/child/freezer.state && touch /tmp/frozen; exec sleep 901"
    )
    path = bundle(["sh", "-c", script])

    def change(document: dict[str, Any]) -> None:
        for kind in ("bounding", "effective", "permitted"):
            document["process"]["capabilities"][kind].append("CAP_SYS_ADMIN")
        document["linux"]["seccomp"] = None

    edit_config(path, change)
    container = Container.create("selffrozen", path, store=store, config=Config(destroy_timeout=5))
    cgroup = cgroup_of(container)
    child = (cgroup.directory("freezer") or Path("/nonexistent")) / "child"
    try:
        container.start()
        wait_for((Path(container.bundle) / "rootfs" / "tmp" / "frozen").exists)
        assert container._record.cgroup is not None
        assert library_cgroup.is_frozen(container._record.cgroup, container.id, below=True)
        members = cgroup.pids()
        if how == "kill_all":
            container.kill(signal.SIGKILL, all=True)
            assert cgroup.pids() == []
        container.destroy()
    finally:
        with contextlib.suppress(OSError):
            (child / "freezer.state").write_text("THAWED")
        container.destroy()
    assert not cgroup.exists()
    assert members
    for pid in members:
        assert ended(pid)
