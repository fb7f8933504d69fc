"""The launchers: the fork server with its warm sandbox, and the plain subprocess launcher."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import BundleFactory, in_python, needs_busybox, needs_root, wait_until

from sandboxrt import (
    PIPE,
    Config,
    Container,
    FileStore,
    GoferError,
    InvalidArgumentError,
    LaunchedProcess,
    MemoryStore,
    SandboxrtError,
    SubprocessLauncher,
)
from sandboxrt._core.protocol import PROCESS_FIELDS, InitPlan, Launched, MountPlan, Request
from sandboxrt._core.spec import read_spec_file, write_spec_file
from sandboxrt._forksafe import ForkSafeLock
from sandboxrt._os import cgroups, channel, procfs
from sandboxrt._proc import launcher as launcher_module
from sandboxrt._proc.launcher import ForkServerLauncher
from sandboxrt._proc.warm import is_warm_shape

pytestmark = [needs_root, needs_busybox]


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = procfs.read_stat(int(name))
            if info is not None and info.ppid == pid and info.state not in "ZX":
                found.append(int(name))
    return found


def test_warm_shape_rules() -> None:
    new = [["pid", ""], ["network", ""], ["ipc", ""], ["uts", ""], ["mount", ""]]
    assert is_warm_shape(new)
    assert is_warm_shape([*new, ["cgroup", ""]])
    assert not is_warm_shape([*new[:-1], ["mount", "/proc/1/ns/mnt"]])
    assert not is_warm_shape([ns for ns in new if ns[0] != "network"])
    assert not is_warm_shape([*new, ["user", ""]])


def test_fork_server_keeps_a_warm_sandbox_and_uses_it(
    store: FileStore, bundle: BundleFactory
) -> None:
    launcher = ForkServerLauncher()
    try:
        code = Container.run("first", bundle(["true"]), store=store, launcher=launcher)
        assert code == 0
        server = launcher._server
        assert server is not None
        # After a launch the fork server makes the next warm sandbox at once.
        wait_until(lambda: any(_comm(p) == "sandboxrt-warm" for p in _children(server.pid)))
        warm = [p for p in _children(server.pid) if _comm(p) == "sandboxrt-warm"]
        c = Container.create("second", bundle(["sleep", "10"]), store=store, launcher=launcher)
        try:
            # The warm sandbox became this container's supervisor.
            assert c.state().pid in warm
            assert _comm(c.state().pid or 0) == "sandboxrt-sup"
        finally:
            c.destroy()
    finally:
        launcher.close()
    # Closing the fork server ends it and its warm sandbox.
    assert server.poll() is not None
    wait_until(lambda: all(not os.path.exists(f"/proc/{p}") or _comm(p) == "" for p in warm))


def _warm_ones(server_pid: int) -> list[int]:
    """The fork server's warm sandboxes and warm gofers."""
    return [p for p in _children(server_pid) if _comm(p) in ("sandboxrt-warm", "sandboxrt-wgof")]


@pytest.mark.parametrize("operation", ["create", "run"])
def test_the_next_warm_sandbox_is_made_once_the_operation_is_over(
    store: FileStore, bundle: BundleFactory, operation: str
) -> None:
    # Made during the operation, it would take the CPU from the container being made
    # (decision 53): the fork server is told to once the caller's operation returns.
    launcher = ForkServerLauncher()
    path = bundle(["true"])
    made_during: list[list[int]] = []
    settle = launcher.settle

    def settling() -> None:
        server = launcher._server
        assert server is not None
        made_during.append(_warm_ones(server.pid))
        settle()

    try:
        assert Container.run("warmup", path, store=store, launcher=launcher) == 0
        server = launcher._server
        assert server is not None
        wait_until(lambda: len(_warm_ones(server.pid)) == 2)
        time.sleep(0.1)  # (more than BACK_TO_BACK: not one of a stream of launches)
        launcher.settle = settling  # type: ignore[method-assign]
        if operation == "run":
            assert Container.run("one", path, store=store, launcher=launcher) == 0
        else:
            Container.create("one", path, store=store, launcher=launcher).destroy()
        assert made_during == [[]]  # both were taken, and neither was made again
        wait_until(lambda: len(_warm_ones(server.pid)) == 2)  # made once it was over
    finally:
        launcher.close()


def test_launches_in_a_stream_have_the_next_warm_sandbox_made_at_once(
    store: FileStore, bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Back to back, the next launch would want it before a put-off one were ready.
    monkeypatch.setattr(launcher_module, "BACK_TO_BACK", 3600.0)
    launcher = ForkServerLauncher()
    owed: list[object] = []
    settle = launcher.settle

    def settling() -> None:
        owed.append(launcher._prewarm_owed)
        settle()

    launcher.settle = settling  # type: ignore[method-assign]
    path = bundle(["true"])
    try:
        for name in ("s1", "s2", "s3"):
            assert Container.run(name, path, store=store, launcher=launcher) == 0
        # The first run's was put off (no settle before it); the next ones' were not.
        assert owed[0] is not None and owed[1:] == [None, None]
    finally:
        launcher.close()


def test_a_launch_right_after_an_operation_waits_for_the_warm_sandbox_being_made(
    store: FileStore, bundle: BundleFactory
) -> None:
    # Not ready yet, it is still the quicker way: launched cold, the fork server would
    # fork the container's sandbox only after the warm one anyway.
    launcher = ForkServerLauncher()
    path = bundle(["true"])
    taken: list[bool] = []
    settle = launcher.settle

    def settle_and_take() -> None:
        settle()  # the fork server starts making the next warm sandbox
        assert launcher._sock is not None
        with launcher._lock:
            warm = launcher._take_warm(launcher._sock)  # at once, as a launch would
        taken.append(warm is not None)
        if warm is not None:
            warm[1].close()  # (it exits unused)
            os.close(warm[2])

    try:
        assert Container.run("w1", path, store=store, launcher=launcher) == 0
        time.sleep(0.1)  # (more than BACK_TO_BACK: not one of a stream of launches)
        launcher.settle = settle_and_take  # type: ignore[method-assign]
        assert Container.run("w2", path, store=store, launcher=launcher) == 0
        assert taken == [True]
    finally:
        launcher.close()


def _warm_launches(launcher: ForkServerLauncher) -> list[bool]:
    """Whether each launch from now on went to a warm sandbox (filled as they come)."""
    warm: list[bool] = []
    launch_warm = launcher._launch_warm

    def launching(*args: Any) -> bool:
        warm.append(launch_warm(*args))
        return warm[-1]

    launcher._launch_warm = launching  # type: ignore[method-assign]
    return warm


def test_a_warm_sandbox_taken_but_not_launched_in_is_reported_used(
    store: FileStore, bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Else the fork server, which makes no other while we hold one, never made another.
    launcher = ForkServerLauncher(build_ahead=True)  # (which peeks at the plan)
    path = bundle(["true"])
    peek = launcher_module.channel.peek
    failures = [OSError(errno.EMFILE, "Too many open files")]

    def failing_peek(fd: int) -> bytes | None:
        if failures:
            raise failures.pop()
        return peek(fd)

    warm = _warm_launches(launcher)
    try:
        assert Container.run("w1", path, store=store, launcher=launcher) == 0
        monkeypatch.setattr(launcher_module.channel, "peek", failing_peek)
        for name in ("w2", "w3", "w4"):
            time.sleep(0.1)  # (more than BACK_TO_BACK: not one of a stream of launches)
            assert Container.run(name, path, store=store, launcher=launcher) == 0
        assert warm == [True, False, True, True]  # w2 launched cold, the next ones warm
    finally:
        launcher.close()


def test_a_warm_gofer_the_fork_server_could_not_fork_is_asked_for_again() -> None:
    launcher = ForkServerLauncher()
    control, server_control = channel.socket_pair()
    gofers, server_gofers = channel.socket_pair()
    stand_in = subprocess.Popen(["sleep", "60"])  # (a fork server that runs)
    launcher._sock, launcher._gofer_sock, launcher._owner = control, gofers, os.getpid()
    launcher._server = stand_in
    try:
        channel.send(server_gofers, Launched(0, 0))  # no fds: it could not fork one
        launcher._gofer_coming = True
        assert launcher.take_gofer() is None
        launcher.settle()
        server_control.settimeout(5.0)
        request, _ = channel.receive(server_control, Request)
        assert request.op == "prewarm-gofer"
    finally:
        stand_in.kill()
        stand_in.wait()
        for sock in (control, server_control, gofers, server_gofers):
            sock.close()
        launcher._sock = launcher._gofer_sock = launcher._server = None


def test_a_launcher_whose_settle_fails_fails_no_operation(
    store: FileStore, bundle: BundleFactory, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(ForkServerLauncher):
        def settle(self) -> None:
            raise RuntimeError("no settling here")

    launcher = Failing()
    try:
        assert Container.run("r", bundle(["true"]), store=store, launcher=launcher) == 0
        Container.create("c", bundle(["true"]), store=store, launcher=launcher).destroy()
        with pytest.raises(InvalidArgumentError, match="cannot write pid file"):
            Container.create("bad", bundle(["true"]), store=store, launcher=launcher,
                             pid_file="/nonexistent/dir/pid")  # fmt: skip
    finally:
        launcher.close()
    said = [r.getMessage() for r in caplog.records if "settle" in r.getMessage()]
    assert len(said) == 3 and all("no settling here" in m for m in said)


def test_a_launcher_that_is_none_or_answers_garbage_is_a_type_error(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Refused before anything is made; one whose launch returns no launched process
    names the container (the typed error was lost in an AttributeError)."""
    with pytest.raises(TypeError, match="launcher must be a sandboxrt Launcher"):
        Container.create("l1", bundle(["true"]), store=store, launcher="x")  # type: ignore[arg-type]

    class Garbage:
        def launch(self, *, bootstrap_fd: int, log_fd: int, warm: bool = False) -> Any:
            return 42

    with pytest.raises(TypeError, match='container "l2": the launcher returned 42'):
        Container.create("l2", bundle(["true"]), store=store, config=Config(lazy_gofer=True),
                         launcher=Garbage())  # fmt: skip
    assert Container.list(store=store) == []
    assert list(Path(store.runtime_dir).iterdir()) == []


def test_a_warm_sandbox_lost_for_want_of_fds_is_reported_used(
    store: FileStore, bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its fds cut off (EMFILE), the message is gone but the fork server counts the warm
    # sandbox as ours: unless told, it never made another, and every launch waited 2 s.
    launcher = ForkServerLauncher()
    path = bundle(["true"])
    try:
        assert Container.run("w1", path, store=store, launcher=launcher) == 0
        time.sleep(0.1)  # (the next warm sandbox is there)
        received: list[object] = []
        receive_now = launcher_module._receive_now

        def receiving(*args: Any) -> Any:
            received.append(receive_now(*args))
            return received[-1]

        monkeypatch.setattr(launcher_module, "_receive_now", receiving)
        ours, theirs = channel.socket_pair()
        with ours, theirs, open(os.devnull, "w") as log:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (_open_fds(), hard))
            try:
                launcher.launch(bootstrap_fd=theirs.fileno(), log_fd=log.fileno(), warm=True)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert received == [(None, [])]  # it came, its fds cut off
        warm = _warm_launches(launcher)
        for name in ("w2", "w3", "w4"):
            time.sleep(0.1)  # (more than BACK_TO_BACK: not one of a stream of launches)
            assert Container.run(name, path, store=store, launcher=launcher) == 0
        assert warm == [True, True, True]
    finally:
        launcher.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # (less the listing's own)


def test_a_fork_server_that_dies_while_awaited_is_a_typed_error(
    store: FileStore, bundle: BundleFactory
) -> None:
    launcher = ForkServerLauncher()
    try:
        launcher.start()
        server = launcher._server
        assert server is not None
        os.kill(server.pid, signal.SIGSTOP)  # (ours) before it makes its warm processes
        receive_now = launcher_module._receive_now

        def dying(*args: Any) -> Any:
            os.kill(server.pid, signal.SIGKILL)  # as the launch waits for it
            return receive_now(*args)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(launcher_module, "_receive_now", dying)
            with pytest.raises(SandboxrtError, match="fork server failed"):
                Container.run("lost", bundle(["true"]), store=store, launcher=launcher)
        assert Container.run("next", bundle(["true"]), store=store, launcher=launcher) == 0
    finally:
        launcher.close()


def test_a_forked_child_has_a_launcher_of_its_own(store: FileStore, bundle: BundleFactory) -> None:
    # The parent's lock may be held by another of its threads at the fork, and the
    # child must not hold the parent's fork server sockets (its exit would wait for it).
    launcher = ForkServerLauncher()
    path = bundle(["true"])
    try:
        assert Container.run("parent", path, store=store, launcher=launcher) == 0
        assert launcher._sock is not None
        parent_fd = launcher._sock.fileno()
        with launcher._lock:  # as another thread of ours might hold it
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child)
                code = 1
                try:
                    try:
                        os.fstat(parent_fd)
                        print("the child holds the parent's fork server socket", file=sys.stderr)
                    except OSError:
                        code = Container.run("child", path, store=store, launcher=launcher)
                except BaseException:
                    traceback.print_exc()
                finally:
                    launcher.close()
                    os._exit(code)
        assert _exit_code_within(pid, 60.0) == 0
    finally:
        launcher.close()


def test_locks_held_at_a_fork_are_free_in_the_child() -> None:
    # The thread holding them is not in the child, which would wait for ever.
    lock, store = ForkSafeLock(), MemoryStore()
    with lock, store._mutex:
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            try:
                with lock:
                    store.list_ids()
            finally:
                os._exit(0)
    assert _exit_code_within(pid, 30.0) == 0


def _exit_code_within(pid: int, seconds: float) -> int | None:
    """Our child ``pid``'s exit code, or ``None`` (and it is killed) if it did not exit."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_plans_of_another_shape_are_launched_cold(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    path = bundle(["sh", "-c", "readlink /proc/self/ns/net"])
    spec = read_spec_file(path / "config.json")
    assert spec.linux is not None and spec.linux.namespaces is not None
    namespaces = [ns for ns in spec.linux.namespaces if ns.type != "network"]
    spec = attrs.evolve(spec, linux=attrs.evolve(spec.linux, namespaces=namespaces))
    write_spec_file(path / "config.json", spec)
    c = Container.create("hostnet", path, store=store, stdout=PIPE)
    try:
        c.start()
        assert c.wait() == 0
        assert c.stdout is not None
        assert c.stdout.read().decode().strip() == os.readlink("/proc/self/ns/net")
    finally:
        c.destroy()


def test_subprocess_launcher_runs_a_container(store: FileStore, bundle: BundleFactory) -> None:
    c = Container.create(
        "plain",
        bundle(["sh", "-c", "echo $$"]),
        store=store,
        stdout=PIPE,
        launcher=SubprocessLauncher(),
    )
    try:
        c.start()
        assert c.wait() == 0
        assert c.stdout is not None
        assert c.stdout.read().strip() == b"2"  # the supervisor is PID 1
    finally:
        c.destroy()


def _another_python() -> str | None:
    """The system's ``python3`` when it is 3.11 or later and not this interpreter
    (Debian's builds ``select`` and ``_posixsubprocess`` in: no ``__file__``)."""
    system = "/usr/bin/python3"
    if not os.path.exists(system) or os.path.realpath(system) == os.path.realpath(sys.executable):
        return None
    probe = subprocess.run(
        [system, "-I", "-S", "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return system if probe.stdout.strip() == "True" else None


@pytest.mark.parametrize("launcher_kind", ["fork", "subprocess"])
def test_the_sandbox_side_runs_under_another_interpreter(
    store: FileStore, bundle: BundleFactory, launcher_kind: str
) -> None:
    """A launcher's ``python`` may be another interpreter than the library's: the
    sandbox's entry points need its standard library only, wherever it keeps its
    extension modules (before, one with ``select`` built in failed every container)."""
    python = _another_python()
    if python is None:
        pytest.skip("needs a system python3 (3.11 or later) other than this interpreter")
    launcher = ForkServerLauncher(python) if launcher_kind == "fork" else SubprocessLauncher(python)
    try:
        for name in ("one", "two"):  # the second one from a warm sandbox
            c = Container.create(name, bundle(["sleep", "60"]), store=store, launcher=launcher)
            try:
                assert os.path.realpath(f"/proc/{c.state().pid}/exe") == os.path.realpath(python)
                c.start()
                process = c.exec(["echo", "hi"], stdout=subprocess.PIPE)
                out, _ = process.communicate(timeout=10)
                assert (out, process.returncode) == (b"hi\n", 0)
            finally:
                c.destroy()
    finally:
        if isinstance(launcher, ForkServerLauncher):
            launcher.close()


def test_a_caller_that_blocks_or_ignores_sigchld_still_sees_its_containers_exit(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Launched processes inherit the caller's signal mask and ignored signals: with
    SIGCHLD blocked the fork server never reaped, with it ignored a supervisor started by
    ``SubprocessLauncher`` lost its children's statuses; every wait timed out."""
    path = bundle(["sh", "-c", "exit 3"])
    code = f"""
import signal
from sandboxrt import Container, FileStore, SubprocessLauncher
store = FileStore({str(store.root)!r})
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGCHLD}})
print(Container.run("blocked", {str(path)!r}, store=store, timeout=20))
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
print(Container.run("ignored", {str(path)!r}, store=store, timeout=20,
                    launcher=SubprocessLauncher()))
"""
    done = in_python(code)
    assert (done.returncode, done.stdout.split()) == (0, ["3", "3"]), done.stderr


def test_a_fork_server_that_cannot_start_is_a_typed_error() -> None:
    """Out of fds (a low soft RLIMIT_NOFILE), the launcher raised a raw OSError."""
    code = """
import os, resource
from sandboxrt import ForkServerLauncher, SandboxrtError
r, w = os.pipe()
top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    ForkServerLauncher().launch(bootstrap_fd=r, log_fd=w)
except SandboxrtError as exc:
    print(exc)
"""
    done = in_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cannot start the sandbox fork server: [Errno 24]")


def test_a_subprocess_launcher_prefix_wraps_the_sandbox_and_the_gofer(
    store: FileStore, bundle: BundleFactory
) -> None:
    """``SubprocessLauncher(prefix=...)`` runs the interpreter through a wrapper command."""
    launcher = SubprocessLauncher(prefix=["env", "SBRT_WRAPPED=yes"])
    c = Container.create("wrapped", bundle(["sleep", "60"]), store=store, launcher=launcher)
    try:
        for process in (c.state().pid, c.gofer.pid if c.gofer else 0):
            with open(f"/proc/{process}/environ", "rb") as f:
                assert b"SBRT_WRAPPED=yes" in f.read().split(b"\0")
    finally:
        c.destroy()


def test_a_killed_warm_sandbox_is_replaced(store: FileStore, bundle: BundleFactory) -> None:
    launcher = ForkServerLauncher()
    try:
        assert Container.run("w1", bundle(["true"]), store=store, launcher=launcher) == 0
        server = launcher._server
        assert server is not None
        wait_until(lambda: any(_comm(p) == "sandboxrt-warm" for p in _children(server.pid)))
        for pid in _children(server.pid):
            if _comm(pid) == "sandboxrt-warm":
                os.kill(pid, signal.SIGKILL)  # ours: a child of our own fork server
        # The next launch still works (cold), and the one after too.
        assert Container.run("w2", bundle(["true"]), store=store, launcher=launcher) == 0
        assert Container.run("w3", bundle(["true"]), store=store, launcher=launcher) == 0
    finally:
        launcher.close()


@pytest.mark.parametrize("launcher_kind", ["fork", "subprocess"])
def test_supervisor_is_reaped_promptly(
    store: FileStore, bundle: BundleFactory, launcher_kind: str
) -> None:
    launcher = ForkServerLauncher() if launcher_kind == "fork" else SubprocessLauncher()
    try:
        c = Container.create("reaped", bundle(["true"]), store=store, launcher=launcher)
        pid = c.state().pid
        assert pid is not None
        c.start()
        assert c.wait() == 0
        c.destroy()
        if launcher_kind == "fork":
            # The fork server is a child subreaper: no zombie is left for init to find.
            wait_until(lambda: procfs.read_stat(pid) is None, timeout=1.0)
        else:
            info = procfs.read_stat(pid)
            assert info is None or info.state in "ZX"
    finally:
        if isinstance(launcher, ForkServerLauncher):
            launcher.close()


# -- a root built ahead ---------------------------------------------------------------------


def _ahead_of(
    launcher: ForkServerLauncher, store: FileStore, path: Path, config: Config | None = None
) -> int:
    """Run a container of ``path`` (two: a fork server's first launch may come before
    its first warm sandbox is ready), with ``config``; then the init building its root
    ahead in the next warm sandbox, once it is there."""
    assert launcher.build_ahead  # (off by default: decision 63)
    for name in ("warmup1", "warmup2"):
        assert Container.run(name, path, store=store, launcher=launcher, config=config) == 0
    server = launcher._server
    assert server is not None

    def find() -> int:
        for warm in _children(server.pid):
            if _comm(warm) == "sandboxrt-warm":
                for pid in _children(warm):
                    if _comm(pid) == "sandboxrt-ahead":
                        return pid
        return 0

    wait_until(find)
    return find()


def _init_of(container: Container) -> int:
    supervisor = container.state().pid
    assert supervisor is not None
    children = _children(supervisor)
    assert len(children) == 1
    return children[0]


def _run_output(container: Container) -> bytes:
    container.start()
    assert container.wait() == 0
    assert container.stdout is not None
    return container.stdout.read()


def test_root_key_leaves_out_what_shapes_only_the_process() -> None:
    plan = InitPlan(args=["true"], container_id="a", rootfs="/b/rootfs")
    same_root = dataclasses.replace(plan, args=["false"], container_id="b", uid=7, env=["A=1"])
    assert same_root.root_key() == plan.root_key()
    tmp = MountPlan(destination="/tmp", type="tmpfs", source="tmpfs")
    assert dataclasses.replace(plan, mounts=[tmp]).root_key() != plan.root_key()
    assert dataclasses.replace(plan, rootfs="/c").root_key() != plan.root_key()
    assert "rootfs" not in PROCESS_FIELDS and "args" in PROCESS_FIELDS
    bind = MountPlan(destination="/data", type="none", source="/srv/data", bind=True, tree=1)
    trees = dataclasses.replace(plan, mounts=[tmp, bind], rootfs_tree=True)
    assert trees.root_key() != dataclasses.replace(plan, mounts=[tmp, bind]).root_key()
    assert trees.tree_sources() == [("/b/rootfs", True), ("/srv/data", False)]


def test_a_root_built_ahead_serves_the_next_container_of_its_bundle(
    store: FileStore, bundle: BundleFactory
) -> None:
    launcher = ForkServerLauncher(build_ahead=True)
    path = bundle(["sh", "-c", "echo $$; cat /etc/hostname-ahead"])
    (path / "rootfs/etc").mkdir(exist_ok=True)
    (path / "rootfs/etc/hostname-ahead").write_text("built ahead\n")
    try:
        ahead = _ahead_of(launcher, store, path)
        c = Container.create("ahead2", path, store=store, launcher=launcher, stdout=PIPE)
        try:
            assert _init_of(c) == ahead  # the init that built the root is the container's
            assert _comm(ahead) == "sandboxrt-init"
            # It joined the container's cgroup, in every hierarchy (by itself, decision 29).
            assert c._record.cgroup is not None
            for directory in cgroups.load(c._record.cgroup).directories:
                assert str(ahead) in (directory / "cgroup.procs").read_text().split()
            pid, text = _run_output(c).decode().split("\n", 1)
            assert int(pid) > 1 and text == "built ahead\n"
        finally:
            c.destroy()
    finally:
        launcher.close()


def test_the_program_of_a_root_built_ahead_inherits_no_signal_ignored_or_blocked(
    store: FileStore, bundle: BundleFactory
) -> None:
    # Its init reset every signal before its claim (Python ignores SIGPIPE, the fork
    # server SIGINT).
    launcher = ForkServerLauncher(build_ahead=True)
    path = bundle(["cat", "/proc/self/status"])
    try:
        ahead = _ahead_of(launcher, store, path)
        c = Container.create("sig2", path, store=store, launcher=launcher, stdout=PIPE)
        try:
            assert _init_of(c) == ahead
            status = dict(line.split(":\t", 1) for line in _run_output(c).decode().splitlines())
            assert status["SigIgn"] == status["SigBlk"] == "0000000000000000"
        finally:
            c.destroy()
    finally:
        launcher.close()


def test_a_replaced_rootfs_is_not_served_from_ahead(
    store: FileStore, bundle: BundleFactory
) -> None:
    launcher = ForkServerLauncher(build_ahead=True)
    path = bundle(["cat", "/marker"])
    (path / "rootfs/marker").write_text("old\n")
    try:
        ahead = _ahead_of(launcher, store, path)
        # The same path, another directory: what a re-extracted image looks like.
        os.rename(path / "rootfs", path / "rootfs.old")
        os.rename(bundle(["true"]) / "rootfs", path / "rootfs")
        (path / "rootfs/marker").write_text("new\n")
        c = Container.create("repl2", path, store=store, launcher=launcher, stdout=PIPE)
        try:
            assert _init_of(c) != ahead
            assert _run_output(c) == b"new\n"
        finally:
            c.destroy()
    finally:
        launcher.close()


def _bounding(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line for line in f if line.startswith("CapBnd:")).split()[1]


def _built(launcher: ForkServerLauncher, ahead: int) -> bool:
    """Whether the init building a root ahead has built it: it drops the plan's bounding
    set right after (and reports ``ready``); the fork server keeps the one it had."""
    assert launcher._server is not None
    return _bounding(ahead) != _bounding(launcher._server.pid)


def test_a_mount_point_made_again_is_not_served_from_ahead(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Removed and made again on the host, a mount point of the root built ahead is
    another directory: the mount stayed on the old one, and the container saw an empty
    /proc (or a /usr without its programs)."""
    launcher = ForkServerLauncher(build_ahead=True)
    path = bundle(["cat", "/proc/self/comm"])
    try:
        ahead = _ahead_of(launcher, store, path)
        wait_until(lambda: _built(launcher, ahead))
        (path / "rootfs/proc").rmdir()  # (a mount point only in the ahead's namespace)
        (path / "rootfs/proc").mkdir()
        c = Container.create("mp2", path, store=store, launcher=launcher, stdout=PIPE)
        try:
            assert _init_of(c) != ahead
            assert _run_output(c) == b"busybox\n"  # (its /proc is mounted)
        finally:
            c.destroy()
    finally:
        launcher.close()


def test_a_root_built_ahead_writes_nothing_to_the_rootfs_before_its_claim(
    store: FileStore, bundle: BundleFactory
) -> None:
    """After a run its caller may remove or change the bundle: the root built meanwhile
    for the next run made its mount points and device nodes again there, and removing
    the bundle failed (``Directory not empty``). The rootfs stays read-only until a
    container claims the root, which then writes as any container."""
    launcher = ForkServerLauncher(build_ahead=True)
    path = bundle(["sh", "-c", "echo hi > /written && cat /written"])
    try:
        ahead = _ahead_of(launcher, store, path)
        wait_until(lambda: _built(launcher, ahead))
        with open(f"/proc/{ahead}/mountinfo") as f:
            root = next(line.split() for line in f if line.split()[4] == "/")
        assert "ro" in root[5].split(","), root  # its mount options
        c = Container.create("ro2", path, store=store, launcher=launcher, stdout=PIPE)
        try:
            assert _init_of(c) == ahead
            assert _run_output(c) == b"hi\n"
        finally:
            c.destroy()
        assert (path / "rootfs/written").read_text() == "hi\n"
    finally:
        launcher.close()


def test_a_plan_with_another_bounding_set_is_not_served_from_ahead(
    store: FileStore, bundle: BundleFactory
) -> None:
    # An init built ahead drops the bounding set of the plan it guessed: a claim that
    # keeps more (CAP_SYS_ADMIN here) needs a fresh init, which can still keep it.
    launcher = ForkServerLauncher(build_ahead=True)
    path = bundle(["sh", "-c", "grep CapBnd /proc/self/status"])
    try:
        ahead = _ahead_of(launcher, store, path)
        config = path / "config.json"
        document = json.loads(config.read_text())
        bounding = document["process"]["capabilities"]["bounding"]
        assert "CAP_SYS_ADMIN" not in bounding
        bounding.append("CAP_SYS_ADMIN")
        config.write_text(json.dumps(document))
        c = Container.create("bnd2", path, store=store, launcher=launcher, stdout=PIPE)
        try:
            assert _init_of(c) != ahead
            capbnd = int(_run_output(c).decode().split()[1], 16)
            assert capbnd & (1 << 21)  # CAP_SYS_ADMIN
        finally:
            c.destroy()
    finally:
        launcher.close()


def test_a_changed_mount_table_is_not_served_from_ahead(
    store: FileStore, bundle: BundleFactory
) -> None:
    launcher = ForkServerLauncher(build_ahead=True)
    path = bundle(["cat", "/mnt/marker"])
    target = path / "rootfs/mnt"
    target.mkdir(exist_ok=True)
    (target / "marker").write_text("under\n")
    try:
        ahead = _ahead_of(launcher, store, path)
        # A mount on the host after the root was built ahead (removed below).
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ahead", str(target)], check=True)
        try:
            (target / "marker").write_text("over\n")
            c = Container.create("mnt2", path, store=store, launcher=launcher, stdout=PIPE)
            try:
                assert _init_of(c) != ahead
                assert _run_output(c) == b"over\n"
            finally:
                c.destroy()
        finally:
            subprocess.run(["umount", str(target)], check=True)
    finally:
        launcher.close()


def test_roots_of_alternating_bundles_are_each_their_own(
    store: FileStore, bundle: BundleFactory
) -> None:
    # Every launch hints the next warm sandbox at a root the following one does not want.
    launcher = ForkServerLauncher(build_ahead=True)
    paths = [bundle(["cat", "/marker"]), bundle(["cat", "/marker"])]
    for n, path in enumerate(paths):
        (path / "rootfs/marker").write_text(f"bundle {n}\n")
    try:
        for i in range(6):
            c = Container.create(
                f"alt{i}", paths[i % 2], store=store, launcher=launcher, stdout=PIPE
            )
            try:
                assert _run_output(c) == f"bundle {i % 2}\n".encode()
            finally:
                c.destroy()
    finally:
        launcher.close()


def test_a_fork_server_builds_nothing_ahead_unless_asked(
    store: FileStore, bundle: BundleFactory
) -> None:
    launcher = ForkServerLauncher()  # (decision 63)
    assert not launcher.build_ahead
    path = bundle(["true"])
    try:
        for name in ("plain1", "plain2"):
            assert Container.run(name, path, store=store, launcher=launcher) == 0
        server = launcher._server
        assert server is not None
        wait_until(lambda: any(_comm(p) == "sandboxrt-warm" for p in _children(server.pid)))
        time.sleep(0.2)  # what would be built ahead would have started by now
        warm = [p for p in _children(server.pid) if _comm(p) == "sandboxrt-warm"]
        assert warm and all(_children(p) == [] for p in warm)
    finally:
        launcher.close()


def test_a_gofer_that_cannot_start_says_why(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """Its stderr is quoted (an interpreter too old dies with a SyntaxError there); one that
    cannot be launched at all names the container, not a bare FileNotFoundError."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'SyntaxError: this interpreter is too old' >&2\nexit 1\n")
    fake.chmod(0o755)

    class OldGoferPython(SubprocessLauncher):
        """The sandbox on this interpreter, the gofer on ``fake``."""

        def launch_gofer(self, *, bootstrap_fd: int, log_fd: int) -> LaunchedProcess:
            old = SubprocessLauncher(python=str(fake))
            return old.launch_gofer(bootstrap_fd=bootstrap_fd, log_fd=log_fd)

    path = bundle(["true"])
    with pytest.raises(GoferError) as info:
        Container.run("oldpy", path, store=store, launcher=OldGoferPython())
    assert 'container "oldpy"' in str(info.value)
    assert "this interpreter is too old" in str(info.value)
    missing = SubprocessLauncher(python=str(tmp_path / "nowhere"))
    with pytest.raises(SandboxrtError) as info:
        Container.run("nopy", path, store=store, launcher=missing)
    assert 'container "nopy"' in str(info.value) and "nowhere" in str(info.value)
    assert Container.list(store=store) == []
