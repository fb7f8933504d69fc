"""The supervisor's root is minimal once its root container is created (decision 33)."""

from __future__ import annotations

import _thread
import io
import os
import signal
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from conftest import (
    BundleFactory,
    assert_minimal_root,
    in_python,
    needs_busybox,
    needs_root,
)
from test_hooks_lifecycle import ALL_PHASES as HOOK_PHASES
from test_hooks_lifecycle import Setup

from sandboxrt import Config, Container, FileStore, Pod, Status, write_spec_file
from sandboxrt._core.spec import read_spec_file
from sandboxrt._proc.confinement import _thread_count
from sandboxrt._proc.launcher import ForkServerLauncher

pytestmark = [needs_root, needs_busybox]

SLEEP = ["sleep", "1000"]


def assert_confined(pid: int) -> None:
    """The supervisor ``pid``'s root is minimal."""
    assert_minimal_root(pid)
    # Its /proc is its PID namespace's: it is 1 there.
    with open(f"/proc/{pid}/root/proc/1/status") as f:
        assert f.readline().split() == ["Name:", "sandboxrt-sup"]


def out(container: Container, *args: str, user: str | None = None) -> str:
    done = container.exec_run(list(args), capture_output=True, timeout=30, user=user)
    assert done.returncode == 0, done
    return done.stdout.decode()


@pytest.fixture
def running(tmp_path: Path, bundle: BundleFactory) -> Iterator[Container]:
    c = Container.create("conf", bundle(SLEEP), store=FileStore(tmp_path / "store"))
    try:
        c.start()
        yield c
    finally:
        c.destroy()


def test_the_supervisor_root_is_minimal_and_the_container_sees_its_rootfs(
    running: Container,
) -> None:
    sandbox = running.sandbox
    assert sandbox is not None
    assert_confined(sandbox.pid)
    # The container sees its own root (busybox's), not the supervisor's.
    assert "busybox" in out(running, "ls", "/bin")


def test_exec_with_and_without_the_agent_after_confinement(running: Container) -> None:
    assert out(running, "echo", "agent") == "agent\n"  # the agent's profile
    assert out(running, "echo", "again") == "again\n"  # spawned by the agent
    assert out(running, "id", "-u", user="0") == "0\n"  # a user to look up: the slow way
    proc = running.exec(["sh", "-c", "exit 5"])
    assert proc.wait(timeout=30) == 5
    sandbox = running.sandbox
    assert sandbox is not None
    assert_confined(sandbox.pid)


def test_exit_status_reaches_a_second_process(running: Container, tmp_path: Path) -> None:
    running.kill(signal.SIGKILL)
    assert running.wait(timeout=30) == -signal.SIGKILL
    done = in_python(
        "from sandboxrt import Container, FileStore\n"
        f"c = Container.load('conf', store=FileStore({str(tmp_path / 'store')!r}))\n"
        "print(c.status.value, c.wait(timeout=30))"
    )
    assert done.stdout.split() == ["stopped", str(-signal.SIGKILL)], done


def test_kill_all_and_pause_after_confinement(running: Container) -> None:
    running.exec(["sleep", "1000"])
    running.pause()
    assert running.status is Status.PAUSED
    running.resume()
    assert running.status is Status.RUNNING
    running.kill(signal.SIGKILL, all=True)
    assert running.wait(timeout=30) == -signal.SIGKILL


def test_a_pod_works_from_a_confined_supervisor(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    pod = Pod.create("cpod", bundle(SLEEP), store=store)
    try:
        pod.root.start()
        sandbox = pod.root.sandbox
        assert sandbox is not None
        assert_confined(sandbox.pid)
        sub = pod.add_container("sub", bundle(SLEEP))
        sub.start()
        assert out(sub, "echo", "sub") == "sub\n"
        assert out(sub, "id", "-u", user="0") == "0\n"
        # Its cgroup came as fds: the supervisor checks membership through it.
        proc = sub.exec(["sleep", "1000"])
        sub.signal_process(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
        sub.kill(signal.SIGKILL)
        assert sub.wait(timeout=30) == -signal.SIGKILL
        assert os.path.exists(sandbox.exit_file_of("sub"))
        # createContainer hooks (host programs) run from a host root the library sent.
        entries = Setup(tmp_path, bundle).run_in_pod(pod, "hooked")
        assert [tag for tag, _ in entries] == list(HOOK_PHASES)
        assert_confined(sandbox.pid)
    finally:
        pod.destroy()


def test_an_overlay_root_and_its_export_after_confinement(
    tmp_path: Path, bundle: BundleFactory
) -> None:
    store = FileStore(tmp_path / "store")
    c = Container.create("ovl", bundle(SLEEP), store=store, config=Config(overlay=True))
    try:
        c.start()
        sandbox = c.sandbox
        assert sandbox is not None
        assert_confined(sandbox.pid)
        out(c, "sh", "-c", "echo changed > /new-file")
        exported = io.BytesIO()
        c.export_changes(exported)
        exported.seek(0)
        with tarfile.open(fileobj=exported) as tar:
            assert "new-file" in tar.getnames()
    finally:
        c.destroy()


def test_a_sandbox_without_a_pid_namespace_of_its_own_is_not_confined(
    tmp_path: Path, bundle: BundleFactory
) -> None:
    path = bundle(["sleep", "1000"])
    spec = read_spec_file(path / "config.json")
    assert spec.linux is not None and spec.linux.namespaces is not None
    namespaces = [ns for ns in spec.linux.namespaces if ns.type != "pid"]
    write_spec_file(
        path / "config.json",
        attrs.evolve(spec, linux=attrs.evolve(spec.linux, namespaces=namespaces)),
    )
    c = Container.create("nopid", path, store=FileStore(tmp_path / "store"))
    try:
        c.start()
        sandbox = c.sandbox
        assert sandbox is not None
        assert os.path.isdir(f"/proc/{sandbox.pid}/root/usr")  # the host's view, as before
        assert out(c, "echo", "works") == "works\n"
        c.kill(signal.SIGKILL)
        assert c.wait(timeout=30) == -signal.SIGKILL
    finally:
        c.destroy()


def test_the_detach_thread_is_waited_for_as_the_kernel_counts_threads() -> None:
    """The supervisor forks only once the detach thread is gone from the kernel, which
    outlives the interpreter's own count of it (``_thread._count``) for a moment."""
    assert _thread_count() == len(os.listdir("/proc/self/task"))
    before = _thread_count()
    release = _thread.allocate_lock()
    release.acquire()
    _thread.start_new_thread(release.acquire, ())
    try:
        assert _thread_count() == before + 1
    finally:
        release.release()
    deadline = time.monotonic() + 5
    while _thread_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _thread_count() == before


@pytest.mark.parametrize("build_ahead", [False, True], ids=["fresh", "built-ahead"])
def test_a_run_program_never_sees_the_host_mount_table_as_its_pid_1s(
    tmp_path: Path, bundle: BundleFactory, build_ahead: bool
) -> None:
    """``/proc/1/mountinfo`` in the container is the supervisor's: a ``run``'s program
    started before the supervisor pivoted read the host's mount table there (the
    kernel shows only mounts beneath the reader's root, and the supervisor's was the
    host's until then), in most runs. Now the supervisor confines itself first."""
    path = bundle(["cat", "/proc/1/mountinfo"])
    store = FileStore(tmp_path / "store")
    launcher = ForkServerLauncher(build_ahead=build_ahead)
    seen = []
    try:
        for i in range(6):
            with (tmp_path / f"out{i}").open("w+b") as out_file:
                code = Container.run(
                    f"mi{i}", path, store=store, stdout=out_file, launcher=launcher
                )
                out_file.seek(0)
                seen.append(out_file.read().decode())
            assert code == 0
    finally:
        launcher.close()
    for table in seen:
        mount_points = {line.split()[4] for line in table.splitlines()}
        assert mount_points <= {"/", "/proc"}, table
