"""FileStore and MemoryStore: records, atomicity, corruption, locks across threads and processes."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import gc
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until

from sandboxrt._core.records import ContainerRecord, record_to_json, spec_text
from sandboxrt._core.status import Status
from sandboxrt.errors import (
    ContainerExistsError,
    ContainerNotFoundError,
    CorruptMetadataError,
    InvalidArgumentError,
    InvalidIDError,
    LockTimeoutError,
    SystemCallError,
)
from sandboxrt.stores import FileStore, MemoryStore, MetadataStore, default_root
from sandboxrt.stores.file import MAX_FILE_ID_LENGTH

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (file modes, chown)")

Store = FileStore | MemoryStore


def rec(cid: str, *, owner: str = "", spec: dict[str, Any] | None = None) -> ContainerRecord:
    return ContainerRecord(
        id=cid,
        bundle=f"/bundles/{cid}",
        spec={"ociVersion": "1.0.2"} if spec is None else spec,
        status=Status.CREATED,
        created_at=dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
        owner=owner,
    )


@pytest.fixture(params=["file", "memory"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return FileStore(tmp_path / "root", lock_timeout=5)
    return MemoryStore(tmp_path / "rt", lock_timeout=5)


def plant(store: Store, cid: str, data: bytes) -> None:
    """Put raw bytes where the store keeps ``cid``'s record (as a broken disk or bug would)."""
    if isinstance(store, FileStore):
        store.root.mkdir(exist_ok=True)
        (store.root / f"{cid}.json").write_bytes(data)
    else:
        store._put(cid, data, replace=True)


# -- child processes -------------------------------------------------------------------------

PRELUDE = textwrap.dedent(
    """
    import datetime as dt, os, sys, time
    from sandboxrt._core.records import ContainerRecord
    from sandboxrt._core.status import Status
    from sandboxrt.errors import ContainerExistsError, ContainerNotFoundError
    from sandboxrt.stores.file import FileStore

    def rec(cid, owner="", spec=None):
        return ContainerRecord(
            id=cid, bundle="/bundles/" + cid, spec=spec or {}, status=Status.CREATED,
            created_at=dt.datetime(2024, 5, 6, tzinfo=dt.UTC), owner=owner,
        )

    store = FileStore(sys.argv[1])
    """
)


class Children:
    """Python children running ``PRELUDE + code``; all killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, code: str, *args: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def expect(proc: subprocess.Popen[str], want: str) -> str:
        """Read one line from ``proc`` and check that it starts with ``want``."""
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith(want):
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"child said {line!r}, wanted {want!r}; stderr:\n{err}")
        return line

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.close()


def open_paths(pid: int) -> set[str]:
    paths = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return paths


# -- basics, both stores ---------------------------------------------------------------------


def test_stores_satisfy_the_protocol(any_store: Store) -> None:
    assert isinstance(any_store, MetadataStore)


def test_round_trip(any_store: Store) -> None:
    record = rec("web1", owner="me", spec={"process": {"args": ["sh", "-c", "echo ü"]}})
    with any_store.lock("web1"):
        any_store.create(record)
    assert any_store.load("web1") == record
    changed = record.with_status(Status.RUNNING)
    with any_store.lock("web1"):
        any_store.save(changed)
    assert any_store.load("web1") == changed
    assert any_store.list_ids() == ["web1"]


def test_create_existing_raises(any_store: Store) -> None:
    any_store.create(rec("a", owner="first"))
    with pytest.raises(ContainerExistsError, match='container "a" already exists') as info:
        any_store.create(rec("a", owner="second"))
    assert info.value.container_id == "a"
    assert any_store.load("a").owner == "first"


def test_missing_record_is_not_found(any_store: Store) -> None:
    with pytest.raises(ContainerNotFoundError) as info:
        any_store.load("nope")
    assert info.value.container_id == "nope"
    assert any_store.list_ids() == []


def test_returned_records_are_copies(any_store: Store) -> None:
    record = rec("a", spec={"list": [1]})
    any_store.save(record)
    record.spec["list"].append(2)
    loaded = any_store.load("a")
    assert loaded.spec == {"list": [1]}
    loaded.spec["list"].append(3)
    assert any_store.load("a").spec == {"list": [1]}


def test_delete_is_idempotent(any_store: Store) -> None:
    any_store.delete("never-was")
    any_store.save(rec("a"))
    any_store.save(rec("b"))
    with any_store.lock("a"):
        any_store.delete("a")
        any_store.delete("a")
    any_store.delete("a")
    assert any_store.list_ids() == ["b"]
    with pytest.raises(ContainerNotFoundError):
        any_store.load("a")
    any_store.create(rec("a"))  # the id is free again
    assert any_store.list_ids() == ["a", "b"]


def test_list_ids_is_sorted(any_store: Store) -> None:
    for cid in ["b", "a", "c10", "c9"]:
        any_store.save(rec(cid))
    assert any_store.list_ids() == ["a", "b", "c10", "c9"]


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", "a b"])
def test_invalid_ids_are_rejected(any_store: Store, bad: str) -> None:
    with pytest.raises(InvalidIDError):
        any_store.load(bad)
    with pytest.raises(InvalidIDError):
        any_store.delete(bad)
    with pytest.raises(InvalidIDError), any_store.lock(bad):
        pass


CORRUPT = {
    "wrong-types": b'{"schema": 1, "container": {"id": 5}}',
    "truncated": record_to_json(rec("x"))[:40],
    "list": b"[]",
    "empty": b"",
    "binary": b"\xff\xfe\x00",
    "future-schema": b'{"schema": 99, "container": {}}',
    "other-id": record_to_json(rec("someone-else")),
}


@pytest.mark.parametrize("data", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_record_affects_only_its_container(any_store: Store, data: bytes) -> None:
    any_store.save(rec("good1"))
    any_store.save(rec("good2"))
    plant(any_store, "bad", data)
    with pytest.raises(CorruptMetadataError) as info:
        any_store.load("bad")
    assert info.value.container_id == "bad"
    assert 'container "bad" is corrupt' in str(info.value)
    assert any_store.list_ids() == ["bad", "good1", "good2"]
    assert any_store.load("good1") == rec("good1")
    assert any_store.load("good2") == rec("good2")
    with any_store.lock("bad"):  # a corrupt record can still be overwritten or deleted
        any_store.save(rec("bad"))
    assert any_store.load("bad") == rec("bad")


# -- locking, both stores --------------------------------------------------------------------


def test_lock_excludes_threads(any_store: Store) -> None:
    """Threads doing load-modify-save under the lock never overlap nor lose updates."""
    any_store.save(rec("counter", spec={"n": 0}))
    # For FileStore, half the threads go through a second store on the same root.
    stores = [
        any_store,
        FileStore(any_store.root) if isinstance(any_store, FileStore) else any_store,
    ]
    inside = 0
    overlaps = 0
    guard = threading.Lock()
    errors: list[BaseException] = []

    def work(store: Store) -> None:
        nonlocal inside, overlaps
        try:
            for _ in range(5):
                with store.lock("counter", timeout=20):
                    with guard:
                        inside += 1
                        overlaps += inside > 1
                    record = store.load("counter")
                    time.sleep(0.001)
                    store.save(rec("counter", spec={"n": record.spec["n"] + 1}))
                    with guard:
                        inside -= 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(stores[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert overlaps == 0
    assert any_store.load("counter").spec["n"] == 40


def test_lock_timeout_between_threads(any_store: Store) -> None:
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        with any_store.lock("busy"):
            held.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        start = time.monotonic()
        with pytest.raises(LockTimeoutError) as info, any_store.lock("busy", timeout=0.3):
            pass
        elapsed = time.monotonic() - start
        assert 0.3 <= elapsed < 5  # (waited its timeout, not for the holder)
        assert info.value.container_id == "busy"
        assert info.value.timeout == 0.3
        with pytest.raises(LockTimeoutError), any_store.lock("busy", timeout=0):
            pass
        with any_store.lock("other", timeout=0):  # other containers are not affected
            pass
    finally:
        done.set()
        thread.join(10)
    with any_store.lock("busy", timeout=0):
        pass


def test_lock_is_released_on_error(any_store: Store) -> None:
    with pytest.raises(RuntimeError), any_store.lock("a"):
        raise RuntimeError("boom")
    with any_store.lock("a", timeout=0):
        pass


def test_bad_timeout_is_rejected(any_store: Store) -> None:
    with pytest.raises(ValueError, match="timeout"), any_store.lock("a", timeout=-1):
        pass
    with pytest.raises(ValueError, match="timeout"):
        type(any_store)(lock_timeout=float("nan"))
    for wrong in (True, "1"):  # (True was taken for 1 s)
        with pytest.raises(TypeError, match="lock timeout must be a number of seconds"):
            type(any_store)(lock_timeout=wrong)  # type: ignore[arg-type]


def test_a_file_store_s_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="durable must be a bool"):
        FileStore(tmp_path, durable="no")  # type: ignore[arg-type]  (was taken for True)
    with pytest.raises(ValueError, match="must name a directory"):
        FileStore("")  # (was the working directory)


def test_delete_while_a_thread_waits(any_store: Store) -> None:
    """A waiter woken by a delete gets a lock that still excludes later lockers."""
    any_store.save(rec("doomed"))
    got_lock, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def waiter() -> None:
        with any_store.lock("doomed", timeout=20):
            try:
                any_store.load("doomed")
                seen.append("found")
            except ContainerNotFoundError:
                seen.append("gone")
            any_store.create(rec("doomed", owner="waiter"))
            got_lock.set()
            release.wait(10)

    thread = threading.Thread(target=waiter)
    try:
        with any_store.lock("doomed"):
            thread.start()
            time.sleep(0.2)  # let the waiter block on the lock
            any_store.delete("doomed")
        assert got_lock.wait(10)
        assert seen == ["gone"]
        with pytest.raises(LockTimeoutError), any_store.lock("doomed", timeout=0.2):
            pass
    finally:
        release.set()
        thread.join(10)
    assert any_store.load("doomed").owner == "waiter"


# -- FileStore: layout, atomicity, processes -------------------------------------------------


def test_file_layout_and_lock_file_lifecycle(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    assert not store.root.exists()  # nothing is made before it is needed
    with store.lock("web1"):
        assert os.listdir(store.root) == ["web1.lock"]
    assert os.listdir(store.root) == []  # no record: the lock file went on release
    with store.lock("web1"):
        store.create(rec("web1"))
        assert sorted(os.listdir(store.root)) == ["web1.json", "web1.lock"]
    assert (store.root / "web1.lock").exists()  # kept while the container exists
    store.delete("web1")  # not under the lock: only the record goes
    assert sorted(os.listdir(store.root)) == ["web1.lock"]
    with store.lock("web1"):
        store.delete("web1")
        assert (store.root / "web1.lock").exists()  # still locked until the block ends
    assert os.listdir(store.root) == []
    with store.lock("web1"):  # deleted and re-created in one block: the lock file stays
        store.delete("web1")
        store.create(rec("web1"))
    assert sorted(os.listdir(store.root)) == ["web1.json", "web1.lock"]


def test_runtime_dir(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    runtime = store.runtime_dir
    assert runtime == tmp_path / "root" / ".sandboxes"
    assert runtime.is_dir()
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o711
    assert store.list_ids() == []


def test_list_ids_ignores_stray_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    store.save(rec("ok"))
    root = store.root
    (root / "README").write_text("hello")
    (root / ".tmp-x-123").write_text("{")
    (root / "foo.lock").touch()
    (root / "sub").mkdir()
    (root / "dir.json").mkdir()
    (root / "bad id.json").write_bytes(record_to_json(rec("ok")))
    (root / "-x.json").write_bytes(b"{}")
    (root / ".hidden.json").write_bytes(b"{}")
    (root / "link.json").symlink_to(root / "ok.json")
    assert store.list_ids() == ["ok"]
    assert store.load("ok") == rec("ok")
    assert (root / ".tmp-x-123").exists()  # fresh temp files may belong to a live writer


def test_stale_temp_files_are_cleaned(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    store.save(rec("a"))
    stale, fresh = store.root / ".tmp-a-dead", store.root / ".tmp-a-live"
    stale.write_text("{")
    fresh.write_text("{")
    old = time.time() - 120
    os.utime(stale, (old, old))
    assert store.list_ids() == ["a"]
    assert not stale.exists()
    assert fresh.exists()


def test_stale_lock_files_of_no_record_are_dropped_unless_held(tmp_path: Path) -> None:
    """A creator killed between taking the lock and writing the record left its lock file,
    which no destroy would ever remove (list shows no such container)."""
    store = FileStore(tmp_path / "root")
    store.save(rec("kept"))
    names = ("kept", "orphan", "held", "fresh")
    for cid in names:
        (store.root / f"{cid}.lock").touch()
    old = time.time() - 120
    for cid in names[:3]:
        os.utime(store.root / f"{cid}.lock", (old, old))
    with store.lock("held"):
        assert store.list_ids() == ["kept"]
        left = sorted(p.name for p in store.root.glob("*.lock"))
        assert left == ["fresh.lock", "held.lock", "kept.lock"]
    # (the holder dropped its own as it let go: no record)
    assert sorted(p.name for p in store.root.glob("*.lock")) == ["fresh.lock", "kept.lock"]


def test_save_leaves_no_temp_files_and_replaces_atomically(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    store.save(rec("a", owner="1"))
    inode = (store.root / "a.json").stat().st_ino
    store.save(rec("a", owner="2"))
    assert (store.root / "a.json").stat().st_ino != inode  # a new file, renamed into place
    assert sorted(os.listdir(store.root)) == ["a.json"]
    assert store.load("a").owner == "2"


def test_long_ids(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    longest = "a" * MAX_FILE_ID_LENGTH
    with store.lock(longest):
        store.create(rec(longest))
    assert store.list_ids() == [longest]
    assert store.load(longest).id == longest
    too_long = "a" * (MAX_FILE_ID_LENGTH + 1)
    with pytest.raises(InvalidIDError, match="file store"):
        store.save(rec(too_long))
    with pytest.raises(InvalidIDError), store.lock(too_long):
        pass
    memory = MemoryStore()
    memory.save(rec("b" * 1024))  # only files are bounded by NAME_MAX
    assert memory.list_ids() == ["b" * 1024]


def test_lock_fd_is_close_on_exec(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    lock_path = str(store.root / "a.lock")
    with store.lock("a"):
        fds = [
            int(fd)
            for fd in os.listdir("/proc/self/fd")
            if os.path.realpath(f"/proc/self/fd/{fd}") == lock_path
        ]
        assert len(fds) == 1
        assert fcntl.fcntl(fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False
        )
        try:
            assert lock_path not in open_paths(child.pid)
        finally:
            child.kill()
            child.wait()


def test_create_race_between_16_processes(tmp_path: Path, children: Children) -> None:
    root, go = tmp_path / "root", tmp_path / "go"
    code = """
        me, go = sys.argv[2], sys.argv[3]
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.001)
        try:
            with store.lock("racer", timeout=30):
                store.create(rec("racer", owner=me))
            print("won", me)
        except ContainerExistsError as exc:
            print("lost", exc)
    """
    procs = [children.start(code, root, i, go) for i in range(16)]
    for proc in procs:
        children.expect(proc, "ready")
    go.touch()
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 16, [err for _, err in results]
    lines = [out.strip() for out, _ in results]
    winners = [line.split()[1] for line in lines if line.startswith("won ")]
    losers = [line for line in lines if line.startswith("lost ")]
    assert len(winners) == 1, lines
    assert len(losers) == 15, lines
    assert all('container "racer" already exists' in line for line in losers)
    store = FileStore(root)
    assert store.load("racer").owner == winners[0]
    assert store.list_ids() == ["racer"]


def test_create_is_atomic_even_without_the_lock(tmp_path: Path, children: Children) -> None:
    root, go = tmp_path / "root", tmp_path / "go"
    code = """
        me, go = sys.argv[2], sys.argv[3]
        print("ready", flush=True)
        while not os.path.exists(go):
            pass
        try:
            store.create(rec("racer", owner=me))
            print("won", me)
        except ContainerExistsError:
            print("lost")
    """
    procs = [children.start(code, root, i, go) for i in range(8)]
    for proc in procs:
        children.expect(proc, "ready")
    go.touch()
    lines = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    winners = [line.split()[1] for line in lines if line.startswith("won ")]
    assert len(winners) == 1, lines
    assert lines.count("lost") == 7
    assert FileStore(root).load("racer").owner == winners[0]


def test_writer_killed_mid_save_never_corrupts(tmp_path: Path, children: Children) -> None:
    root = tmp_path / "root"
    store = FileStore(root)
    blob = "x" * 2_000_000  # big enough that a save takes a while
    store.create(rec("victim", owner="0", spec={"n": 0, "blob": blob}))
    code = """
        blob = "x" * 2_000_000
        i = int(sys.argv[2])
        while True:
            i += 1
            store.save(rec("victim", owner=str(i), spec={"n": i, "blob": blob}))
            if i == int(sys.argv[2]) + 1:
                print("saving", flush=True)
    """
    rng = random.Random(1234)
    last = 0
    for _ in range(5):
        proc = children.start(code, root, last)
        children.expect(proc, "saving")
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        record = store.load("victim")  # never CorruptMetadataError
        assert record.spec["blob"] == blob
        assert record.spec["n"] == int(record.owner)
        assert record.spec["n"] > last
        last = record.spec["n"]
        assert store.list_ids() == ["victim"]


@pytest.mark.parametrize("operation", ["save", "create"])
def test_crash_at_every_step_of_a_write(tmp_path: Path, operation: str) -> None:
    """A forked writer SIGKILLs itself before its k-th C call, for every k: old or new survives."""
    store = FileStore(tmp_path / "root")
    old, new = rec("a", owner="old"), rec("a", owner="new")
    crashes = 0
    for k in range(1, 1000):
        if operation == "save":
            store.save(old)
        else:
            store.delete("a")
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            calls = 0

            def die(frame: object, event: str, arg: object, last: int = k) -> None:
                nonlocal calls
                if event == "c_call":
                    calls += 1
                    if calls == last:
                        os.kill(os.getpid(), signal.SIGKILL)

            try:
                sys.setprofile(die)
                getattr(store, operation)(new)
            except BaseException:
                os._exit(3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        try:
            survivor: ContainerRecord | None = store.load("a")
        except ContainerNotFoundError:
            survivor = None
        assert survivor in ((old, new) if operation == "save" else (None, new)), k
        assert store.list_ids() == ([] if survivor is None else ["a"])
        if not os.WIFSIGNALED(status):
            assert os.WEXITSTATUS(status) == 0
            break  # the write finished before its k-th call: every step was covered
        crashes += 1
    assert crashes >= 10
    assert store.load("a") == new


def test_lock_timeout_across_processes(tmp_path: Path, children: Children) -> None:
    root = tmp_path / "root"
    holder = children.start(
        """
        with store.lock(sys.argv[2]):
            print("locked", flush=True)
            sys.stdin.read()
        """,
        root,
        "held",
    )
    children.expect(holder, "locked")
    store = FileStore(root)
    start = time.monotonic()
    with pytest.raises(LockTimeoutError) as info, store.lock("held", timeout=0.3):
        pass
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 5  # (waited its timeout, not for the holder)
    assert info.value.container_id == "held"
    assert 'container "held"' in str(info.value)
    assert "0.3s" in str(info.value)
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(10) == 0
    with store.lock("held", timeout=1):  # the holder's exit freed it
        pass


def test_delete_while_another_process_waits(tmp_path: Path, children: Children) -> None:
    root = tmp_path / "root"
    store = FileStore(root)
    lock_path = str(root / "doomed.lock")
    waiter_code = """
        with store.lock("doomed", timeout=30):
            try:
                store.load("doomed")
                print("found", flush=True)
            except ContainerNotFoundError:
                print("gone", flush=True)
            store.create(rec("doomed", owner="waiter"))
            print("created", flush=True)
            sys.stdin.read()
    """
    with store.lock("doomed"):
        store.create(rec("doomed", owner="parent"))
        waiter = children.start(waiter_code, root)
        # Wait until the waiter has opened the lock file and is polling for it.
        wait_until(lambda: lock_path in open_paths(waiter.pid))
        store.delete("doomed")
    children.expect(waiter, "gone")
    children.expect(waiter, "created")
    # The waiter's lock is on the lock file that exists now, not on the deleted one.
    with pytest.raises(LockTimeoutError), store.lock("doomed", timeout=0.3):
        pass
    assert store.load("doomed").owner == "waiter"
    assert waiter.stdin is not None
    waiter.stdin.close()
    assert waiter.wait(10) == 0
    with store.lock("doomed", timeout=1):
        pass


# -- FileStore: modes and the default root ---------------------------------------------------


@needs_root
def test_modes_as_root(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    with store.lock("a"):
        store.create(rec("a"))
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o711
    assert stat.S_IMODE((store.root / "a.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((store.root / "a.lock").stat().st_mode) == 0o600


def test_root_mode_when_not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    store = FileStore(tmp_path / "root")
    store.save(rec("a"))
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.root / "a.json").stat().st_mode) == 0o600


def test_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert default_root() == Path("/run/sandboxrt")
    assert FileStore().root == Path("/run/sandboxrt")  # nothing is created yet

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_root() == tmp_path / "xdg" / "sandboxrt"
    assert FileStore().root == tmp_path / "xdg" / "sandboxrt"

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_root() == tmp_path / "tmp" / "sandboxrt-1000"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")  # not usable: fall back
    assert default_root() == tmp_path / "tmp" / "sandboxrt-1000"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert default_root() == tmp_path / "tmp" / "sandboxrt-1000"
    assert not (tmp_path / "tmp").exists()


@needs_root
def test_fallback_root_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / "sandboxrt-4242"

    planted.mkdir(mode=0o700)  # made by someone else (uid 0, not 4242)
    with pytest.raises(SystemCallError, match="not a directory private to uid 4242") as info:
        FileStore().list_ids()
    assert info.value.errno == errno.EPERM
    with pytest.raises(SystemCallError):
        FileStore().save(rec("a"))

    os.chown(planted, 4242, 4242)
    planted.chmod(0o755)  # ours, but readable by others
    with pytest.raises(SystemCallError):
        FileStore().load("a")

    planted.chmod(0o700)
    store = FileStore()
    store.save(rec("a"))
    assert store.list_ids() == ["a"]

    planted.rename(tmp_path / "elsewhere")
    planted.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SystemCallError):
        FileStore().list_ids()


# -- MemoryStore specifics -------------------------------------------------------------------


def test_memory_runtime_dir_is_private_and_removed() -> None:
    store = MemoryStore()
    runtime = store.runtime_dir
    assert runtime.is_dir()
    assert runtime.name.startswith("sandboxrt-mem-")
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert store.runtime_dir == runtime
    del store
    gc.collect()
    assert not runtime.exists()


def test_memory_runtime_dir_given(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "given")
    assert store.runtime_dir == tmp_path / "given"
    assert (tmp_path / "given").is_dir()
    # Not another's: ids are unique in a store, so two would take each other's files.
    with pytest.raises(InvalidArgumentError, match="runtime directory of another MemoryStore"):
        MemoryStore(tmp_path / "given")
    for spelling in (tmp_path / "given" / ".." / "given", tmp_path / "link"):
        if spelling.name == "link":
            spelling.symlink_to(tmp_path / "given")
        with pytest.raises(ValueError, match="runtime directory of another MemoryStore"):
            MemoryStore(spelling)  # (the same directory, spelled otherwise)
    del store
    gc.collect()
    assert MemoryStore(tmp_path / "given").runtime_dir == tmp_path / "given"  # (free again)


def test_a_relative_memory_runtime_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolved once: the sandboxes (and the fork server, started elsewhere) find it
    wherever this process's working directory goes next."""
    monkeypatch.chdir(tmp_path)
    store = MemoryStore("relative")
    monkeypatch.chdir("/")
    assert store.runtime_dir == tmp_path / "relative"
    assert store.runtime_dir.is_dir()


def test_memory_stores_are_independent() -> None:
    first, second = MemoryStore(), MemoryStore()
    first.save(rec("a"))
    assert second.list_ids() == []
    with first.lock("a"), second.lock("a", timeout=0):
        pass


def test_memory_locks_of_missing_containers_are_dropped() -> None:
    store = MemoryStore()
    for i in range(100):
        with store.lock(f"probe{i}"):
            pass
    store.save(rec("kept"))
    with store.lock("kept"):
        pass
    assert list(store._locks) == ["kept"]


def test_records_serialise_from_many_threads_at_once() -> None:
    # The cache of specs' JSON texts was evicted by two threads at once: KeyError or
    # "dictionary changed size during iteration" out of a save.
    errors: list[BaseException] = []

    def save_many(k: int) -> None:
        try:
            for i in range(2000):
                spec_text({"k": k, "i": i})
        except Exception as exc:  # checked below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # a thread switch at almost every bytecode
    try:
        threads = [threading.Thread(target=save_many, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_a_spec_too_large_to_run_is_not_kept_as_text() -> None:
    """The JSON text kept per spec (for saves) is not kept for one no sandbox takes: a
    refused creation would keep it in memory for good."""
    from sandboxrt._core import records

    big = {"annotations": {"big": "x" * (5 << 20)}}
    assert len(records.spec_text(big)) > 5 << 20
    assert all(spec is not big for spec, _ in records._SPEC_TEXTS.values())
    small = {"annotations": {"small": "x"}}
    records.spec_text(small)
    assert any(spec is small for spec, _ in records._SPEC_TEXTS.values())


def _interrupting(real: Any) -> Any:
    """``real``, after which a Ctrl-C lands, as the call returns."""

    def call(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return result

    return call


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_ctrl_c_right_after_an_open_loses_no_fd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record's temporary file and a process's pidfd: the interrupt waits until what
    was opened is owned (it was lost, open, for the life of the caller)."""
    from sandboxrt.sandbox import identity_of, open_pidfd

    store = FileStore(tmp_path / "s")
    store.save(rec("warm"))  # (the root exists: only the record's file is opened below)
    me = identity_of(os.getpid())
    assert me is not None
    before = _fds()
    monkeypatch.setattr(os, "open", _interrupting(os.open))
    with pytest.raises(KeyboardInterrupt):
        store.save(rec("a"))
    monkeypatch.undo()
    monkeypatch.setattr(os, "pidfd_open", _interrupting(os.pidfd_open))
    with pytest.raises(KeyboardInterrupt):
        open_pidfd(me)
    monkeypatch.undo()
    assert _fds() == before
    assert store.list_ids() == ["warm"]  # (and no temporary file either)


def test_the_exec_statuses_a_sandbox_records_fit_what_is_read() -> None:
    """The most it records (the latest ``EXEC_EXITS_KEPT``), with the longest ids, fit in
    what the library reads: a truncated record read ``ProtocolError`` for every wait."""
    from sandboxrt._core.protocol import EXEC_EXITS_KEPT, ExecExits, encode
    from sandboxrt.sandbox import _EXEC_EXITS_MAX

    longest = "\u00e9" * 1024  # (escaped in JSON: six characters each)
    record = ExecExits(tuple((i, i, longest, 0) for i in range(EXEC_EXITS_KEPT)))
    assert len(encode(record)) < _EXEC_EXITS_MAX


def test_a_ctrl_c_as_a_lock_is_taken_or_let_go_leaves_it_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Landing as the release asks whether the record exists, or as the lock is taken,
    it left the lock held by nobody, for good (every later operation on the container
    timed out, from any process)."""
    for store in (FileStore(tmp_path / "s"), MemoryStore()):
        store.save(rec("a"))
        before = _fds()
        for method in ("_exists", "_acquire"):
            monkeypatch.setattr(store, method, _interrupting(getattr(store, method)))
            with pytest.raises(KeyboardInterrupt), store.lock("a", timeout=1):
                pass
            monkeypatch.undo()
            with store.lock("a", timeout=0):  # free again
                pass
        assert _fds() == before


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_a_relative_store_path_under_a_removed_cwd_is_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """``getcwd`` fails once the working directory is removed: the path cannot be made
    absolute, and the error says so (it was a bare ``FileNotFoundError``)."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(InvalidArgumentError, match="relative to a working directory removed"):
        FileStore("relative") if kind == "file" else MemoryStore("relative")
