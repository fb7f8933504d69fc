"""Many containers at once, from threads and processes sharing one store; racing operations.

Afterwards nothing may be left: no supervisor, no record, no lock file, no
runtime directory, no host mount, no cgroup.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import (
    BundleFactory,
    children_of_this_process,
    needs_busybox,
    needs_root,
    supervisor_pids,
)

import sandboxrt
from sandboxrt import (
    Config,
    Container,
    ContainerNotFoundError,
    FileStore,
    InvalidStateError,
    LockTimeoutError,
    MemoryStore,
    Spec,
    Status,
    read_spec_file,
)
from sandboxrt._os import cgroups

pytestmark = [needs_root, needs_busybox]

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(sandboxrt.__file__)))
CGROUP_ROOT = Path("/sys/fs/cgroup")


def with_args(spec: Spec, args: list[str]) -> Spec:
    assert spec.process is not None
    return attrs.evolve(spec, process=attrs.evolve(spec.process, args=args))


def cgroup_dirs(marker: str, max_depth: int = 5) -> set[str]:
    """Cgroup directories whose name contains ``marker``."""
    found: set[str] = set()
    if not CGROUP_ROOT.is_dir():
        return found
    base_depth = len(CGROUP_ROOT.parts)
    for dirpath, dirnames, _ in os.walk(CGROUP_ROOT):
        if len(Path(dirpath).parts) - base_depth >= max_depth:
            dirnames[:] = []
        found.update(os.path.join(dirpath, d) for d in dirnames if marker in d)
    return found


def assert_store_empty(store: FileStore) -> None:
    """No record, no lock or temp file, no runtime directory left in ``store``."""
    assert Container.list(store=store) == []
    assert sorted(os.listdir(store.root)) in ([], [".sandboxes"]), os.listdir(store.root)
    assert os.listdir(store.runtime_dir) == []


# --- 20 containers from 4 threads and 4 processes ----------------------------------------------

_WORKER = """
import json, sys
sys.path.insert(0, {parent!r})
import attrs
from sandboxrt import Container, FileStore, read_spec_file

root, bundle, prefix, count, base, outdir = sys.argv[1:]
store = FileStore(root)
spec = read_spec_file(bundle + "/config.json")
codes = {{}}
for j in range(int(count)):
    cid = f"{{prefix}}-{{j}}"
    code = int(base) + j
    args = ["sh", "-c", f"echo out {{cid}}; exit {{code}}"]
    one = attrs.evolve(spec, process=attrs.evolve(spec.process, args=args))
    with open(f"{{outdir}}/{{cid}}.out", "wb") as out:
        codes[cid] = Container.run(cid, bundle, store=store, spec=one, stdout=out)
print(json.dumps(codes))
"""

PROCESSES, PER_PROCESS = 4, 3
THREADS, PER_THREAD = 4, 2


def test_twenty_containers_from_threads_and_processes(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    path = bundle(["true"])
    spec = read_spec_file(path / "config.json")
    outdir = tmp_path / "out"
    outdir.mkdir()
    tag = f"cc{os.getpid()}"
    cgroups_before = cgroup_dirs(tag) | cgroup_dirs("sandboxrt")
    # One container first: a launcher may keep a helper process for the whole process.
    assert Container.run("warm-up", path, store=MemoryStore()) == 0
    children_before = children_of_this_process()
    supervisors_before = supervisor_pids()
    store.runtime_dir  # noqa: B018 - create the store before the racers do

    expected: dict[str, tuple[int, str]] = {}
    workers = []
    for i in range(PROCESSES):
        prefix, base = f"{tag}-p{i}", 10 + PER_PROCESS * i
        for j in range(PER_PROCESS):
            expected[f"{prefix}-{j}"] = (base + j, f"out {prefix}-{j}\n")
        code = _WORKER.format(parent=PACKAGE_PARENT)
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    code,
                    str(store.root),
                    str(path),
                    prefix,
                    str(PER_PROCESS),
                    str(base),
                    str(outdir),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )

    results: dict[str, tuple[int, str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def thread_main(t: int) -> None:
        try:
            barrier.wait(timeout=30)
            for k in range(PER_THREAD):
                cid = f"{tag}-t{t}-{k}"
                code = 40 + PER_THREAD * t + k
                one = with_args(spec, ["sh", "-c", f"echo out {cid}; exit {code}"])
                container = Container.create(
                    cid, path, store=store, spec=one, stdout=subprocess.PIPE
                )
                try:
                    # Each has a cgroup of its own, named after it: the leak check means something.
                    assert len(cgroup_dirs(cid)) >= 1, cid
                    container.start()
                    assert container.stdout is not None
                    output = container.stdout.read().decode()
                    results[cid] = (container.wait(timeout=30), output)
                finally:
                    if container.stdout is not None:
                        container.stdout.close()
                    container.destroy()
        except BaseException as exc:
            errors.append(exc)

    for t in range(THREADS):
        for k in range(PER_THREAD):
            cid = f"{tag}-t{t}-{k}"
            expected[cid] = (40 + PER_THREAD * t + k, f"out {cid}\n")
    threads = [threading.Thread(target=thread_main, args=(t,)) for t in range(THREADS)]
    start = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            for cid, code in json.loads(out).items():
                results[cid] = (code, (outdir / f"{cid}.out").read_text())
    finally:
        for worker in workers:  # (a worker that failed or hung: its containers go with
            if worker.poll() is None:  # the store fixture)
                worker.kill()
            worker.communicate()
    elapsed = time.monotonic() - start
    print(f"\n{len(results)} containers in {elapsed:.2f}s")

    assert not errors, errors
    assert len(expected) == PROCESSES * PER_PROCESS + THREADS * PER_THREAD == 20
    assert results == expected

    assert_store_empty(store)
    assert supervisor_pids() - supervisors_before == set()
    extra = children_of_this_process() - children_before
    assert extra == set(), [(p, Path(f"/proc/{p}/stat").read_text()[:80]) for p in extra]
    assert cgroup_dirs(tag) == set()
    cgroups.release_parents()  # the parent levels this process kept for its next containers
    assert (cgroup_dirs(tag) | cgroup_dirs("sandboxrt")) - cgroups_before == set()


# --- racing operations on one container --------------------------------------------------------


@pytest.fixture
def destroy_log(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "poststop.log"


def _container_with_poststop(
    cid: str, store: FileStore, bundle: BundleFactory, log: Path, args: list[str]
) -> Container:
    path = bundle(args)
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"echo {cid} >> {log}"]}
    doc = json.loads((path / "config.json").read_text())
    doc["hooks"] = {"poststop": [hook]}
    (path / "config.json").write_text(json.dumps(doc))
    return Container.create(cid, path, store=store)


def _race_destroy_destroy_kill(cid: str, store: FileStore) -> list[Any]:
    """destroy, destroy and kill at the same moment from three threads; their outcomes."""
    # Each thread drives its own handle, as separate callers would.
    handles = [Container.load(cid, store=store) for _ in range(3)]
    barrier = threading.Barrier(3)
    outcomes: list[Any] = [None] * 3

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            if i < 2:
                handles[i].destroy()
            else:
                handles[i].kill(signal.SIGKILL)
            outcomes[i] = "ok"
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


@pytest.mark.parametrize("state", ["created", "running", "stopped"])
def test_two_destroys_and_a_kill_at_once(
    state: str, store: FileStore, bundle: BundleFactory, destroy_log: Path
) -> None:
    rounds = 4
    for n in range(rounds):
        cid = f"race-{state}-{n}"
        container = _container_with_poststop(
            cid, store, bundle, destroy_log, ["sleep", "30"] if state != "stopped" else ["true"]
        )
        if state != "created":
            container.start()
        if state == "stopped":
            assert container.wait(timeout=10) == 0
        outcomes = _race_destroy_destroy_kill(cid, store)
        assert outcomes[0] == "ok" and outcomes[1] == "ok", outcomes
        # kill: fine, or the container was already destroyed / had stopped.
        assert outcomes[2] == "ok" or isinstance(
            outcomes[2], ContainerNotFoundError | InvalidStateError
        ), repr(outcomes[2])
        if isinstance(outcomes[2], InvalidStateError):
            assert state == "stopped"
        with pytest.raises(ContainerNotFoundError):
            Container.load(cid, store=store)
    # poststop ran exactly once per container: each was destroyed once.
    lines = destroy_log.read_text().split()
    assert sorted(lines) == sorted(f"race-{state}-{n}" for n in range(rounds))
    assert_store_empty(store)


def test_kills_from_many_threads(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create("many-kills", bundle(["sleep", "30"]), store=store)
    container.start()
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def kill() -> None:
        try:
            barrier.wait(timeout=10)
            Container.load("many-kills", store=store).kill(signal.SIGKILL)
        except InvalidStateError:
            pass  # it had stopped already
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=kill) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert not errors, errors
        assert container.wait(timeout=10) == -signal.SIGKILL
        assert container.status is Status.STOPPED
    finally:
        container.destroy()
    assert_store_empty(store)


# --- the store lock across processes -----------------------------------------------------------

_HOLDER = """
import sys
sys.path.insert(0, {parent!r})
from sandboxrt import FileStore
with FileStore(sys.argv[1]).lock(sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.read()
"""


class LockHolder:
    """Another process that holds a container's lock until :meth:`release`."""

    def __init__(self, store: FileStore, cid: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER.format(parent=PACKAGE_PARENT), str(store.root), cid],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "locked\n"

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=10) == 0
        assert self.process.stdout is not None
        self.process.stdout.close()


def test_start_waits_for_a_lock_held_by_another_process(
    store: FileStore, bundle: BundleFactory
) -> None:
    container = Container.create("locked", bundle(["true"]), store=store)
    try:
        holder = LockHolder(store, "locked")
        released = threading.Event()

        def release() -> None:
            released.set()
            holder.release()

        timer = threading.Timer(0.6, release)
        timer.start()
        try:
            container.start()
        finally:
            timer.join()
        assert released.is_set()  # it went on only once the holder let go
        assert container.wait(timeout=10) == 0
    finally:
        container.destroy()
    assert_store_empty(store)


def test_operations_wait_for_the_lock_as_long_as_the_store_says(
    tmp_path: Path, bundle: BundleFactory
) -> None:
    """Without ``Config(lock_timeout=...)``, the store's own ``lock_timeout`` holds."""
    store = FileStore(tmp_path / "impatient-store", lock_timeout=0.5)
    container = Container.create("waits-little", bundle(["true"]), store=store)
    try:
        holder = LockHolder(store, "waits-little")
        try:
            with pytest.raises(LockTimeoutError) as info:
                container.start()
            assert info.value.timeout == 0.5
        finally:
            holder.release()
    finally:
        container.destroy()
    assert_store_empty(store)


#: Each operation that changes a container, as a test calls it (the container made with
#: ``Config(lock_timeout=0.3)``; a create of its id too).
_LOCKING: dict[str, Callable[[Container, Path, FileStore], object]] = {
    "create": lambda c, path, store: Container.create(
        c.id, path, store=store, config=Config(lock_timeout=0.3)
    ),
    "start": lambda c, path, store: c.start(),
    "kill": lambda c, path, store: c.kill(signal.SIGKILL),
    "kill-all": lambda c, path, store: c.kill(signal.SIGKILL, all=True),
    "pause": lambda c, path, store: c.pause(),
    "resume": lambda c, path, store: c.resume(),
    "exec": lambda c, path, store: c.exec(["true"]),
    "files": lambda c, path, store: c.files.read_bytes("/bin/sh"),
    "export_changes": lambda c, path, store: c.export_changes(io.BytesIO()),
    "update": lambda c, path, store: c.update({"pids": {"limit": 100}}),
    "destroy": lambda c, path, store: c.destroy(),
}


@pytest.mark.parametrize("operation", list(_LOCKING))
def test_every_operation_that_changes_a_container_takes_its_lock(
    store: FileStore, bundle: BundleFactory, operation: str
) -> None:
    """Another process holding the container's lock holds up every operation that changes
    it, which gives up at the lock's timeout having changed nothing (its init lives on)."""
    path = bundle(["sleep", "1000"])
    # (files: its gofer starts under the lock; export_changes: of an overlay root)
    config = Config(lock_timeout=0.3, lazy_gofer=True, overlay=operation == "export_changes")
    container = Container.create("held", path, store=store, config=config)
    try:
        if operation != "start":
            container.start()
        if operation == "resume":
            container.pause()
        status = container.status
        holder = LockHolder(store, "held")
        try:
            with pytest.raises(LockTimeoutError) as info:
                _LOCKING[operation](container, path, store)
            assert info.value.container_id == "held"
        finally:
            holder.release()
        assert container.status is status
        assert container.processes(), "the init did not live on"
        if operation == "resume":
            container.resume()
        assert container.exec_run(["true"]).returncode == 0
    finally:
        container.destroy()
    assert_store_empty(store)


def test_start_gives_up_after_the_lock_timeout(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create(
        "impatient", bundle(["true"]), store=store, config=Config(lock_timeout=0.5)
    )
    try:
        holder = LockHolder(store, "impatient")
        try:
            started = time.monotonic()
            with pytest.raises(LockTimeoutError) as info:
                container.start()
            waited = time.monotonic() - started
            assert 0.4 <= waited < 5, waited
            assert '"impatient"' in str(info.value)
            assert info.value.container_id == "impatient"
            assert isinstance(info.value, TimeoutError)
            # destroy is refused too, and nothing changed meanwhile
            with pytest.raises(LockTimeoutError):
                container.destroy()
        finally:
            holder.release()
        assert container.status is Status.CREATED
        container.start()
        assert container.wait(timeout=10) == 0
    finally:
        container.destroy()
    assert_store_empty(store)
