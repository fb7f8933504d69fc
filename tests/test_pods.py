"""Pods: several containers in one sandbox, by the API and by CRI annotations.

Real sandboxes: the containers share the supervisor's PID, network, IPC and
UTS namespaces, and each has its own mount namespace, root, cgroup and record.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    BundleFactory,
    edit_config,
    in_python,
    needs_busybox,
    needs_root,
    small_pid_space,
    wait_until,
)
from test_hooks_lifecycle import ALL_PHASES as HOOK_PHASES
from test_hooks_lifecycle import Setup

from sandboxrt import (
    Config,
    Container,
    ContainerExistsError,
    ContainerNotFoundError,
    FileStore,
    InitError,
    InvalidArgumentError,
    InvalidStateError,
    Pod,
    ProcessNotFoundError,
    SandboxDiedError,
    SpecError,
    Status,
)
from sandboxrt import _cgroup as library_cgroup
from sandboxrt._core import cri
from sandboxrt._core.spec import read_spec_file
from sandboxrt._os import cgroups, procfs, stdlib
from sandboxrt.errors import HookError
from sandboxrt.gofer import socket_path
from sandboxrt.sandbox import Sandbox

pytestmark = [needs_root, needs_busybox]

SLEEP = ["sleep", "1000"]
SHARED = ("pid", "net", "ipc", "uts")


# -- helpers ---------------------------------------------------------------------------------


def annotate(bundle: Path, annotations: dict[str, str]) -> Path:
    """Add ``annotations`` to the bundle's config.json."""
    path = bundle / "config.json"
    document = json.loads(path.read_text())
    document["annotations"] = {**document.get("annotations", {}), **annotations}
    path.write_text(json.dumps(document))
    return bundle


def cgroup_of(container: Container) -> cgroups.Cgroup:
    record = container._store.load(container.id).cgroup
    assert record is not None, f"{container.id} has no cgroup"
    return cgroups.load(record, container_id=container.id)


def host_pids(container: Container) -> list[int]:
    """The container's processes, as host pids (its cgroup's members)."""
    return sorted(cgroup_of(container).pids())


def init_host_pid(container: Container) -> int:
    """The host pid of the container's init (the oldest process of its cgroup)."""
    pids = host_pids(container)
    assert pids, f"{container.id} has no process"
    return min(pids, key=lambda pid: (_start_ticks(pid), pid))


def _start_ticks(pid: int) -> int:
    info = procfs.read_stat(pid)
    return info.start_ticks if info is not None else 0


def ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def out(container: Container, *args: str) -> str:
    done = container.exec_run(list(args), capture_output=True, timeout=30)
    assert done.returncode == 0, done
    return done.stdout.decode()


def commands(container: Container) -> dict[int, str]:
    """pid → command line of every process the container sees in its /proc."""
    script = 'for p in /proc/[0-9]*; do echo "${p#/proc/} $(tr "\\0" " " < $p/cmdline)"; done'
    found = {}
    for line in out(container, "sh", "-c", script).splitlines():
        pid, _, cmd = line.partition(" ")
        found[int(pid)] = cmd.strip()
    return found


def alive(pid: int) -> bool:
    info = procfs.read_stat(pid)
    return info is not None and info.state not in "ZX"


@pytest.fixture
def pod(store: FileStore, bundle: BundleFactory) -> Iterator[Pod]:
    """A running pod whose root (a pause-like container) sleeps."""
    pod = Pod.create("pod", bundle(SLEEP), store=store)
    try:
        pod.root.start()
        yield pod
    finally:
        pod.destroy()


def add_running(pod: Pod, bundle: Path, cid: str, **options: Any) -> Container:
    container = pod.add_container(cid, bundle, **options)
    container.start()
    return container


# -- the pure core ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_key", "id_key"),
    [
        (cri.CONTAINERD_TYPE, cri.CONTAINERD_SANDBOX_ID),
        (cri.CRIO_TYPE, cri.CRIO_SANDBOX_ID),
    ],
)
def test_cri_annotations_say_which_sandbox(type_key: str, id_key: str) -> None:
    assert cri.sandbox_to_join("c", {}) is None
    assert cri.sandbox_to_join("c", None) is None
    assert cri.sandbox_to_join("c", {type_key: "sandbox", id_key: "c"}) is None
    assert cri.sandbox_to_join("c", {type_key: "container", id_key: "pod"}) == "pod"
    with pytest.raises(SpecError, match=f"annotations.{id_key}: .*needs a sandbox id"):
        cri.sandbox_to_join("c", {type_key: "container"})
    with pytest.raises(SpecError, match="unknown container type 'pause'"):
        cri.sandbox_to_join("c", {type_key: "pause", id_key: "pod"})
    with pytest.raises(SpecError, match="cannot join its own sandbox"):
        cri.sandbox_to_join("c", {type_key: "container", id_key: "c"})


def test_a_container_type_without_sandbox_id_is_refused_when_the_spec_is_read(
    tmp_path: Path, bundle: BundleFactory
) -> None:
    path = annotate(bundle(SLEEP), {cri.CRIO_TYPE: "container"})
    with pytest.raises(SpecError, match=cri.CRIO_SANDBOX_ID):
        read_spec_file(path / "config.json")


# -- sharing and isolation -------------------------------------------------------------------


def test_containers_of_a_pod_share_one_pid_namespace(pod: Pod, bundle: BundleFactory) -> None:
    a = add_running(pod, bundle(["sleep", "1001"]), "a")
    b = add_running(pod, bundle(["sleep", "1002"]), "b")
    for container in (pod.root, a, b):
        assert out(container, "cat", "/proc/1/comm") == "sandboxrt-sup\n"
        seen = commands(container)
        for program in ("sleep 1000", "sleep 1001", "sleep 1002"):
            pids = [pid for pid, cmd in seen.items() if cmd == program]
            assert len(pids) == 1, (container.id, program, seen)
            assert pids[0] != 1  # the supervisor is PID 1, no container's init is
    # The very same namespaces, seen from the host; the mount namespaces differ.
    inits = [init_host_pid(c) for c in (pod.root, a, b)]
    for kind in SHARED:
        assert len({ns(pid, kind) for pid in inits}) == 1, kind
    assert len({ns(pid, "mnt") for pid in inits}) == 3


def test_each_container_has_its_own_root(pod: Pod, bundle: BundleFactory) -> None:
    a = add_running(pod, bundle(SLEEP), "a")
    b = add_running(pod, bundle(SLEEP), "b")
    out(a, "sh", "-c", "echo from-a > /tmp/mark")
    assert out(a, "cat", "/tmp/mark") == "from-a\n"
    for other in (b, pod.root):
        done = other.exec_run(["cat", "/tmp/mark"], capture_output=True)
        assert done.returncode != 0, (other.id, done)


def test_containers_of_a_pod_share_loopback(
    pod: Pod, bundle: BundleFactory, store: FileStore
) -> None:
    server = pod.add_container(
        "server",
        bundle(["nc", "-l", "-p", "7777"]),
        stdin=subprocess.PIPE,  # open until the end: nc must not stop at end of input
        stdout=subprocess.PIPE,
    )
    try:
        server.start()
        client = add_running(pod, bundle(SLEEP), "client")
        # Retried until the server listens; the exec's timeout bounds the loop.
        script = "until echo hello-over-lo | nc 127.0.0.1 7777; do sleep 0.05; done"
        client.exec_run(["sh", "-c", script], check=True, timeout=60)
        assert server.stdout is not None
        assert server.stdout.readline() == b"hello-over-lo\n"
        assert server.wait(timeout=30) == 0
    finally:
        for stream in (server.stdin, server.stdout):
            if stream is not None:
                stream.close()


def test_exec_into_a_subcontainer_joins_its_mount_namespace_and_cgroup(
    pod: Pod, bundle: BundleFactory
) -> None:
    a = add_running(pod, bundle(SLEEP), "a")
    init = init_host_pid(a)
    before = set(host_pids(a))
    process = a.exec(["sleep", "999"])
    try:
        (new,) = set(host_pids(a)) - before
        assert ns(new, "mnt") == ns(init, "mnt") != ns(init_host_pid(pod.root), "mnt")
        assert ns(new, "cgroup") == ns(init, "cgroup")
        assert new not in host_pids(pod.root)
        assert out(a, "sh", "-c", "echo x > /tmp/only-a; echo ok") == "ok\n"
        assert pod.root.exec_run(["cat", "/tmp/only-a"], capture_output=True).returncode != 0
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_process_belongs_to_the_container_it_was_exec_d_into(
    pod: Pod, bundle: BundleFactory
) -> None:
    a = add_running(pod, bundle(SLEEP), "a")
    add_running(pod, bundle(SLEEP), "b")
    process = a.exec(["sleep", "999"])
    sandbox = pod.sandbox
    assert sandbox is not None
    try:
        for cid in ("b", "pod"):
            with pytest.raises(ProcessNotFoundError, match=f'does not belong to container "{cid}"'):
                sandbox.wait_process(cid, process.pid, nohang=True)
            with pytest.raises(ProcessNotFoundError):
                sandbox.signal_process(cid, process.pid, signal.SIGKILL)
        assert process.poll() is None
    finally:
        process.kill()
    assert process.wait(timeout=10) == -signal.SIGKILL


def test_process_control_addresses_one_container(pod: Pod, bundle: BundleFactory) -> None:
    a = add_running(pod, bundle(["sleep", "1001"]), "a")
    b = add_running(pod, bundle(["sleep", "1002"]), "b")
    listed = {c.id: c.processes() for c in (pod.root, a, b)}
    assert [p.command for p in listed["a"]] == [("sleep", "1001")]
    assert [p.command for p in listed["b"]] == [("sleep", "1002")]
    assert [p.command for p in listed["pod"]] == [("sleep", "1000")]
    assert all(p.ppid == 1 for ps in listed.values() for p in ps)  # the supervisor's children
    b_init = listed["b"][0].pid
    with pytest.raises(ProcessNotFoundError):
        a.signal_process(b_init, signal.SIGKILL)  # b's init is not a's
    b.signal_process(b_init, signal.SIGTERM)
    assert b.wait_pid(b_init, timeout=10) == -signal.SIGTERM
    assert a.status is Status.RUNNING and pod.root.status is Status.RUNNING


def test_pausing_a_subcontainer_freezes_only_it(pod: Pod, bundle: BundleFactory) -> None:
    a = add_running(pod, bundle(SLEEP), "a")
    b = add_running(pod, bundle(SLEEP), "b")
    a.pause()
    assert a.status is Status.PAUSED
    assert out(b, "echo", "b runs") == "b runs\n"
    with pytest.raises(InvalidStateError):
        a.exec_run(["true"])
    a.resume()
    assert out(a, "echo", "a runs") == "a runs\n"


def test_destroying_the_root_with_a_paused_subcontainer_leaves_nothing(
    store: FileStore, bundle: BundleFactory
) -> None:
    pod = Pod.create("pod", bundle(SLEEP), store=store)
    try:
        pod.root.start()
        a = add_running(pod, bundle(SLEEP), "a")
        a.pause()
        pids = host_pids(a) + host_pids(pod.root)
    finally:
        pod.destroy()
    assert not any(alive(pid) for pid in pids)
    assert store.list_ids() == []
    assert os.listdir(store.runtime_dir) == []


def test_a_subcontainer_being_destroyed_never_reads_running_once_killed(
    pod: Pod, bundle: BundleFactory, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its sandbox forgot it (its processes killed, its exit file removed) before its record
    went: read meanwhile without the lock, it said running."""
    a = add_running(pod, bundle(SLEEP), "a")
    seen: list[Status] = []
    forget = Sandbox.forget_container

    def forget_and_look(sandbox: Sandbox, container_id: str, timeout: float) -> None:
        forget(sandbox, container_id, timeout)
        seen.append(Container.load(container_id, store=store).status)

    monkeypatch.setattr(Sandbox, "forget_container", forget_and_look)
    a.destroy()
    assert seen == [Status.STOPPED]


def test_a_pause_the_root_s_exit_overtakes_leaves_nothing_frozen(
    pod: Pod, bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root exited between pause's status check and its freeze: the member read
    stopped, its record said paused and its cgroup stayed frozen."""
    a = add_running(pod, bundle(SLEEP), "a")
    freeze = library_cgroup.freeze

    def exit_then_freeze(*args: Any, **kwargs: Any) -> None:
        pod.root.kill(signal.SIGKILL)
        assert pod.root.wait(timeout=10) == -signal.SIGKILL
        wait_until(lambda: not host_pids(a), timeout=20)  # (killed with the sandbox)
        freeze(*args, **kwargs)

    monkeypatch.setattr(library_cgroup, "freeze", exit_then_freeze)
    with pytest.raises(InvalidStateError, match=r"cannot pause .* in state stopped"):
        a.pause()
    assert a.status is Status.STOPPED
    assert not cgroup_of(a).is_frozen()


def test_a_paused_subcontainer_ends_with_the_root(pod: Pod, bundle: BundleFactory) -> None:
    """Its processes are thawed to die: a frozen one outlived the SIGKILL, the member read
    stopped with processes left, and the supervisor (PID 1) waited for them, until destroy."""
    a = add_running(pod, bundle(SLEEP), "a")
    a.pause()
    pids = host_pids(a)
    supervisor = pod.root.sandbox
    assert pids and supervisor is not None
    pod.root.kill(signal.SIGKILL)
    assert pod.root.wait(timeout=10) == -signal.SIGKILL
    assert a.status is Status.STOPPED
    wait_until(lambda: not any(alive(pid) for pid in [*pids, supervisor.pid]), timeout=20)


# -- lifecycle -------------------------------------------------------------------------------


def test_killing_a_subcontainer_leaves_the_others_running(pod: Pod, bundle: BundleFactory) -> None:
    a = add_running(pod, bundle(SLEEP), "a")
    b = add_running(pod, bundle(SLEEP), "b")
    a.kill(signal.SIGKILL)
    assert a.wait(timeout=10) == -signal.SIGKILL
    assert a.status is Status.STOPPED
    assert b.status is Status.RUNNING and pod.root.status is Status.RUNNING
    assert out(b, "echo", "alive") == "alive\n"
    b.kill(signal.SIGTERM)
    assert b.wait(timeout=10) == -signal.SIGTERM
    assert pod.root.status is Status.RUNNING


def test_kill_all_on_a_subcontainer_reaches_only_its_processes(
    pod: Pod, bundle: BundleFactory
) -> None:
    a = add_running(pod, bundle(["sh", "-c", "sleep 1000 & sleep 1000"]), "a")
    b = add_running(pod, bundle(SLEEP), "b")
    theirs = host_pids(b) + host_pids(pod.root)
    # sh, and the two sleeps (the background one may still be forking).
    a_pids: list[int] = []

    def ready() -> bool:
        a_pids[:] = host_pids(a)
        return len(a_pids) >= 2

    wait_until(ready)
    a.kill(signal.SIGKILL, all=True)
    assert a.wait(timeout=10) == -signal.SIGKILL
    assert not host_pids(a)
    assert not any(alive(pid) for pid in a_pids)
    assert all(alive(pid) for pid in theirs)
    assert b.status is Status.RUNNING


def test_a_subcontainer_stops_with_its_init(pod: Pod, bundle: BundleFactory) -> None:
    # Its init exits while a background child runs: that child goes too.
    a = add_running(pod, bundle(["sh", "-c", "sleep 1000 & exit 3"]), "a")
    assert a.wait(timeout=10) == 3
    wait_until(lambda: not host_pids(a))
    assert a.status is Status.STOPPED
    assert pod.root.status is Status.RUNNING
    # Destroying the stopped container (an empty cgroup) touches nothing else.
    b = add_running(pod, bundle(SLEEP), "b")
    a.destroy()
    assert pod.root.status is Status.RUNNING and b.status is Status.RUNNING
    assert out(pod.root, "echo", "fine") == "fine\n"


def test_processes_of_a_destroyed_subcontainer_read_killed(pod: Pod, bundle: BundleFactory) -> None:
    """As a destroyed root's: -SIGKILL, and signalling them does nothing (they raised
    ContainerNotFoundError, a with block's exit included)."""
    sub = add_running(pod, bundle(SLEEP), "sub")
    with sub.exec(["sleep", "60"]) as waited, sub.exec(["sleep", "60"]) as polled:
        sub.destroy()
        polled.terminate()
        polled.kill()
        assert polled.poll() == -signal.SIGKILL
        assert waited.wait(timeout=30) == -signal.SIGKILL
    assert pod.root.status is Status.RUNNING


def test_a_subcontainer_s_time_offsets_are_refused(pod: Pod, bundle: BundleFactory) -> None:
    """It shares its sandbox's time namespace: its offsets were ignored."""

    def offsets(document: dict[str, Any]) -> None:
        document["linux"]["namespaces"].append({"type": "time"})
        document["linux"]["timeOffsets"] = {"boottime": {"secs": 86400}}

    path = edit_config(bundle(SLEEP), offsets)
    with pytest.raises(SpecError, match=r'container "timed": linux\.timeOffsets: a pod'):
        pod.add_container("timed", path)


def test_a_wait_racing_a_subcontainer_destroy_is_told_so(pod: Pod, bundle: BundleFactory) -> None:
    """The supervisor's error reply (a container it no longer knows) raised a
    ``ProtocolError`` ("wait reply without a status") in a waiter racing the destroy."""
    sub = add_running(pod, bundle(SLEEP), "sub")
    sandbox = sub.sandbox
    assert sandbox is not None
    sub.destroy()
    with pytest.raises(ContainerNotFoundError, match="sub"):
        sandbox.wait("sub", timeout=5)


def test_destroying_a_subcontainer_removes_only_its_cgroup_and_record(
    pod: Pod, bundle: BundleFactory, store: FileStore
) -> None:
    a = add_running(pod, bundle(SLEEP), "a")
    b = add_running(pod, bundle(SLEEP), "b")
    a_dirs, b_dirs = cgroup_of(a).directories, cgroup_of(b).directories
    a_pids = host_pids(a)
    assert [c.id for c in pod.containers()] == ["pod", "a", "b"]
    a.destroy()
    assert not any(alive(pid) for pid in a_pids)
    assert not any(d.exists() for d in a_dirs)
    assert all(d.exists() for d in b_dirs)
    assert sorted(store.list_ids()) == ["b", "pod"]
    assert [c.id for c in pod.containers()] == ["pod", "b"]
    assert b.status is Status.RUNNING and pod.root.status is Status.RUNNING
    assert out(b, "echo", "still") == "still\n"
    a.destroy()  # idempotent
    # The id is free again, in the same pod.
    again = add_running(pod, bundle(SLEEP), "a")
    assert again.status is Status.RUNNING


def test_subcontainers_come_and_go_without_leaking_supervisor_fds(
    pod: Pod, bundle: BundleFactory
) -> None:
    supervisor = pod.root.state().pid
    path = bundle(SLEEP)

    def cycle(cid: str) -> None:
        sub = add_running(pod, path, cid)
        assert out(sub, "echo", cid) == f"{cid}\n"
        sub.destroy()

    def fds() -> list[str]:
        return sorted(os.listdir(f"/proc/{supervisor}/fd"))

    def settled() -> list[str]:
        """The fds once a connection the library just closed is closed on its side too."""
        seen = [fds()]
        while len(seen) < 3 or seen[-1] != seen[-2] or seen[-2] != seen[-3]:
            time.sleep(0.02)
            seen.append(fds())
        return seen[-1]

    cycle("warm")  # anything opened once for good is open before the count
    before = settled()
    for i in range(5):
        cycle(f"c{i}")
    wait_until(lambda: fds() == before, timeout=5.0)


def test_destroying_the_root_takes_everything_down(store: FileStore, bundle: BundleFactory) -> None:
    pod = Pod.create("pod", bundle(SLEEP), store=store)
    try:
        pod.root.start()
        subs = [add_running(pod, bundle(SLEEP), cid) for cid in ("a", "b")]
        created_only = pod.add_container("c", bundle(SLEEP))  # never started
        members = [pod.root, *subs, created_only]
        pids = [pid for c in members for pid in host_pids(c)]
        dirs = [d for c in members for d in cgroup_of(c).directories]
        supervisor = pod.root.state().pid
        assert supervisor is not None and len(pids) == 4
    finally:
        pod.destroy()
    assert not alive(supervisor)
    assert not any(alive(pid) for pid in pids)
    assert not any(d.exists() for d in dirs)
    assert store.list_ids() == []
    assert os.listdir(store.runtime_dir) == []
    for container in members:
        with pytest.raises(ContainerNotFoundError):
            container.status  # noqa: B018 - its record is gone
    pod.destroy()  # idempotent


def test_when_the_root_exits_the_subcontainers_stop(pod: Pod, bundle: BundleFactory) -> None:
    a = add_running(pod, bundle(SLEEP), "a")
    created = pod.add_container("c", bundle(SLEEP))
    pod.root.kill(signal.SIGKILL)
    assert pod.root.wait(timeout=10) == -signal.SIGKILL
    assert a.wait(timeout=10) == -signal.SIGKILL
    assert a.status is Status.STOPPED and created.status is Status.STOPPED
    loaded = in_subprocess(pod.root._store, "print(Container.load('a', store=store).status)")
    assert loaded == "stopped"
    with pytest.raises(InvalidStateError, match='cannot add a container to container "pod"') as e:
        pod.add_container("late", bundle(SLEEP))
    assert 'container "late" cannot join it' in str(e.value)  # (who asked, too)
    assert sorted(pod.root._store.list_ids()) == ["a", "c", "pod"]


def test_a_subcontainer_loads_and_execs_from_another_process(
    pod: Pod, bundle: BundleFactory, store: FileStore
) -> None:
    add_running(pod, bundle(SLEEP), "a")
    script = (
        "c = Container.load('a', store=store); "
        "done = c.exec_run(['sh', '-c', 'echo $((6*7))'], capture_output=True); "
        "print(c.status, c.sandbox_id, c.is_subcontainer, done.stdout.decode().strip(), "
        "[x.id for x in Pod.load('a', store=store).containers()])"
    )
    assert in_subprocess(store, script) == "running pod True 42 ['pod', 'a']"


def test_pod_load_finds_the_root_by_its_exact_id_only(
    pod: Pod, bundle: BundleFactory, store: FileStore
) -> None:
    """A subcontainer whose root's record is gone (its creator crashed) names no pod: not
    the pod of another container whose id merely starts with the root's."""
    add_running(pod, bundle(SLEEP), "a")
    other = Container.create("pod-other", bundle(SLEEP), store=store)
    root = store.load("pod")
    store.delete("pod")
    try:
        with pytest.raises(ContainerNotFoundError):
            Pod.load("a", store=store)
    finally:
        store.create(root)
        other.destroy()
    assert Pod.load("a", store=store).id == "pod"


def test_a_created_subcontainer_waits_for_start(pod: Pod, bundle: BundleFactory) -> None:
    a = pod.add_container("a", bundle(["sh", "-c", "exit 7"]))
    assert a.status is Status.CREATED
    assert a.state().pid == pod.root.state().pid  # the sandbox's pid, as runsc
    a.start()
    assert a.wait(timeout=10) == 7
    assert a.wait(timeout=10) == 7


def test_a_created_subcontainers_init_holds_no_host_directory_it_has_no_use_for(
    pod: Pod, bundle: BundleFactory
) -> None:
    # It waits for start, privileged: the supervisor's fds on host directories (the
    # standard library's, the cgroups' it joined through files already) stay with us.
    a = pod.add_container("a", bundle(["true"]))
    assert a.status is Status.CREATED
    pid = init_host_pid(a)
    opened = stdlib.directories()
    try:
        directories_of_stdlib = {os.readlink(f"/proc/self/fd/{fd}") for fd in opened}
    finally:
        for fd in opened:
            os.close(fd)
    assert directories_of_stdlib
    held = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            held[fd] = (os.readlink(f"/proc/{pid}/fd/{fd}"), os.stat(f"/proc/{pid}/fd/{fd}"))
    assert held, "the init holds its stdio at least"
    directories = {fd: link for fd, (link, st) in held.items() if stat.S_ISDIR(st.st_mode)}
    assert not {fd: link for fd, link in directories.items() if link in directories_of_stdlib}
    assert not {fd: link for fd, link in directories.items() if link.startswith("/sys/fs/cgroup")}
    a.start()
    assert a.wait(timeout=10) == 0


def test_run_in_a_pod_starts_at_once_and_destroys_only_the_subcontainer(
    pod: Pod, bundle: BundleFactory, store: FileStore
) -> None:
    app = annotate(
        bundle(["sh", "-c", "exit 5"]),
        {cri.CONTAINERD_TYPE: "container", cri.CONTAINERD_SANDBOX_ID: "pod"},
    )
    assert Container.run("job", app, store=store) == 5
    assert store.list_ids() == ["pod"]
    assert pod.root.status is Status.RUNNING


def test_a_subcontainer_gets_its_own_terminal(pod: Pod, bundle: BundleFactory) -> None:
    a = pod.add_container("a", bundle(["sh", "-c", "tty; echo done"], terminal=True))
    try:
        assert a.console is not None
        a.start()
        assert a.wait(timeout=10) == 0
        text = b""
        while b"done" not in text:
            chunk = a.console.read(1024)
            assert chunk, text
            text += chunk
        assert b"/dev/pts/0" in text  # the first pty of its own devpts
    finally:
        if a.console is not None:
            a.console.close()


def test_a_subcontainer_that_cannot_be_created_leaves_nothing(
    pod: Pod, bundle: BundleFactory, store: FileStore
) -> None:
    with pytest.raises(InitError, match="no-such-program"):
        pod.add_container("bad", bundle(["no-such-program"]))
    assert store.list_ids() == ["pod"]
    assert [c.id for c in pod.containers()] == ["pod"]
    assert pod.root.status is Status.RUNNING
    add_running(pod, bundle(SLEEP), "bad")  # the id, and the sandbox, still serve
    with pytest.raises(ContainerExistsError):
        pod.add_container("bad", bundle(SLEEP))
    with pytest.raises(ContainerExistsError, match='"pod"'):  # (the root's id)
        pod.add_container("pod", bundle(SLEEP))


def test_adding_to_a_missing_pod_fails_cleanly(store: FileStore, bundle: BundleFactory) -> None:
    with pytest.raises(
        ContainerNotFoundError, match='container "a" cannot join sandbox "nowhere": it does not'
    ):
        Container.create(
            "a",
            annotate(
                bundle(SLEEP),
                {cri.CONTAINERD_TYPE: "container", cri.CONTAINERD_SANDBOX_ID: "nowhere"},
            ),
            store=store,
        )
    assert store.list_ids() == []


def test_a_pod_container_may_not_set_sysctls_of_the_runtime_s_own_namespace(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Its root joins this process's network namespace by path (the host's): a container
    of the pod would set that namespace's sysctls, so it is refused, as the root would be;
    also once that path names nothing any more (a process's that exited: the member was
    let through, and set the host's). Safe payload: the value the host has now."""
    ttl = Path("/proc/sys/net/ipv4/ip_default_ttl").read_text().strip()
    holder = subprocess.Popen(["sleep", "1000"])  # in our namespaces, for its path

    def join_ours(pid: int) -> Callable[[dict[str, Any]], None]:
        def change(doc: dict[str, Any]) -> None:
            for ns in doc["linux"]["namespaces"]:
                if ns["type"] == "network":
                    ns["path"] = f"/proc/{pid}/ns/net"

        return change

    try:
        for pod_id, pid in (("hostnet", os.getpid()), ("gonenet", holder.pid)):
            root_path = bundle(SLEEP)
            edit_config(root_path, join_ours(pid))
            pod = Pod.create(pod_id, root_path, store=store)
            try:
                pod.root.start()
                if pid == holder.pid:
                    holder.kill()
                    holder.wait()
                sub = bundle(SLEEP)
                sysctl = {"net.ipv4.ip_default_ttl": ttl}
                edit_config(sub, lambda d, sysctl=sysctl: d["linux"].update(sysctl=sysctl))
                with pytest.raises(SpecError, match=r'container "sub": .*own network namespace'):
                    pod.add_container("sub", sub)
                assert "sub" not in Container.list(store=store)
            finally:
                pod.destroy()
    finally:
        holder.kill()
        holder.wait()


def test_adding_to_a_pod_whose_root_just_exited_names_the_root(
    pod: Pod, store: FileStore, bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root exits between the check of its state and the join: refused as if it
    had exited before (InvalidStateError naming the root), not as a raw ENOENT."""
    path = bundle(SLEEP)
    join = Sandbox.create_container

    def root_exits_first(self: Sandbox, *args: Any, **kwargs: Any) -> Any:
        pod.root.kill(signal.SIGKILL)
        pod.root.wait(timeout=30)
        wait_until(lambda: pod.root.status is Status.STOPPED)
        wait_until(lambda: not os.path.exists(f"/proc/{self.pid}"))
        return join(self, *args, **kwargs)

    monkeypatch.setattr(Sandbox, "create_container", root_exits_first)
    with pytest.raises(InvalidStateError, match='container "pod" in state stopped'):
        pod.add_container("late", path)
    assert "late" not in Container.list(store=store)


def test_subcontainer_creation_racing_a_root_destroy_leaves_nothing(
    store: FileStore, bundle: BundleFactory
) -> None:
    pod = Pod.create("pod", bundle(SLEEP), store=store)
    path = bundle(SLEEP)
    outcomes: list[str] = []

    def add_many() -> None:
        for i in range(30):
            try:
                pod.add_container(f"c{i}", path)
                outcomes.append("added")
            except Exception as exc:  # checked below: only our clean refusals
                outcomes.append(type(exc).__name__)
                break

    try:
        pod.root.start()
        adder = threading.Thread(target=add_many)
        adder.start()
        wait_until(lambda: len(outcomes) >= 3)  # then destroy amid the next adds
    finally:
        pod.destroy()
    adder.join(timeout=120)
    assert not adder.is_alive()
    assert outcomes[:3] == ["added"] * 3
    refusals = {"ContainerNotFoundError", "InvalidStateError", "SandboxDiedError"}
    assert set(outcomes) - {"added"} <= refusals, outcomes
    assert store.list_ids() == []
    assert os.listdir(store.runtime_dir) == []


def test_a_corrupt_record_of_a_subcontainer_keeps_no_pod_alive(
    store: FileStore, bundle: BundleFactory
) -> None:
    pod = Pod.create("pod", bundle(SLEEP), store=store)
    record = store.root / "a.json"
    intact = ""
    try:
        pod.root.start()
        add_running(pod, bundle(SLEEP), "a")
        intact = record.read_text()
        record.write_text(intact[:40])  # cut short
        supervisor = pod.root.sandbox
        assert supervisor is not None
    finally:
        pod.destroy()  # raised CorruptMetadataError, the sandbox left running
        if intact:  # left as it was: mended, it is destroyed (its cgroup with it)
            record.write_text(intact)
            Container.load("a", store=store).destroy()
    assert not supervisor.is_running()
    assert store.list_ids() == []


def test_a_start_of_a_subcontainer_whose_init_died_fails(pod: Pod, bundle: BundleFactory) -> None:
    a = pod.add_container("a", bundle(["true"]))
    os.kill(init_host_pid(a), signal.SIGKILL)
    wait_until(lambda: a.status is Status.STOPPED)
    with pytest.raises(InvalidStateError):  # the library checks its status first
        a.start()
    sandbox = a.sandbox
    assert sandbox is not None
    # Asked anyway (a start racing the init's death): the supervisor said "started".
    with pytest.raises(SandboxDiedError, match="exited before it was started"):
        sandbox.start("a", {})
    assert a.wait(timeout=10) == -signal.SIGKILL


def test_a_start_waiting_on_its_hooks_holds_up_no_other_container(
    pod: Pod, tmp_path: Path, bundle: BundleFactory
) -> None:
    # A startContainer hook (no timeout) that waits for a gate: the supervisor used to
    # wait with it, and served no request of any container of the pod meanwhile.
    gate = tmp_path / "gate"
    gate.mkdir()
    path = bundle(["true"])
    config = path / "config.json"
    document = json.loads(config.read_text())
    mount = {"destination": "/gate", "type": "bind", "source": str(gate), "options": ["bind"]}
    document["mounts"].append(mount)
    wait = "while [ ! -e /gate/open ]; do sleep 0.05; done"
    document["hooks"] = {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", wait]}]}
    config.write_text(json.dumps(document))
    a = pod.add_container("a", path)
    outcomes: list[object] = []

    def start() -> None:
        try:
            a.start()
            outcomes.append("started")
        except Exception as exc:  # checked below
            outcomes.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    served = threading.Event()

    def exec_in_root() -> None:
        if pod.root.exec_run(["true"]).returncode == 0:
            served.set()

    threading.Thread(target=exec_in_root, daemon=True).start()
    try:
        assert served.wait(timeout=60), "the pod's supervisor waited with a start hook"
        assert outcomes == [], "the start waits for its hook"
    finally:
        (gate / "open").touch()
        starter.join(timeout=60)
    assert outcomes == ["started"]
    assert a.wait(timeout=10) == 0


def test_a_subcontainer_runs_its_own_hooks(pod: Pod, tmp_path: Path, bundle: BundleFactory) -> None:
    entries = Setup(tmp_path, bundle).run_in_pod(pod, "a")
    assert [tag for tag, _ in entries] == list(HOOK_PHASES)
    assert {state["id"] for _, state in entries} == {"a"}
    assert pod.root.status is Status.RUNNING


def test_a_failing_hook_of_a_subcontainer_leaves_the_pod_as_it_was(
    pod: Pod, tmp_path: Path, bundle: BundleFactory, store: FileStore
) -> None:
    setup = Setup(tmp_path, bundle)
    setup.write({"createRuntime": [setup.hook("createRuntime", fail=True)]})
    with pytest.raises(HookError, match="boom"):
        pod.add_container("a", setup.path)
    assert store.list_ids() == ["pod"]
    assert [c.id for c in pod.containers()] == ["pod"]
    assert out(pod.root, "echo", "fine") == "fine\n"


# -- CRI annotations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_key", "id_key"),
    [
        (cri.CONTAINERD_TYPE, cri.CONTAINERD_SANDBOX_ID),
        (cri.CRIO_TYPE, cri.CRIO_SANDBOX_ID),
    ],
    ids=["containerd", "cri-o"],
)
def test_cri_annotations_put_a_container_in_a_sandbox(
    store: FileStore, bundle: BundleFactory, type_key: str, id_key: str
) -> None:
    pause = annotate(bundle(SLEEP), {type_key: "sandbox", id_key: "pause1"})
    root = Container.create("pause1", pause, store=store)
    try:
        root.start()
        app = annotate(bundle(SLEEP), {type_key: "container", id_key: "pause1"})
        member = Container.create("app1", app, store=store)
        member.start()
        assert member.sandbox_id == "pause1" and member.is_subcontainer
        assert not root.is_subcontainer
        assert member.state().annotations[type_key] == "container"
        for kind in SHARED:
            assert ns(init_host_pid(member), kind) == ns(init_host_pid(root), kind)
        assert ns(init_host_pid(member), "mnt") != ns(init_host_pid(root), "mnt")
        assert [c.id for c in Pod.load("app1", store=store).containers()] == ["pause1", "app1"]
        # Without a sandbox id: refused before anything is made.
        orphan = annotate(bundle(SLEEP), {type_key: "container"})
        with pytest.raises(SpecError, match=id_key) as e:
            Container.create("orphan", orphan, store=store)
        assert str(e.value).startswith(f'container "orphan", {orphan / "config.json"}: ')
        assert sorted(store.list_ids()) == ["app1", "pause1"]
        # A Pod API call that contradicts the annotations is refused too.
        with pytest.raises(SpecError, match='sandbox "pause1", not a new sandbox') as e:
            Pod.create("other", app, store=store)
        assert str(e.value).startswith(f'container "other", {app / "config.json"}: ')
        # A member is no sandbox to join (typed, naming who asked).
        nested = annotate(bundle(SLEEP), {type_key: "container", id_key: "app1"})
        with pytest.raises(InvalidArgumentError, match='sandbox "app1": that is a container of'):
            Container.create("nested", nested, store=store)
        assert sorted(store.list_ids()) == ["app1", "pause1"]
    finally:
        root.destroy()
    assert store.list_ids() == []


# -- shared helpers --------------------------------------------------------------------------


def in_subprocess(store: FileStore, code: str) -> str:
    """Run ``code`` in a fresh Python process with ``store`` and the API imported."""
    program = (
        "from sandboxrt import Container, FileStore, Pod\n"
        f"store = FileStore({str(store.root)!r})\n"
        f"{code}\n"
    )
    done = in_python(program)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_member_whose_creator_died_early_goes_with_its_pod(
    pod: Pod, bundle: BundleFactory, store: FileStore
) -> None:
    """Its creator killed once it made the member's record and cgroup, before it asked the
    supervisor: the pod's destroy still removes both (it found the member by a note
    written only when the supervisor was asked)."""
    program = (
        "from sandboxrt import Container, FileStore, Pod\n"
        "from sandboxrt.sandbox import Sandbox\n"
        "import os\n"
        "Sandbox.create_container = lambda *args, **kwargs: os._exit(9)\n"
        f"Pod.load('pod', store=FileStore({str(store.root)!r}))"
        f".add_container('early', {str(bundle(SLEEP))!r})\n"
    )
    assert in_python(program).returncode == 9
    record = store.load("early").cgroup
    assert record is not None
    directories = cgroups.load(record).directories
    assert directories and all(d.is_dir() for d in directories)
    pod.destroy()
    assert store.list_ids() == []
    assert not any(d.exists() for d in directories)


def test_each_container_of_a_pod_has_its_own_files(pod: Pod, bundle: BundleFactory) -> None:
    sub = add_running(pod, bundle(SLEEP), "files-sub")
    sub.files.write_text("/who", "sub\n")
    pod.root.files.write_text("/who", "root\n")
    assert sub.exec_run(["cat", "/who"], capture_output=True).stdout == b"sub\n"
    assert pod.root.exec_run(["cat", "/who"], capture_output=True).stdout == b"root\n"
    assert sub.gofer is not None and pod.root.gofer is not None
    assert sub.gofer.pid != pod.root.gofer.pid and sub.gofer.socket != pod.root.gofer.socket


def test_a_subcontainers_gofer_exits_with_its_init(pod: Pod, bundle: BundleFactory) -> None:
    """The supervisor outlives a subcontainer: its gofer watches the subcontainer's init
    (a pidfd from the supervisor) and exits with it, not with the sandbox."""
    a = add_running(pod, bundle(SLEEP), "a")
    gofer = a.gofer
    assert gofer is not None and gofer.is_running()
    assert a.files.read_text("/etc/hostname") is not None
    a.kill(signal.SIGKILL)
    assert a.wait(timeout=10) == -signal.SIGKILL
    wait_until(lambda: not gofer.is_running())
    assert pod.root.status is Status.RUNNING  # the sandbox lives on
    root_gofer = pod.root.gofer
    assert root_gofer is not None and root_gofer.is_running()


def test_a_stale_gofer_socket_does_not_stop_a_subcontainer(pod: Pod, bundle: BundleFactory) -> None:
    """A gofer socket a crashed creation of the same id left behind is replaced."""
    runtime_dir = pod.root.sandbox.runtime_dir  # type: ignore[union-attr]
    stale = socket_path(runtime_dir, "b")
    with open(stale, "w") as f:
        f.write("stale")
    b = add_running(pod, bundle(SLEEP), "b")
    assert b.files.listdir("/bin")
    assert os.stat(stale).st_mode & 0o170000 == 0o140000  # a socket now


def test_a_group_signal_to_an_exited_exec_reaches_no_other_member(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Once an exec of member A exited and the PID space wrapped, its number may lead a
    process group of member B (a ``setsid``): ``kill(group=True)`` on A's Process does not
    reach it (only A's processes of that group would be signalled)."""
    pod = Pod.create("pg-root", bundle(["sleep", "1000"]), store=store)
    try:
        pod.root.start()
        a = pod.add_container("pg-a", bundle(["sleep", "1001"]), store=store)
        a.start()
        b = pod.add_container("pg-b", bundle(["sleep", "1002"]), store=store)
        b.start()
        small_pid_space(pod.root, 1200)
        burn = "i=0; while [ $i -lt 400 ]; do ( : ); i=$((i+1)); done"
        a.exec_run(["sh", "-c", burn], timeout=60)
        for _ in range(3):
            done = a.exec(["true"])
            assert done.wait() == 0
            target = done.pid
            cycle = f"""
            while :; do
              ( : ) & c=$!; wait $c
              if [ $c -eq {target - 1} ]; then
                setsid sleep 1003 </dev/null >/dev/null 2>&1 & c=$!
                [ $c -eq {target} ] && exit 0
                kill $c; exit 3
              fi
            done
            """
            if b.exec_run(["sh", "-c", cycle], timeout=60).returncode == 0:
                break
        else:
            pytest.skip("B's leader never got the number of A's exec")

        def leaders() -> list[int]:
            return [p.pid for p in b.processes() if p.command == ("sleep", "1003")]

        wait_until(lambda: leaders() == [target])  # (exec'd once its shell moved on)
        done.kill(group=True)
        time.sleep(0.3)
        assert leaders() == [target]
    finally:
        pod.destroy()


def test_a_member_s_network_mode_is_its_pod_s(store: FileStore, bundle: BundleFactory) -> None:
    """A member shares its pod's network namespace: it records the pod's mode, and asking
    for the host's network in a pod with one of its own is refused (it was ignored)."""
    host_pod = Pod.create("net-host", bundle(["sleep", "1000"]), store=store,
                          config=Config(network="host"))  # fmt: skip
    try:
        host_pod.root.start()
        member = host_pod.add_container("net-host-a", bundle(["sleep", "1001"]), store=store)
        assert member.config.network == "host"
    finally:
        host_pod.destroy()
    # A root whose spec has no network namespace: the pod is on the host's network too.
    spec_host = edit_config(
        bundle(["sleep", "1000"]),
        lambda doc: doc["linux"].update(
            namespaces=[ns for ns in doc["linux"]["namespaces"] if ns["type"] != "network"]
        ),
    )
    spec_pod = Pod.create("net-spec", spec_host, store=store)
    try:
        spec_pod.root.start()
        host_member = spec_pod.add_container(
            "net-spec-a", bundle(["sleep", "1001"]), store=store, config=Config(network="host")
        )
        assert host_member.config.network == "host"
    finally:
        spec_pod.destroy()
    own = Pod.create("net-own", bundle(["sleep", "1000"]), store=store)
    try:
        own.root.start()
        with pytest.raises(InvalidArgumentError, match=r'"net-b": Config\(network="host"\)'):
            own.add_container(
                "net-b", bundle(["sleep", "1001"]), store=store, config=Config(network="host")
            )
        assert [c.id for c in own.containers()] == ["net-own"]
    finally:
        own.destroy()
    assert Container.list(store=store) == []


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def test_destroying_a_stopped_member_spares_whoever_has_its_old_pid(
    pod: Pod, bundle: BundleFactory
) -> None:
    """A stopped member's init was reaped: its number may lead someone else's process
    group by the time the member is destroyed (once the PID space wrapped; with the host's
    PID namespace, anyone's). The destroy signals only the member's own processes."""
    a = add_running(pod, bundle(SLEEP), "a")
    old = next(p.pid for p in a.processes())
    a.kill(signal.SIGKILL)
    assert a.wait(timeout=10) == -signal.SIGKILL
    supervisor = pod.root.state().pid
    # The next process of the sandbox's PID namespace gets the old number and leads a
    # process group of its own (as the PID space wrapping would give it, sooner).
    script = f"echo {old - 1} > /proc/sys/kernel/ns_last_pid && exec setsid -f -w sleep 1000"
    command = ["nsenter", "-t", str(supervisor), "-p", "--", "sh", "-c", script]
    holder = subprocess.Popen(command)
    victim = 0
    try:

        def grandchildren() -> list[int]:
            return [pid for child in _children(holder.pid) for pid in _children(child)]

        wait_until(lambda: bool(grandchildren()))
        victim = grandchildren()[0]
        with open(f"/proc/{victim}/status") as status:
            nspid = next(line for line in status if line.startswith("NSpid:")).split()
        assert int(nspid[-1]) == old and os.getpgid(victim) == victim
        a.destroy()
        time.sleep(0.3)
        assert alive(victim), "the destroy killed the process that has the member's old pid"
    finally:
        if victim:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        holder.wait(timeout=10)


def test_a_pod_left_in_a_with_block_is_destroyed(store: FileStore, bundle: BundleFactory) -> None:
    with Pod.create("wpod", bundle(SLEEP), store=store, stdout=subprocess.PIPE) as pod:
        pod.root.start()
        pod.add_container("wapp", bundle(SLEEP)).start()
        assert sorted(Container.list(store=store)) == ["wapp", "wpod"]
    assert Container.list(store=store) == []
    assert pod.root.stdout is not None and pod.root.stdout.closed  # (as a Container's)
