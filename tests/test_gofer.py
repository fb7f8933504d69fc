"""The gofer: confined (capabilities, no_new_privs, own mount namespace), one per container,
gone with its container and after destroy; the file API fails clearly without it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    BundleFactory,
    assert_minimal_root,
    children_of_this_process,
    needs_busybox,
    needs_root,
    supervisor_pids,
    wait_until,
)
from test_launchers import _children

from sandboxrt import (
    PIPE,
    STDOUT,
    Config,
    Container,
    FileStore,
    Gofer,
    GoferError,
    InitError,
    SubprocessLauncher,
)
from sandboxrt._os import mounts, procfs
from sandboxrt._proc.gofer import KEPT_CAPABILITIES, PROCESS_NAME, WARM_NAME
from sandboxrt._proc.launcher import ForkServerLauncher
from sandboxrt.gofer import socket_path

pytestmark = [needs_root, needs_busybox]


def status_fields(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def wait_exit(pid: int, timeout: float = 30.0) -> bool:
    """Whether ``pid`` exits within ``timeout`` seconds (a pidfd becomes readable)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def gofer_pids() -> set[int]:
    """This session's live gofers."""
    found = set()
    for pid in supervisor_pids():
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == PROCESS_NAME:
                    found.add(pid)
        except OSError:
            continue  # exited meanwhile
    return found


def alive(gofer: Gofer) -> bool:
    i = gofer.identity
    return procfs.is_alive(i.pid, i.start_ticks, i.boot_id)


def test_files_nobody_may_read_are_served_without_dac_read_search(
    store: FileStore, bundle: BundleFactory
) -> None:
    """``CAP_DAC_OVERRIDE`` passes the checks ``CAP_DAC_READ_SEARCH`` would (which the
    gofer drops: it allows ``open_by_handle_at``): a mode-000 directory is listed and walked,
    and a mode-000 file in it read, written and removed."""
    path = bundle(["sleep", "60"])
    locked = path / "rootfs" / "locked"
    (locked / "deeper").mkdir(parents=True)
    (locked / "secret").write_text("s3cret")
    for item in (locked / "secret", locked / "deeper", locked):
        item.chmod(0)
    c = Container.create("gdac", path, store=store)
    try:
        assert c.files.listdir("/locked") == ["deeper", "secret"]
        assert c.files.read_text("/locked/secret") == "s3cret"
        c.files.write_text("/locked/secret", "changed")
        assert c.files.read_text("/locked/secret") == "changed"
        assert c.files.listdir("/locked/deeper") == []
        c.files.remove("/locked/deeper")
        assert c.files.listdir("/locked") == ["secret"]
    finally:
        c.destroy()
        locked.chmod(0o755)


def test_gofer_holds_only_its_capabilities_and_no_new_privs(
    store: FileStore, bundle: BundleFactory
) -> None:
    c = Container.create("gcaps", bundle(["sleep", "60"]), store=store)
    try:
        gofer = c.gofer  # started with the container, before any file call (decision 37)
        assert gofer is not None and gofer_pids() == {gofer.pid}
        assert c.files.listdir("/bin")  # served once confined: the checks below hold
        assert c.gofer.pid == gofer.pid  # type: ignore[union-attr]  # one per container
        assert gofer is not None
        assert gofer.socket == socket_path(c.sandbox.runtime_dir, c.id)  # type: ignore[union-attr]
        assert os.stat(gofer.socket).st_mode & 0o777 == 0o600
        fields = status_fields(gofer.pid)
        expected = sum(1 << cap for cap in KEPT_CAPABILITIES)
        assert expected == 0x1B  # chown, dac_override, fowner, fsetid: no dac_read_search
        for name in ("CapEff", "CapPrm", "CapBnd"):
            assert int(fields[name], 16) == expected, name
        assert int(fields["CapInh"], 16) == 0 and int(fields["CapAmb"], 16) == 0
        assert fields["NoNewPrivs"] == "1"
        with open(f"/proc/{gofer.pid}/comm") as f:
            assert f.read().strip() == PROCESS_NAME
        # A mount namespace of its own, neither ours nor the container's, whose root shows
        # no host file (decision 38).
        assert_minimal_root(gofer.pid)
        own = os.stat(f"/proc/{gofer.pid}/ns/mnt").st_ino
        assert own != os.stat("/proc/self/ns/mnt").st_ino
        sup = c.sandbox.pid  # type: ignore[union-attr]
        assert own != os.stat(f"/proc/{sup}/ns/mnt").st_ino
        # Outside the sandbox's PID namespace: the container cannot see or signal it.
        assert os.stat(f"/proc/{gofer.pid}/ns/pid").st_ino == os.stat("/proc/self/ns/pid").st_ino
    finally:
        c.destroy()


def test_gofer_exits_with_its_container(store: FileStore, bundle: BundleFactory) -> None:
    c = Container.create("gexit", bundle(["sh", "-c", "exit 3"]), store=store)
    try:
        gofer = c.gofer
        assert gofer is not None
        c.start()
        assert c.wait(timeout=30) == 3
        assert wait_exit(gofer.pid)
        assert not alive(gofer)
        assert c.gofer is None
    finally:
        c.destroy()


def test_destroy_kills_the_gofer_and_is_idempotent(store: FileStore, bundle: BundleFactory) -> None:
    c = Container.create("gdestroy", bundle(["sleep", "60"]), store=store)
    gofer = c.gofer
    assert gofer is not None and alive(gofer)
    c.destroy()
    assert not alive(gofer)
    c.destroy()
    assert not os.path.exists(gofer.socket)


def test_file_api_after_the_gofers_death_raises_gofer_error(
    store: FileStore, bundle: BundleFactory
) -> None:
    c = Container.create("gdead", bundle(["sleep", "60"]), store=store)
    try:
        c.start()
        gofer = c.gofer
        assert gofer is not None
        os.kill(gofer.pid, signal.SIGKILL)
        assert wait_exit(gofer.pid)
        with pytest.raises(GoferError, match='gofer of container "gdead" is not running'):
            c.files.read_text("/etc/passwd")
        assert c.status.value == "running"  # the container lives on (decision 16)
        assert c.exec_run(["true"]).returncode == 0
    finally:
        c.destroy()


def test_a_gofer_that_cannot_have_the_root_raises_gofer_error(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Its supervisor unreachable (gone, or going, as a destroy races the call): the
    gofer's connection error came back as a ``ContainerFileError`` of the path (here a
    ``ContainerFileNotFoundError``, from the missing control socket)."""
    c = Container.create("noroot", bundle(["sleep", "60"]), store=store)
    try:
        sandbox = c.sandbox
        assert sandbox is not None
        aside = sandbox.control_socket + ".aside"
        os.rename(sandbox.control_socket, aside)  # (the gofer asks for the root at first use)
        try:
            with pytest.raises(GoferError, match="no root from the supervisor"):
                c.files.read_text("/etc/passwd")
        finally:
            os.rename(aside, sandbox.control_socket)
    finally:
        c.destroy()


def test_a_gofer_that_dies_during_create_leaves_the_container_and_nothing_else(
    store: FileStore, bundle: BundleFactory
) -> None:
    # A prestart hook (it runs once the gofer opened the trees, before it is handed its
    # socket) kills the gofer: handing it over failed with a raw BrokenPipeError, and
    # the sandbox and its runtime directory were left behind.
    record = store.root / "gdies.json"
    pid = f"json.load(open({str(record)!r}))['container']['gofer']['pid']"
    kill = f"import json, os; os.kill({pid}, 9)"
    path = bundle(["sleep", "60"])
    config = path / "config.json"
    document = json.loads(config.read_text())
    document["hooks"] = {"prestart": [{"path": sys.executable, "args": ["python3", "-c", kill]}]}
    config.write_text(json.dumps(document))
    c = Container.create("gdies", path, store=store)
    try:
        c.start()
        with pytest.raises(GoferError, match='gofer of container "gdies" is not running'):
            c.files.read_text("/etc/passwd")
        assert c.exec_run(["true"]).returncode == 0  # the container lives on (decision 26)
    finally:
        c.destroy()
    assert not (store.runtime_dir / "gdies").exists()
    assert not gofer_pids()


def test_gofer_with_the_subprocess_launcher(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    Container.run("gwarm", bundle(["true"]), store=store)  # the fork server, if any, is up
    children = children_of_this_process()
    c = Container.create(
        "gsub", bundle(["sleep", "60"]), store=store, launcher=SubprocessLauncher()
    )
    try:
        c.files.write_text("/tmp/x", "sub")
        assert c.files.read_text("/tmp/x") == "sub"
        gofer = c.gofer
        assert gofer is not None
    finally:
        c.destroy()
    assert not alive(gofer)
    assert children_of_this_process() <= children  # launched processes were waited for


def test_failed_create_leaves_no_gofer(store: FileStore, bundle: BundleFactory) -> None:
    with pytest.raises(InitError):
        Container.create("gfail", bundle(["/no/such/program"]), store=store)
    assert not gofer_pids()
    assert "gfail" not in Container.list(store=store)


def test_a_sandbox_gone_before_its_gofer_starts_leaves_no_gofer(tmp_path: Path) -> None:
    """``run`` of a quick program: the sandbox may exit before the gofer is handed the root.
    Then there is nothing to serve: no gofer, and none left running."""
    import subprocess

    from sandboxrt._core.records import ProcessIdentity
    from sandboxrt.gofer import PendingGofer

    exited = subprocess.Popen(["true"])
    info = procfs.read_stat(exited.pid)
    assert info is not None
    exited.wait()
    supervisor = ProcessIdentity(exited.pid, info.start_ticks, procfs.boot_id())
    pending = PendingGofer(None)
    served = pending.start(
        "gone",
        supervisor=supervisor,
        runtime_dir=str(tmp_path),
        control_socket=str(tmp_path / "ctl"),
        uid=0,
        gid=0,
    )
    assert served is None
    assert pending.identity is not None
    assert wait_exit(pending.identity.pid)
    assert not os.path.exists(socket_path(str(tmp_path), "gone"))


def test_many_quick_runs(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["true"])
    for i in range(20):
        assert Container.run(f"quick{i}", path, store=store) == 0


def test_one_gofer_serves_every_handle_of_the_container(
    store: FileStore, bundle: BundleFactory
) -> None:
    c = Container.create("gshare", bundle(["sleep", "60"]), store=store)
    try:
        c.files.write_text("/tmp/shared", "one")
        other = Container.load("gshare", store=store)
        assert other.files.read_text("/tmp/shared") == "one"
        assert other.gofer is not None and c.gofer is not None
        assert other.gofer.pid == c.gofer.pid
        assert gofer_pids() == {c.gofer.pid}
    finally:
        c.destroy()


def bind_config(path: Path, binds: list[tuple[str, str, list[str]]]) -> None:
    doc = json.loads((path / "config.json").read_text())
    doc["mounts"] += [
        {"destination": dst, "type": "bind", "source": src, "options": options}
        for src, dst, options in binds
    ]
    (path / "config.json").write_text(json.dumps(doc))


def test_the_gofer_serves_bind_mounts_made_from_trees(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rootfs and bind mounts come to the init as detached mounts the gofer opened on
    the host side (decision 37), never this process: a source the sandbox cannot reach by
    path is mounted all the same (our /proc/<pid>/task: in the sandbox, /proc is its own
    PID namespace's). The gofer then confines itself, and serves them."""

    def not_here(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the library opened a tree itself")

    monkeypatch.setattr(mounts, "open_host_tree", not_here)
    monkeypatch.setattr(mounts, "open_host_trees", not_here)
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "f").write_text("read-only\n")
    path = bundle(["sh", "-c", "ls /hostproc; cat /ro/f; touch /ro/x || echo refused"])
    bind_config(
        path,
        [(f"/proc/{os.getpid()}/task", "/hostproc", ["rbind"]), (str(ro), "/ro", ["bind", "ro"])],
    )
    c = Container.create("gtrees", path, store=store, stdout=PIPE, stderr=STDOUT)
    try:
        gofer = c.gofer
        assert gofer is not None and gofer_pids() == {gofer.pid}
        assert c.files.read_text("/ro/f") == "read-only\n"  # it serves them, confined:
        fields = status_fields(gofer.pid)
        assert int(fields["CapEff"], 16) == 0x1B and fields["NoNewPrivs"] == "1"
        assert os.stat(f"/proc/{gofer.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
        c.start()
        assert c.stdout is not None
        out = c.stdout.read().decode().split()
        assert c.wait(timeout=30) == 0
    finally:
        if c.stdout is not None:
            c.stdout.close()
        c.destroy()
    assert str(os.getpid()) in out  # our main thread's task, seen from inside
    assert "read-only" in out and "refused" in out
    assert not (ro / "x").exists()


def test_every_container_starts_with_its_gofer_unless_it_is_lazy(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A container's gofer comes with it, ``run``'s too (it opened the root); with
    ``Config(lazy_gofer=True)`` none starts until the file API is used (decision 38)."""

    class Counting(SubprocessLauncher):
        gofers = 0

        def launch_gofer(self, *, bootstrap_fd: int, log_fd: int) -> subprocess.Popen[bytes]:
            Counting.gofers += 1
            return super().launch_gofer(bootstrap_fd=bootstrap_fd, log_fd=log_fd)

    launcher = Counting()
    path = bundle(["true"])
    assert Container.run("grun", path, store=store, launcher=launcher) == 0
    assert Counting.gofers == 1
    c = Container.create("gcreate", path, store=store, launcher=launcher)
    try:
        assert Counting.gofers == 2
        assert c.gofer is not None and c.gofer.is_running()
    finally:
        c.destroy()
    lazy = Config(lazy_gofer=True)
    assert Container.run("glazyrun", path, store=store, launcher=launcher, config=lazy) == 0
    c = Container.create("glazy", path, store=store, launcher=launcher, config=lazy)
    try:
        assert Counting.gofers == 2  # (reading ``c.gofer`` would start it)
        c.files.write_text("/hello", "hi")  # (through the default launcher: not recorded)
        assert c.gofer is not None and c.gofer.is_running()
        assert c.files.read_text("/hello") == "hi"
    finally:
        c.destroy()


def test_a_warm_gofer_killed_before_its_container_is_replaced(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The fork server keeps a gofer forked ahead; one that died before a create took it
    makes that create launch a gofer of its own, not fail."""
    launcher = ForkServerLauncher()
    path = bundle(["sleep", "60"])
    try:
        first = Container.create("gwarm1", path, store=store, launcher=launcher)
        first.destroy()
        server = launcher._server
        assert server is not None

        def warm_gofer() -> int:
            for pid in _children(server.pid):
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == WARM_NAME:
                        return pid
            return 0

        wait_until(warm_gofer)
        warm = warm_gofer()
        os.kill(warm, signal.SIGKILL)
        assert wait_exit(warm)
        c = Container.create("gwarm2", path, store=store, launcher=launcher)
        try:
            assert c.gofer is not None and c.gofer.pid != warm and c.gofer.is_running()
            c.files.write_text("/tmp/x", "ok")
            assert c.files.read_text("/tmp/x") == "ok"
        finally:
            c.destroy()
    finally:
        launcher.close()


@pytest.mark.parametrize("lazy_gofer", [False, True])
def test_a_spec_with_hundreds_of_bind_mounts_runs(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, lazy_gofer: bool
) -> None:
    """More trees than the bootstrap socket queues before the sandbox runs (10 messages of
    16 fds): the rest follow once it reads them."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "mark").write_text("x")
    path = bundle(["sh", "-c", "ls /b/299/mark && grep -c ' /b/' /proc/self/mountinfo"])
    bind_config(path, [(str(source), f"/b/{i}", ["bind", "ro"]) for i in range(300)])
    out = tmp_path / "out"
    with out.open("wb") as sink:
        config = Config(lazy_gofer=lazy_gofer, create_timeout=20)
        assert Container.run("binds", path, store=store, config=config, stdout=sink) == 0
    assert out.read_text() == "/b/299/mark\n300\n"
