"""The container lifecycle with real sandboxes: exit codes, wait, kill, destroy, load, state."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import (
    BundleFactory,
    edit_config,
    has_sys_resource,
    in_python,
    killed_after,
    needs_busybox,
    needs_root,
    run_output,
    store_cgroups,
    supervisor_pids,
    wait_until,
    words_then_killed,
)

from sandboxrt import (
    Config,
    Container,
    CreateTimeoutError,
    FileStore,
    MemoryStore,
    Pod,
    SandboxrtError,
    Status,
)
from sandboxrt import container as container_module
from sandboxrt._core.records import ProcessIdentity
from sandboxrt._os import procfs
from sandboxrt.errors import (
    AmbiguousIDError,
    ContainerExistsError,
    ContainerNotFoundError,
    InitError,
    InvalidArgumentError,
    InvalidStateError,
    ProcessTimeoutError,
    SpecError,
    WaitTimeoutError,
)
from sandboxrt.sandbox import Sandbox
from sandboxrt.stores import file as file_store_module

pytestmark = [needs_root, needs_busybox]

REPO = Path(__file__).resolve().parent.parent


# -- helpers ---------------------------------------------------------------------------------


def in_subprocess(store: FileStore, code: str, timeout: float = 30) -> subprocess.Popen[str]:
    """Start ``python -c`` with ``store`` bound to a FileStore of the same root."""
    prelude = (
        "import json, sys\n"
        "from sandboxrt import Container, FileStore\n"
        f"store = FileStore({str(store.root)!r})\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", prelude + code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def descendants(pid: int) -> dict[int, bytes]:
    """The processes below ``pid`` on the host, with their command lines."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = procfs.read_stat(int(name))
            if info is not None and info.state not in "ZX":
                children.setdefault(info.ppid, []).append(int(name))
    found: dict[int, bytes] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            todo.append(child)
    return found


def sleepers(supervisor: int) -> list[int]:
    return [pid for pid, cmd in descendants(supervisor).items() if cmd == b"sleep\x001000\x00"]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition never became true"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    info = procfs.read_stat(pid)
    return info is not None and info.state not in "ZX"


def leftovers(store: FileStore) -> list[str]:
    """Whatever a failed create could have left in the store."""
    runtime = Path(store.runtime_dir)
    found = [f"record {cid}" for cid in Container.list(store=store)]
    if runtime.exists():
        found += [f"runtime {p.name}" for p in runtime.iterdir()]
    return found


def start_ready(store: FileStore, bundle: Path, cid: str = "c1") -> Container:
    """Create and start a container whose program prints ``ready`` when set up."""
    container = Container.create(cid, bundle, store=store, stdout=subprocess.PIPE)
    container.start()
    assert container.stdout is not None
    assert container.stdout.readline() == b"ready\n"
    return container


# -- 1. exit codes and signals ---------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_code(store: FileStore, bundle: BundleFactory, code: int) -> None:
    path = bundle(["sh", "-c", f"exit {code}"])
    assert Container.run("exit", path, store=store) == code
    assert Container.list(store=store) == []


def test_run_with_a_timeout_kills_the_container_and_raises(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """As ``subprocess.run(timeout=...)``: the program is killed, the error raised."""
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    # Both sandboxrt's and subprocess's: ``except subprocess.TimeoutExpired`` catches it.
    with pytest.raises(
        subprocess.TimeoutExpired,
        match=r'"slow": its init \(\[\'sleep\', \'60\'\]\) was killed after',
    ) as exc:
        Container.run("slow", bundle(["sleep", "60"]), store=store, timeout=0.5, pid_file=pid_file)
    assert isinstance(exc.value, WaitTimeoutError)
    assert exc.value.killed  # (run kills it, as subprocess.run does)
    assert (exc.value.cmd, exc.value.timeout) == (["sleep", "60"], 0.5)
    assert time.monotonic() - started < 30  # (not the program's 60 s)
    assert Container.list(store=store) == []
    assert int(pid_file.read_text()) not in supervisor_pids()  # the sandbox ended
    # A program that ends in time gives its code, as without a timeout.
    assert Container.run("quick", bundle(["sh", "-c", "exit 4"]), store=store, timeout=30) == 4


@pytest.mark.parametrize("rootfs", ["busybox", "host_usr"])
def test_a_bundle_made_again_in_the_same_place_runs_its_new_program(
    store: FileStore, tmp_path: Path, rootfs: str
) -> None:
    """Running an example twice makes its bundle twice (the second time raised
    FileExistsError on the rootfs's symlinks)."""
    from sandboxrt.bundle import make_bundle

    path = tmp_path / "bundle"
    make_bundle(path, ["sh", "-c", "exit 3"], rootfs=rootfs)  # type: ignore[arg-type]
    make_bundle(path, ["sh", "-c", "exit 4"], rootfs=rootfs)  # type: ignore[arg-type]
    assert Container.run("again", path, store=store) == 4


def test_no_store_is_a_file_store_at_the_default_root(
    bundle: BundleFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``store=None`` (left out) is a ``FileStore`` at ``default_root()``, for every call
    that takes a store; a ``Config`` is frozen, as the contract has it."""
    root = tmp_path / "default-root"
    monkeypatch.setattr(file_store_module, "default_root", lambda: root)
    container = Container.create("nostore", bundle(["true"]))
    try:
        assert (root / "nostore.json").is_file()
        assert Container.list() == ["nostore"]
        assert Container.load("nost").id == "nostore"
        assert Pod.load("nostore").root.id == "nostore"
    finally:
        container.destroy()
    assert Container.list() == []
    assert Container.run("nostore-run", bundle(["true"])) == 0
    assert Container.list() == []
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Config().network = "host"  # type: ignore[misc]


def test_a_with_block_destroys_the_container_and_closes_its_pipes(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["sh", "-c", "echo hi; sleep 60"])
    with Container.create("w1", path, store=store, stdout=subprocess.PIPE) as container:
        container.start()
        assert container.stdout is not None
        assert container.stdout.readline() == b"hi\n"
    assert container.stdout.closed
    assert Container.list(store=store) == []
    # Left by an exception: destroyed all the same, and the exception goes on.
    with pytest.raises(KeyError), Container.create("w2", path, store=store) as container:
        container.start()
        raise KeyError("mine")
    assert Container.list(store=store) == []


def test_communicate_serves_the_init_s_pipes_together(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As ``Popen.communicate``: more than a pipe holds on stderr before anything on
    stdout does not block the program, the input reaches it, and it is waited for."""
    script = "head -c 300000 /dev/zero >&2; cat; exit 5"
    pipes = dict.fromkeys(("stdin", "stdout", "stderr"), subprocess.PIPE)
    with Container.create("talk", bundle(["sh", "-c", script]), store=store, **pipes) as container:
        container.start()
        out, err = container.communicate(b"to the init\n", timeout=30)
        assert (out, err) == (b"to the init\n", bytes(300000))
        assert container.status is Status.STOPPED
        assert container.wait(timeout=10) == 5


def test_communicate_times_out_with_the_output_so_far_and_goes_on(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["sh", "-c", "echo first; sleep 1; read line; echo $line"])
    pipes = dict.fromkeys(("stdin", "stdout"), subprocess.PIPE)
    with Container.create("talk-later", path, store=store, **pipes) as container:
        container.start()
        assert container.stdin is not None
        container.stdin.write(b"second\n")  # (flushed by communicate, then closed)
        with pytest.raises(ProcessTimeoutError) as caught:
            container.communicate(timeout=0.3)
        assert caught.value.output in (b"", b"first\n")
        assert container.status is Status.RUNNING  # (it runs on)
        assert container.communicate(timeout=30) == (b"first\nsecond\n", None)
        with pytest.raises(InvalidArgumentError, match="after starting communication"):
            container.communicate(b"more")


def test_communicate_reads_the_init_s_terminal_as_stdout(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["sh", "-c", "read line; echo got $line"], terminal=True)
    with Container.create("talk-tty", path, store=store) as container:
        container.start()
        out, err = container.communicate(b"this", timeout=30)
        assert err is None and out is not None
        assert out.replace(b"\r", b"").endswith(b"got this\n")


@pytest.mark.parametrize("how", ["PIPE", "a pipe of the caller's"])
def test_the_sandbox_lets_go_of_the_caller_s_pipes_once_the_program_exits(
    store: FileStore, bundle: BundleFactory, how: str
) -> None:
    """A reader of the program's output gets its end of file when the program exits, not
    when the container is destroyed: no process of the sandbox (supervisor, gofer) keeps
    the pipe open, as ``subprocess`` promises of a child's."""
    path = bundle(["sh", "-c", "echo out; echo err >&2"])
    read_end = write_end = -1
    streams: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    if how != "PIPE":
        read_end, write_end = os.pipe()
        streams = {"stdout": write_end, "stderr": write_end}
    try:
        container = Container.create("lets-go", path, store=store, **streams)
    except BaseException:
        if read_end >= 0:
            os.close(read_end)
        raise
    finally:
        if write_end >= 0:
            os.close(write_end)  # (the container has its own)
    with contextlib.ExitStack() as closing:
        closing.enter_context(container)  # (destroyed last)
        if read_end >= 0:
            readers = [closing.enter_context(os.fdopen(read_end, "rb"))]
        else:
            assert container.stdout is not None and container.stderr is not None
            readers = [container.stdout, container.stderr]
        container.start()
        assert container.wait(timeout=10) == 0
        got = b""
        for stream in readers:
            os.set_blocking(stream.fileno(), False)
            deadline = time.monotonic() + 10
            while True:  # read to its end, which must come while the container is left
                chunk = stream.read()
                if chunk == b"":
                    break
                got += chunk or b""
                assert time.monotonic() < deadline, f"no end of file: {got!r}"
                time.sleep(0.01)
        assert sorted(got.splitlines()) == [b"err", b"out"]
        assert container.status is Status.STOPPED  # (not destroyed yet)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_by_signal_waits_negative(
    store: FileStore, bundle: BundleFactory, sig: signal.Signals
) -> None:
    container = Container.create("sig", bundle(["sleep", "1000"]), store=store)
    try:
        container.start()
        assert Container.load("sig", store=store).status is Status.RUNNING
        container.kill(sig)
        assert container.wait(timeout=10) == -sig
        assert container.status is Status.STOPPED
    finally:
        container.destroy()


def test_trapped_sigterm_exit_code(store: FileStore, bundle: BundleFactory) -> None:
    script = 'trap "exit 7" TERM; sleep 1000 & echo ready; wait'
    container = start_ready(store, bundle(["sh", "-c", script]))
    try:
        container.kill(signal.SIGTERM)
        assert container.wait(timeout=10) == 7
    finally:
        container.destroy()


# -- 2. wait -----------------------------------------------------------------------------------


def test_wait_twice_and_from_another_process(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sh", "-c", "read line; exit 5"])
    container = Container.create("waited", path, store=store, stdin=subprocess.PIPE)
    try:
        container.start()
        waiter = in_subprocess(store, "print(Container.load('waited', store=store).wait())")
        time.sleep(0.5)
        assert waiter.poll() is None, "wait in another process returned while running"
        assert container.status is Status.RUNNING
        with pytest.raises(WaitTimeoutError):
            container.wait(timeout=0.1)
        with pytest.raises(subprocess.TimeoutExpired):  # as Popen.wait
            container.wait(timeout=0.1)
        assert container.stdin is not None
        container.stdin.write(b"go\n")
        container.stdin.close()
        assert finish(waiter).strip() == "5"
        assert container.wait(timeout=10) == 5
        assert container.wait(timeout=10) == 5
        after = in_subprocess(store, "print(Container.load('waited', store=store).wait())")
        assert finish(after).strip() == "5"
    finally:
        container.destroy()


# -- 3. kill and kill-all ------------------------------------------------------------------


def test_kill_all_kills_init_and_background_child(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create(
        "killall", bundle(["sh", "-c", "sleep 1000 & sleep 1000"]), store=store
    )
    try:
        container.start()
        supervisor = container.state().pid
        assert supervisor is not None
        wait_for(lambda: len(sleepers(supervisor)) == 2)
        pids = sleepers(supervisor)
        container.kill(signal.SIGKILL, all=True)
        assert container.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: not any(alive(pid) for pid in pids))
    finally:
        container.destroy()


def test_kill_all_reaches_children_while_init_lives(
    store: FileStore, bundle: BundleFactory
) -> None:
    # The init handles TERM and keeps running; its background child does not.
    script = 'trap "echo trapped" TERM; sleep 1000 & echo ready; while :; do sleep 0.05; done'
    container = start_ready(store, bundle(["sh", "-c", script]))
    try:
        supervisor = container.state().pid
        assert supervisor is not None
        wait_for(lambda: len(sleepers(supervisor)) == 1)  # "ready" may come before its exec
        container.kill(signal.SIGTERM, all=True)
        wait_for(lambda: not sleepers(supervisor))
        assert container.stdout is not None
        assert container.stdout.readline() == b"trapped\n"
        assert container.status is Status.RUNNING
        container.kill(signal.SIGKILL)
        assert container.wait(timeout=10) == -signal.SIGKILL
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()


def test_kill_stopped(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create("stopped", bundle(["true"]), store=store)
    try:
        container.start()
        assert container.wait(timeout=10) == 0
        assert container.status is Status.STOPPED
        with pytest.raises(
            InvalidStateError, match='cannot kill container "stopped" in state stopped'
        ):
            container.kill(signal.SIGTERM)
        container.kill(signal.SIGKILL, all=True)  # allowed: cleans up leftovers
    finally:
        container.destroy()


def test_kill_created_container(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create("created", bundle(["true"]), store=store)
    try:
        container.kill(signal.SIGKILL)
        assert container.wait(timeout=10) == -signal.SIGKILL
        assert container.status is Status.STOPPED
    finally:
        container.destroy()


# -- 4. destroy ----------------------------------------------------------------------------


def assert_destroyed(
    store: FileStore, cid: str, runtime_dir: str, supervisor: ProcessIdentity
) -> None:
    assert cid not in Container.list(store=store)
    assert not os.path.exists(runtime_dir)
    assert not procfs.is_alive(supervisor.pid, supervisor.start_ticks, supervisor.boot_id)


@pytest.mark.parametrize("phase", ["created", "running", "stopped"])
def test_destroy(store: FileStore, bundle: BundleFactory, phase: str) -> None:
    args = ["true"] if phase == "stopped" else ["sleep", "1000"]
    container = Container.create("gone", bundle(args), store=store)
    sandbox = container.sandbox
    assert sandbox is not None
    assert os.path.isdir(sandbox.runtime_dir)
    assert sandbox.is_running()
    if phase != "created":
        container.start()
    if phase == "stopped":
        assert container.wait(timeout=10) == 0
    assert container.status.value == phase
    container.destroy()
    assert_destroyed(store, "gone", sandbox.runtime_dir, sandbox.supervisor)
    container.destroy()  # twice: a no-op
    assert_destroyed(store, "gone", sandbox.runtime_dir, sandbox.supervisor)


def test_a_ctrl_c_during_destroy_comes_once_everything_is_gone(
    store: FileStore, bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destroy stopped half-way would leave the record with half of what it names gone:
    the KeyboardInterrupt of a SIGINT that lands in it is raised once it is over."""
    container = Container.create("ctrlc", bundle(["sleep", "1000"]), store=store)
    container.start()
    sandbox = container.sandbox
    assert sandbox is not None
    teardown = container_module.teardown

    def interrupted(destroyed: Container) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # (delivered in the main thread, as Ctrl-C)
        time.sleep(0.05)  # a handler would run here
        teardown(destroyed)

    monkeypatch.setattr(container_module, "teardown", interrupted)
    with pytest.raises(KeyboardInterrupt):
        container.destroy()
    assert_destroyed(store, "ctrlc", sandbox.runtime_dir, sandbox.supervisor)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_while_destroy_waits_for_the_lock_comes_at_once(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Held back only once the lock is ours: the wait for it (30 s by default) stays
    interruptible, and the container is left as it was."""
    container = Container.create("waits", bundle(["sleep", "1000"]), store=store)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock("waits"):
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    try:
        assert holding.wait(10)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            container.destroy()
        assert holder.is_alive()  # the interrupt came while the lock was still held
    finally:
        timer.cancel()
        release.set()
        holder.join()
    assert container.status is Status.CREATED
    container.destroy()


def test_destroy_from_second_object(store: FileStore, bundle: BundleFactory) -> None:
    first = Container.create("twin", bundle(["sleep", "1000"]), store=store)
    second = Container.load("twin", store=store)
    sandbox = first.sandbox
    assert sandbox is not None
    first.start()
    first.destroy()
    second.destroy()
    assert_destroyed(store, "twin", sandbox.runtime_dir, sandbox.supervisor)
    # A repr asks nothing: a destroyed container reads stopped (it read created, then
    # running, before; its status asks the store, which has no record of it any more).
    assert repr(first) == repr(second) == "Container(id='twin', status='stopped')"
    with pytest.raises(ContainerNotFoundError):
        second.status  # noqa: B018


def without_pid_namespace(document: dict[str, Any]) -> None:
    namespaces = document["linux"]["namespaces"]
    document["linux"]["namespaces"] = [ns for ns in namespaces if ns["type"] != "pid"]


@pytest.mark.parametrize("how", ["destroy", "kill-all"])
def test_without_pid_namespace_nothing_survives(
    store: FileStore, bundle: BundleFactory, how: str
) -> None:
    # The supervisor is no PID 1 here: its death does not take the container with it.
    path = bundle(["sh", "-c", "sleep 1000 & sleep 1000"])
    edit_config(path, without_pid_namespace)
    container = Container.create("nopidns", path, store=store)
    try:
        container.start()
        sandbox = container.sandbox
        assert sandbox is not None
        assert not sandbox.owns_pid_namespace()
        wait_for(lambda: len(sleepers(sandbox.pid)) == 2)
        pids = sleepers(sandbox.pid)
        if how == "kill-all":
            container.kill(signal.SIGKILL, all=True)
            assert container.wait(timeout=10) == -signal.SIGKILL
    finally:
        container.destroy()
    wait_for(lambda: not any(alive(pid) for pid in pids))


# -- 5. load ---------------------------------------------------------------------------------


def test_load_by_prefix_from_another_process(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "1000"])
    annotated = bundle(["sleep", "1000"])
    edit_config(annotated, lambda d: d.update(annotations={"org.example/k": "v"}))
    alpha = Container.create("alpha-1", annotated, store=store)
    beta = Container.create("beta-1", path, store=store)
    try:
        alpha.start()
        code = (
            "c = Container.load('alp', store=store)\n"
            "print(json.dumps({'id': c.id, 'status': str(c.status), 'state': c.state().to_dict()}))"
        )
        seen = json.loads(finish(in_subprocess(store, code)))
        assert seen["id"] == "alpha-1"
        assert seen["status"] == "running"
        assert seen["state"] == {
            "ociVersion": "1.2.0",
            "id": "alpha-1",
            "status": "running",
            "pid": alpha.state().pid,
            "bundle": str(annotated),
            "annotations": {"org.example/k": "v"},
        }
        code = "print(Container.load('bet', store=store).status)"
        assert finish(in_subprocess(store, code)).strip() == "created"
    finally:
        alpha.destroy()
        beta.destroy()


def test_load_ambiguous_prefix(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["true"])
    first = Container.create("web-1", path, store=store)
    second = Container.create("web-2", path, store=store)
    try:
        with pytest.raises(AmbiguousIDError, match="'web-1', 'web-2'"):
            Container.load("web", store=store)
        assert Container.load("web-2", store=store).id == "web-2"
        code = (
            "from sandboxrt.errors import AmbiguousIDError\n"
            "try:\n    Container.load('web', store=store)\n"
            "except AmbiguousIDError as e:\n    print(sorted(e.candidates))"
        )
        assert finish(in_subprocess(store, code)).strip() == "['web-1', 'web-2']"
    finally:
        first.destroy()
        second.destroy()


# -- 6. and 7. stale records -----------------------------------------------------------------


def test_a_supervisor_out_of_fds_stays_up_and_serves_again(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Each waiter holds a connection: past the supervisor's fd limit it stops listening
    until one closes (it died, and the sandbox with it). Its soft limit is its hard one;
    the container's is still the caller's."""
    if not has_sys_resource():
        pytest.skip(
            "changing the supervisor's rlimits needs CAP_SYS_RESOURCE, which this root lacks"
        )
    import resource
    import socket

    caller_soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    path = bundle(["sh", "-c", "ulimit -n; exec sleep 60"])
    edit_config(path, lambda d: d["process"].update(rlimits=[]))
    container = Container.create("fds", path, store=store, stdout=subprocess.PIPE)
    try:
        container.start()
        assert container.stdout is not None
        assert container.stdout.readline() == f"{caller_soft}\n".encode()
        sandbox = container.sandbox
        assert sandbox is not None
        soft, hard = resource.prlimit(sandbox.pid, resource.RLIMIT_NOFILE)
        assert soft == hard
        # Room for 40 connections; the backlog (64) holds 60 more.
        opened = len(os.listdir(f"/proc/{sandbox.pid}/fd"))
        resource.prlimit(sandbox.pid, resource.RLIMIT_NOFILE, (opened + 40, hard))
        clients = []
        try:
            for _ in range(100):  # more than it can take: the last ones wait in the backlog
                client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                client.connect(sandbox.control_socket)
                clients.append(client)
            time.sleep(0.5)
            assert container.status is Status.RUNNING
        finally:
            for client in clients:
                client.close()
        # Out of fds with no connection of its own to close (none frees one): it tries
        # again on its own once the limit allows, even woken all the time (orphans of the
        # container ending every few milliseconds, reaped by it).
        busy = container.exec(["sh", "-c", "while :; do (sleep 0.01 &); sleep 0.005; done"])
        taken = {int(fd) for fd in os.listdir(f"/proc/{sandbox.pid}/fd")}
        lowest_free = min(set(range(len(taken) + 1)) - taken)  # (a new fd takes the lowest)
        resource.prlimit(sandbox.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as waiting:
            waiting.connect(sandbox.control_socket)
            time.sleep(0.3)  # (it failed to accept it, and stopped listening)
            resource.prlimit(sandbox.pid, resource.RLIMIT_NOFILE, (hard, hard))
            container.kill(signal.SIGKILL)
        assert container.wait(timeout=30) == -signal.SIGKILL
        assert busy.wait(timeout=30) == -signal.SIGKILL
    finally:
        container.destroy()


@pytest.mark.parametrize("started", [True, False], ids=["running", "created"])
def test_killed_supervisor_reads_stopped(
    store: FileStore, bundle: BundleFactory, started: bool
) -> None:
    container = Container.create("stale", bundle(["sleep", "1000"]), store=store)
    try:
        if started:
            container.start()
        pid = container.state().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid))
        assert container.status is Status.STOPPED
        assert Container.load("stale", store=store).status is Status.STOPPED
        assert container.state().pid is None
        assert container.wait(timeout=10) == -signal.SIGKILL
    finally:
        container.destroy()
    assert leftovers(store) == []


@pytest.mark.parametrize("differs", ["start time", "boot id"])
def test_reused_pid_reads_stopped_and_is_not_killed(
    store: FileStore, bundle: BundleFactory, differs: str
) -> None:
    """The record names a live stranger's pid with another start time, or with its own
    start time but of another boot: either way not the process that was the sandbox."""
    container = Container.create("reuse", bundle(["true"]), store=store)
    container.start()
    assert container.wait(timeout=10) == 0
    stranger = subprocess.Popen(["sleep", "1000"])
    try:
        info = procfs.read_stat(stranger.pid)
        assert info is not None
        record = store.load("reuse")
        assert record.status is Status.RUNNING  # as recorded; the exit is not seen yet
        ticks, boot = info.start_ticks, procfs.boot_id()
        if differs == "start time":
            ticks += 1
        else:
            boot = boot[:-1] + ("1" if boot[-1] == "0" else "0")
        store.save(
            attrs.evolve(
                record, sandbox=ProcessIdentity(pid=stranger.pid, start_ticks=ticks, boot_id=boot)
            )
        )
        loaded = Container.load("reuse", store=store)
        assert loaded.status is Status.STOPPED
        assert loaded.state().pid is None
        with pytest.raises(InvalidStateError):
            loaded.kill(signal.SIGKILL)
        loaded.kill(signal.SIGKILL, all=True)
        loaded.destroy()
        assert Container.list(store=store) == []
        time.sleep(0.1)
        assert stranger.poll() is None, "destroy killed an unrelated process"
    finally:
        stranger.kill()
        stranger.wait()
        container.destroy()


# -- 8. and 9. pid file and OCI state --------------------------------------------------------


def test_pid_file(store: FileStore, bundle: BundleFactory, tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "c.pid"
    pid_file.parent.mkdir()
    container = Container.create("pidf", bundle(["true"]), store=store, pid_file=pid_file)
    try:
        content = pid_file.read_bytes()
        assert content == str(container.state().pid).encode()
        assert int(content) in supervisor_pids()
    finally:
        container.destroy()


def test_run_with_a_pid_file_it_cannot_write_does_not_run_the_program(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """As ``runc run --pid-file``: the pid file is written before the program starts."""
    path = bundle(["touch", "/ran"])
    with pytest.raises(InvalidArgumentError):
        Container.run("pidf", path, store=store, pid_file=tmp_path / "missing" / "c.pid")
    assert not (path / "rootfs" / "ran").exists()
    assert store.list_ids() == []
    pid_file = tmp_path / "c.pid"
    assert Container.run("pidf", path, store=store, pid_file=pid_file) == 0
    assert (path / "rootfs" / "ran").exists()
    assert int(pid_file.read_text()) > 1


def test_the_pid_file_is_written_through_no_planted_file(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """In a directory others may write to, the temporary file of the old predictable
    name (a symlink to a victim, here) is neither followed nor used."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    pid_file = run_dir / "c.pid"
    for guess in (f"c.pid.{os.getpid()}.tmp", "c.pid.tmp"):
        (run_dir / guess).symlink_to(victim)
    container = Container.create("pidf", bundle(["true"]), store=store, pid_file=pid_file)
    try:
        assert not pid_file.is_symlink()
        assert pid_file.read_text() == str(container.state().pid)
        assert victim.read_text() == "precious"
        assert sorted(p.name for p in run_dir.iterdir() if not p.is_symlink()) == ["c.pid"]
    finally:
        container.destroy()
    # A pid file that cannot be written: a typed error naming the container, nothing left.
    with pytest.raises(InvalidArgumentError, match=r'"pidg": cannot write pid file .*/nowhere/'):
        Container.create("pidg", bundle(["true"]), store=store, pid_file=tmp_path / "nowhere/p")
    assert Container.list(store=store) == []


def test_oci_state_per_phase(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bundle(["sh", "-c", "read line; true"], name="relative")
    # (The state's version is the spec version it complies with, as runc's: not the
    # bundle's.)
    edit_config(
        path, lambda d: d.update(annotations={"a": "1", "org.example/b": "two"}, ociVersion="1.0.2")
    )
    monkeypatch.chdir(tmp_path)
    container = Container.create("st", "relative", store=store, stdin=subprocess.PIPE)
    try:
        state = container.state()
        assert state.oci_version == "1.2.0"
        assert state.id == "st"
        assert state.status is Status.CREATED
        assert state.bundle == str(tmp_path / "relative")
        assert os.path.isabs(state.bundle)
        assert state.annotations == {"a": "1", "org.example/b": "two"}
        assert state.pid is not None and state.pid in supervisor_pids()
        assert state.to_dict()["pid"] == state.pid

        container.start()
        running = container.state()
        assert running.status is Status.RUNNING
        assert running.pid == state.pid
        assert running.to_dict()["status"] == "running"

        assert container.stdin is not None
        container.stdin.close()
        assert container.wait(timeout=10) == 0
        stopped = container.state()
        assert stopped.status is Status.STOPPED
        assert stopped.pid is None
        assert "pid" not in stopped.to_dict()
        assert stopped.to_dict() == {
            "ociVersion": "1.2.0",
            "id": "st",
            "status": "stopped",
            "bundle": str(tmp_path / "relative"),
            "annotations": {"a": "1", "org.example/b": "two"},
        }
    finally:
        container.destroy()


# -- 14. the host's mount table ------------------------------------------------------------


def test_host_mount_table_unchanged(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    path = bundle(["sh", "-c", "cat /proc/mounts | wc -l"], rootfs="host_usr")

    def more_mounts(document: dict[str, Any]) -> None:
        document["mounts"] += [
            {
                "destination": "/mnt/a",
                "type": "bind",
                "source": str(shared),
                "options": ["rbind", "ro"],
            },
            {"destination": "/mnt/b", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
            {"destination": "/mnt/c", "type": "bind", "source": "/dev", "options": ["rbind"]},
            {
                "destination": "/mnt/a2",
                "type": "bind",
                "source": str(shared),
                "options": ["bind", "rshared"],
            },
        ]

    edit_config(path, more_mounts)
    before = Path("/proc/self/mountinfo").read_text()
    code, out = run_output(store, path)
    assert code == 0, out
    assert int(out) > 10
    assert Path("/proc/self/mountinfo").read_text() == before


# -- 15. errors ------------------------------------------------------------------------------


def test_missing_rootfs(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["true"])
    os.rename(path / "rootfs", path / "elsewhere")
    before = supervisor_pids()
    with pytest.raises(InitError, match="rootfs"):
        Container.create("noroot", path, store=store)
    assert leftovers(store) == []
    assert supervisor_pids() == before


def test_malformed_config(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["true"])
    (path / "config.json").write_text('{"ociVersion": "1.2.0", "process": {"args": 5}')
    with pytest.raises(SpecError):
        Container.create("badjson", path, store=store)
    (path / "config.json").write_text('{"ociVersion": "1.2.0", "process": {"args": 5}}')
    with pytest.raises(SpecError, match="args"):
        Container.create("badspec", path, store=store)
    assert leftovers(store) == []


def test_existing_id(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create("dup", bundle(["sleep", "1000"]), store=store)
    try:
        container.start()
        pid = container.state().pid
        with pytest.raises(ContainerExistsError):
            Container.create("dup", bundle(["true"]), store=store)
        again = Container.load("dup", store=store)
        assert again.status is Status.RUNNING
        assert again.state().pid == pid
        assert pid is not None and alive(pid)
        assert container.sandbox is not None and os.path.exists(container.sandbox.control_socket)
    finally:
        container.destroy()


def test_a_start_its_caller_did_not_record_is_recorded_by_the_next(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A caller killed between the sandbox's start and the record's save left the container
    created for ever (and every start refused): the next start records it running."""
    container = Container.create("unrec", bundle(["sleep", "60"]), store=store)
    try:
        assert container.sandbox is not None
        container.sandbox.start(container.id, container.state().to_dict())  # no record saved
        assert store.load("unrec").status is Status.CREATED
        assert Container.load("unrec", store=store).status is Status.RUNNING  # (asked)
        with pytest.raises(InvalidStateError, match="running"):
            container.start()
        assert store.load("unrec").status is Status.RUNNING
    finally:
        container.destroy()


def test_start_twice(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create("twice", bundle(["sleep", "1000"]), store=store)
    try:
        container.start()
        with pytest.raises(InvalidStateError) as info:
            container.start()
        assert str(info.value) == 'cannot start container "twice" in state running'
        with pytest.raises(InvalidStateError) as info:
            Container.load("twice", store=store).start()
        assert str(info.value) == 'cannot start container "twice" in state running'
    finally:
        container.destroy()


def test_executable_not_found(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["no-such-program", "arg"])
    before = supervisor_pids()
    with pytest.raises(InitError, match="no-such-program"):
        Container.create("noexe", path, store=store)
    assert leftovers(store) == []
    assert supervisor_pids() == before


def test_a_runtime_dir_left_by_a_crashed_create_does_not_block_the_id(
    store: FileStore, bundle: BundleFactory
) -> None:
    stale = store.runtime_dir / "crashed"
    stale.mkdir(parents=True)
    (stale / "supervisor.log").write_text("from an earlier, crashed create\n")
    assert Container.run("crashed", bundle(["true"]), store=store) == 0
    assert not stale.exists()


def test_wait_on_a_container_still_being_created_says_so(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """From another process, while a prestart hook holds up the creation: the container
    exists (creating) but has no sandbox yet, so wait is refused, not "does not exist"."""
    gate = tmp_path / "gate"
    path = bundle(["true"])
    script = f"until [ -e {gate} ]; do /bin/sleep 0.02; done"
    hook = {"path": "/bin/sh", "args": ["sh", "-c", script]}
    edit_config(path, lambda d: d.update(hooks={"prestart": [hook]}))
    null = "stdin=-3, stdout=-3, stderr=-3"  # (DEVNULL: the init holds no pipe of ours)
    code = f"Container.create('slowc', {str(path)!r}, store=store, {null})"
    creator = in_subprocess(store, code)
    try:
        wait_until(lambda: "slowc" in Container.list(store=store))
        container = Container.load("slowc", store=store)
        assert container.status is Status.CREATING
        with pytest.raises(InvalidStateError, match='wait for container "slowc" in state creating'):
            container.wait(timeout=1)
        with pytest.raises(InvalidStateError, match="in state creating"):
            container.wait_pid(1, timeout=1)
    finally:
        gate.touch()
        _, err = creator.communicate(timeout=60)
    assert creator.returncode == 0, err
    Container.load("slowc", store=store).destroy()


def test_destroy_after_a_create_that_died_reads_stopped_and_leaves_nothing(
    store: FileStore, bundle: BundleFactory
) -> None:
    # The creating process dies (its prestart hook kills it) after it made the
    # sandbox's runtime directory and before it recorded the sandbox.
    path = bundle(["true"])
    hook = {"path": "/bin/sh", "args": ["sh", "-c", "kill -9 $PPID"]}
    edit_config(path, lambda d: d.update(hooks={"prestart": [hook]}))
    creator = in_subprocess(store, f"Container.create('died', {str(path)!r}, store=store)")
    _, err = creator.communicate(timeout=30)
    assert creator.returncode == -signal.SIGKILL, err
    assert (store.runtime_dir / "died").exists()
    container = Container.load("died", store=store)
    assert container.status is Status.STOPPED  # its creator is gone (it read creating)
    assert container.state().status == "stopped"
    container.destroy()
    assert not (store.runtime_dir / "died").exists()
    assert Container.list(store=store) == []


def test_a_sandbox_silent_during_creation_times_out(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    hook = tmp_path / "slow.sh"
    hook.write_text("#!/bin/sh\nsleep 60\n")
    hook.chmod(0o755)
    path = bundle(["true"])
    edit_config(
        path, lambda d: d.setdefault("hooks", {}).update(createContainer=[{"path": str(hook)}])
    )
    started = time.monotonic()
    with pytest.raises(CreateTimeoutError, match=r'container "slow": .* 0.5s'):
        Container.create("slow", path, store=store, config=Config(create_timeout=0.5))
    assert time.monotonic() - started < 30  # (its timeout, not the hook's 60 s)
    assert Container.list(store=store) == []
    assert list(store.runtime_dir.iterdir()) == []


def test_a_run_whose_caller_is_killed_ends_its_container(
    store: FileStore, bundle: BundleFactory
) -> None:
    """``Container.run`` in a process SIGKILLed meanwhile (a ``timeout`` ending a script):
    nobody would wait for or destroy its container, which the supervisor then ends; it reads
    stopped, and a destroy cleans up."""
    path = bundle(["sleep", "1000"])
    code = (
        "from sandboxrt import Container, FileStore\n"
        f"Container.run('orphan', {str(path)!r}, store=FileStore({str(store.root)!r}))\n"
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the container never ran"
            with contextlib.suppress(SandboxrtError):
                if Container.load("orphan", store=store).status is Status.RUNNING:
                    break
            time.sleep(0.02)
    finally:
        caller.kill()
        caller.wait()
    container = Container.load("orphan", store=store)
    try:
        assert container.wait(timeout=20) == -signal.SIGKILL
        assert container.status is Status.STOPPED
    finally:
        container.destroy()
    assert Container.list(store=store) == []


def test_a_caller_killed_in_start_after_the_release_leaves_a_container_that_says_running(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The supervisor knows it started the init: a caller killed between the release and
    its save left a container that said ``created`` while its program ran (pause refused
    it; only the next ``start`` recorded the truth, by failing)."""
    container = Container.create("halfstarted", bundle(["sleep", "60"]), store=store)
    try:
        code = killed_after("sandboxrt.sandbox:Sandbox.start", "start", container.id, store)
        assert code == -signal.SIGKILL
        assert store.load(container.id).status is Status.CREATED  # (not recorded)
        assert container.status is Status.RUNNING
        assert container.state().status == "running"
        container.kill(signal.SIGKILL)
        assert container.wait(timeout=10) == -signal.SIGKILL
    finally:
        container.destroy()


def test_a_memory_stores_containers_do_not_outlive_its_process(
    bundle: BundleFactory, tmp_path: Path
) -> None:
    """Nothing but the process that made them could reach them: those still recorded (a
    live store's, and a collected store's) are destroyed when it exits, cgroups and
    runtime directories included; a forked child's exit destroys none of them."""
    path = bundle(["sleep", "1000"])
    code = f"""
import gc, json, os, sys
from sandboxrt import Container, MemoryStore
kept = MemoryStore()
a = Container.create("kept", {str(path)!r}, store=kept)
a.start()
dropped = MemoryStore({str(tmp_path / "dropped")!r})
b = Container.create("dropped", {str(path)!r}, store=dropped)
seen = [(c.state().pid, c._record.cgroup, c.sandbox.runtime_dir) for c in (a, b)]
del b, dropped
gc.collect()
read, write = os.pipe()
if os.fork() == 0:  # (its exit handlers run: they destroy its own container, not ours)
    c = Container.create("child", {str(path)!r}, store=kept)
    os.write(write, json.dumps(c.state().pid).encode())
    sys.exit(0)
os.wait()
child = json.loads(os.read(read, 100))
alive = [os.path.exists(f"/proc/{{pid}}") for pid, _, _ in seen]
print(json.dumps({{"seen": seen, "alive": alive, "child": child}}))
"""
    done = in_python(code)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["alive"] == [True, True]  # (the child's exit left them)
    wait_until(lambda: not os.path.exists(f"/proc/{report['child']}"))
    for pid, cgroup, runtime_dir in report["seen"]:
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}"))
        assert not os.path.exists(runtime_dir)
        for placement in cgroup["placements"]:
            assert not os.path.exists(os.path.join(placement["mountpoint"], placement["path"]))
    assert os.listdir(tmp_path / "dropped") == []  # (given: emptied, not removed)


def _remove_what_is_left(directories: list[str], runtime_dir: str) -> None:
    """After a test of what a dead creator leaves: remove (where a failure left them, and
    empty) the cgroup ``directories`` (children first), their store levels and the top
    ones, and ``runtime_dir``."""
    levels = {os.path.dirname(directory) for directory in directories}
    tops = {os.path.dirname(level) for level in levels}
    for directory in [*directories, *levels, *tops]:
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    shutil.rmtree(runtime_dir, ignore_errors=True)


@pytest.mark.parametrize("case", ["running", "paused", "pod", "nested"])
def test_a_memory_store_container_dies_with_a_creator_killed_outright(
    bundle: BundleFactory, case: str
) -> None:
    """No other process can reach a MemoryStore's containers: one whose creator is
    SIGKILLed (a notebook's kernel restarted, a worker ``Pool.terminate`` ended) ran on
    for good. Its sandbox now ends when the socket its creator launched it on closes;
    while the creator lives, the container lives, its objects dropped or not. Then the
    sandbox removes what the creator's destroy would have: its containers' cgroups (a
    pod member's too, with a daemon that left its process group; a cgroup made beneath,
    frozen with a process in it), the store's cgroup level and the runtime directory."""
    path = bundle(["sleep", "1000"])
    daemon = bundle(["sh", "-c", "setsid sleep 1000 & exec sleep 1000"])
    supervisor, init, runtime_dir, *cgroup_dirs = words_then_killed(f"""
import gc, os, subprocess, sys, time
from sandboxrt import Container, MemoryStore, Pod
store = MemoryStore()
quiet = {{"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}}  # (not our pipe)
c = Container.create("tied", {str(path)!r}, store=store, **quiet)
c.start()
supervisor, init = c.state().pid, c.processes()[0].host_pid
containers = [c]
if {case!r} == "pod":
    member = Pod(c).add_container("member", {str(daemon)!r}, store=store, **quiet)
    member.start()
    containers.append(member)
dirs = [
    p["mountpoint"] + "/" + p["path"] for k in containers for p in k._record.cgroup["placements"]
]
if {case!r} == "nested":  # (as a container with its cgroup writable would)
    for directory in dict.fromkeys(dirs):
        os.mkdir(directory + "/child")
        with open(directory + "/child/cgroup.procs", "w") as f:
            f.write(str(init))
    for directory in dirs:
        if os.path.exists(directory + "/child/freezer.state"):
            with open(directory + "/child/freezer.state", "w") as f:
                f.write("FROZEN")
del c, containers
gc.collect()
time.sleep(0.3)
assert Container.load("tied", store=store).status.value == "running"
if {case!r} == "paused":  # (frozen, SIGKILL waits for a thaw)
    Container.load("tied", store=store).pause()
print(supervisor, init, store.runtime_dir, *dirs, flush=True)
sys.stdin.read()
""")
    children = [os.path.join(directory, "child") for directory in cgroup_dirs]
    store_levels = {os.path.dirname(directory) for directory in cgroup_dirs}
    left = [*children, *cgroup_dirs, *store_levels, runtime_dir]
    gone = False
    try:
        wait_until(lambda: not os.path.exists(f"/proc/{supervisor}"))
        wait_until(lambda: not os.path.exists(f"/proc/{init}"))
        gone = True
        # Removed before the supervisor exits (the store's top level is everyone's).
        assert [d for d in left if os.path.exists(d)] == []
    finally:
        if not gone:  # (a failure: what is left goes, frozen or not; still ours)
            for directory in [*children, *cgroup_dirs]:
                with contextlib.suppress(OSError):
                    Path(directory, "freezer.state").write_text("THAWED")
            for pid in (init, supervisor):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            wait_until(lambda: not os.path.exists(f"/proc/{init}/cgroup"))
        _remove_what_is_left([*children, *cgroup_dirs], runtime_dir)


def test_what_a_memory_store_of_processes_all_gone_left_is_swept_by_the_next(
    bundle: BundleFactory,
) -> None:
    """A container that had exited before its creator was killed left its runtime files
    and cgroup (its supervisor, gone with it, could not remove them). The next process
    that makes a MemoryStore directory removes them, once no process that could use that
    store is left (a child the creator forked holds it too), and never a live store's."""
    path = bundle(["true"])
    supervisor, runtime_dir, child, *cgroup_dirs = words_then_killed(f"""
import os, sys, time
from sandboxrt import Container, MemoryStore
store = MemoryStore()
c = Container.create("left", {str(path)!r}, store=store)
c.start()
assert c.wait() == 0
dirs = [p["mountpoint"] + "/" + p["path"] for p in c._record.cgroup["placements"]]
supervisor = c.state().pid
child = os.fork()
if child == 0:  # (it could use the store: a copy of it is its)
    time.sleep(1000)
    os._exit(0)
print(supervisor, store.runtime_dir, child, *dirs, flush=True)
sys.stdin.read()
""")
    store_levels = {os.path.dirname(directory) for directory in cgroup_dirs}
    live = Container.create("live", path, store=MemoryStore())
    sweeper = "from sandboxrt import MemoryStore\nprint(MemoryStore().runtime_dir)\n"
    try:
        live.start()
        assert live.wait() == 0
        wait_until(lambda: not os.path.exists(f"/proc/{supervisor}"))
        left = [*cgroup_dirs, runtime_dir]
        assert all(os.path.exists(d) for d in left)  # (what there is to sweep)
        held = in_python(sweeper)
        assert held.returncode == 0, held.stderr
        assert all(os.path.exists(d) for d in left)  # (its forked child lives)
        os.kill(int(child), signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{child}/cgroup"))
        done = in_python(sweeper)
        assert done.returncode == 0, done.stderr
        assert [d for d in [*left, *store_levels] if os.path.exists(d)] == []
        assert not os.path.exists(done.stdout.strip())  # (the sweeper's own: gone at its exit)
        assert live.sandbox is not None and os.path.isdir(live.sandbox.runtime_dir)
        assert live._record.cgroup is not None
        live_dirs = [p["mountpoint"] + "/" + p["path"] for p in live._record.cgroup["placements"]]
        assert all(os.path.isdir(d) for d in live_dirs)
    finally:
        live.destroy()
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)
        _remove_what_is_left(cgroup_dirs, runtime_dir)


def test_a_memory_store_directory_outlives_its_maker_while_a_forked_child_uses_it(
    bundle: BundleFactory,
) -> None:
    """A child forked with a copy of the store may go on using it after its parent exits:
    the parent's exit leaves the directory to it (it used to remove it, and the child
    made it again without the lock a sweep needs), and once the child is gone too, what
    its exited container left is swept."""
    path = bundle(["true"])
    runtime_dir, child, supervisor, *cgroup_dirs = words_then_killed(f"""
import os, sys, time
from sandboxrt import Container, MemoryStore
store = MemoryStore()
store.runtime_dir
if os.fork() != 0:
    sys.exit(0)  # (the maker exits normally: its exit handlers run)
while os.getppid() != 1 and os.path.exists(f"/proc/{{os.getppid()}}/cgroup"):
    time.sleep(0.01)  # (its parent gone)
c = Container.create("ch", {str(path)!r}, store=store)
c.start()
assert c.wait() == 0
dirs = [p["mountpoint"] + "/" + p["path"] for p in c._record.cgroup["placements"]]
print(store.runtime_dir, os.getpid(), c.state().pid, *dirs, flush=True)
sys.stdin.read()
""")
    store_levels = {os.path.dirname(directory) for directory in cgroup_dirs}
    sweeper = "from sandboxrt import MemoryStore\nprint(MemoryStore().runtime_dir)\n"
    try:
        assert os.path.exists(os.path.join(runtime_dir, ".lock"))  # (still held: swept later)
        os.kill(int(child), signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{child}/cgroup"))
        wait_until(lambda: not os.path.exists(f"/proc/{supervisor}/cgroup"))
        done = in_python(sweeper)
        assert done.returncode == 0, done.stderr
        assert [d for d in [*cgroup_dirs, *store_levels, runtime_dir] if os.path.exists(d)] == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)
        _remove_what_is_left(cgroup_dirs, runtime_dir)


def test_a_failed_memory_store_launch_stops_its_sandbox_before_untying_it(
    bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launch failing once its sandbox runs destroys the sandbox, then closes the socket
    the sandbox is tied by: closed first, a ``tied`` sandbox took its creator for gone,
    and removed its cgroup and runtime files under our own destroy."""
    follow, destroy = Sandbox._follow_creation, Sandbox.destroy
    seen: list[tuple[bool, bool]] = []

    def follow_then_fail(self: Sandbox, *args: Any, **kwargs: Any) -> Any:
        follow(self, *args, **kwargs)
        raise KeyboardInterrupt  # (a Ctrl-C once created)

    def destroy_later(self: Sandbox, timeout: float) -> None:
        time.sleep(0.3)  # (the supervisor's time to act on a closed socket)
        seen.append((alive(self.pid), os.path.isdir(self.runtime_dir)))
        destroy(self, timeout)

    monkeypatch.setattr(Sandbox, "_follow_creation", follow_then_fail)
    monkeypatch.setattr(Sandbox, "destroy", destroy_later)
    store = MemoryStore()
    with pytest.raises(KeyboardInterrupt):
        Container.create("untied", bundle(["sleep", "1000"]), store=store)
    assert seen == [(True, True)]
    assert store.list_ids() == []


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_multiprocessing_worker_destroys_its_memory_store_containers(
    bundle: BundleFactory, tmp_path: Path, method: str
) -> None:
    """A worker started by ``fork`` or ``forkserver`` ends with ``os._exit`` after its
    finalizers, and no ``atexit`` handler: its containers ran on, out of reach (``spawn``
    ends through ``sys.exit``, and always destroyed them), and the cgroup levels it kept
    for its next containers stayed."""
    path = bundle(["sleep", "1000"])
    script = tmp_path / "workers.py"
    files = FileStore(tmp_path / "files")
    script.write_text(
        f"""
import multiprocessing as mp
from sandboxrt import Container, FileStore, MemoryStore

def once():
    Container.run("once", {str(bundle(["true"]))!r}, store=FileStore({str(files.root)!r}))

def work(report):
    store = MemoryStore()
    c = Container.create("worker", {str(path)!r}, store=store)
    c.start()
    report.put((c.state().pid, c.sandbox.runtime_dir))
    globals()["kept"] = (store, c)  # (recorded until the worker exits)

if __name__ == "__main__":
    context = mp.get_context({method!r})
    first = context.Process(target=once)  # (a FileStore's container: levels kept)
    first.start()
    first.join(60)
    report = context.Queue()
    worker = context.Process(target=work, args=(report,))
    worker.start()
    print(*report.get(timeout=60))
    worker.join(60)
    print(worker.exitcode)
"""
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (supervisor, runtime_dir), (code,) = (line.split() for line in done.stdout.splitlines())
    assert code == "0"
    wait_until(lambda: not os.path.exists(f"/proc/{supervisor}"))
    assert not os.path.exists(runtime_dir)
    assert store_cgroups(files) == []
