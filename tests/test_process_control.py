"""Process control in real containers: wait_pid, signal_process, foreground groups,
forward_signals, processes() and exec users by name."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from conftest import REPO, BundleFactory, needs_busybox, needs_root

from sandboxrt import (
    Container,
    ExecError,
    FileStore,
    InvalidArgumentError,
    Process,
    ProcessInfo,
    ProcessNotFoundError,
    ProcessTimeoutError,
    read_spec_file,
)
from sandboxrt._core.users import ResolvedUser, resolve_user
from sandboxrt._os import procfs
from sandboxrt._proc.init import AGENT_PROCESS_NAME
from sandboxrt.process import process_infos

pytestmark = [needs_root, needs_busybox]


def eventually(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def commands(container: Container) -> list[tuple[str, ...]]:
    return [info.command for info in container.processes() if info.state != "Z"]


# -- wait_pid --------------------------------------------------------------------------------


def test_wait_pid_from_a_second_process(running: Container, store: FileStore) -> None:
    process = running.exec(["sh", "-c", "read x; exit 5"], stdin=subprocess.PIPE)
    code = (
        "from sandboxrt import Container, FileStore, ProcessNotFoundError\n"
        f"c = Container.load({running.id!r}, store=FileStore({str(store.root)!r}))\n"
        f"print(c.wait_pid({process.pid}), c.wait_pid({process.pid}))\n"
        "try:\n"
        "    c.wait_pid(30999)\n"
        "except ProcessNotFoundError as e:\n"
        "    print('unknown:', e)\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdin is not None
        process.stdin.write(b"go\n")  # the other process waits already, or soon will
        process.stdin.close()
        out, err = other.communicate(timeout=60)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert other.returncode == 0, err
    first, second = out.splitlines()
    assert first == "5 5"
    assert second == f'unknown: pid 30999 does not belong to container "{running.id}"'
    # Here too, and from the Process itself: the status is kept.
    assert running.wait_pid(process.pid) == 5
    assert process.wait(timeout=10) == 5


def test_wait_pid_timeout_and_unknown_pids(running: Container) -> None:
    process = running.exec(["sleep", "100"])
    with pytest.raises(ProcessTimeoutError, match=rf"process {process.pid} did not exit") as caught:
        running.wait_pid(process.pid, timeout=0.1)
    assert caught.value.pid == process.pid and not caught.value.killed
    process.kill()
    assert running.wait_pid(process.pid, timeout=10) == -signal.SIGKILL
    # Its status was taken: signalling it now names the container and says why.
    with pytest.raises(ProcessNotFoundError, match=rf'"{running.id}": process {process.pid} has'):
        running.signal_process(process.pid, signal.SIGTERM)
    with pytest.raises(ProcessNotFoundError, match="does not belong"):
        running.wait_pid(1)  # the supervisor


def test_wait_pid_of_the_init_also_after_the_sandbox_is_gone(
    store: FileStore, bundle: BundleFactory
) -> None:
    container = Container.create("pc2", bundle(["sleep", "1001"]), store=store)
    try:
        container.start()
        (init,) = [info for info in container.processes() if info.ppid == 1]
        assert init.command == ("sleep", "1001")
        exec_pid = container.exec(["sleep", "100"]).pid
        container.kill(signal.SIGKILL)  # the init ends with -9 ...
        assert container.wait_pid(init.pid, timeout=10) == -signal.SIGKILL
        # ... and the supervisor exits: the recorded status is read for the init,
        # while the exec'd process went with the sandbox.
        sandbox = container.sandbox
        assert sandbox is not None
        eventually(lambda: not sandbox.is_running(), "the supervisor exited")
        assert container.wait_pid(init.pid) == -signal.SIGKILL
        assert container.wait_pid(exec_pid) == -signal.SIGKILL
    finally:
        container.destroy()


# -- signal_process --------------------------------------------------------------------------


def test_signal_process_reaches_any_process_of_the_container(running: Container) -> None:
    script = "sleep 301 & wait $!; echo waited $?"
    shell = running.exec(["sh", "-c", script], stdout=subprocess.PIPE)
    eventually(lambda: ("sleep", "301") in commands(running), "sleep 301 started")
    (child,) = [info for info in running.processes() if info.command == ("sleep", "301")]
    assert child.ppid == shell.pid
    running.signal_process(child.pid, signal.SIGTERM)  # not exec'd: forked by the shell
    out, _ = shell.communicate(timeout=10)
    assert out == f"waited {128 + signal.SIGTERM}\n".encode()
    assert shell.returncode == 0


def test_signal_process_refuses_a_host_process(running: Container) -> None:
    host = subprocess.Popen(["sleep", "100"])  # harmless, ours
    try:
        for pid in (host.pid, 1, 0, -1, 30999):  # the host's, the supervisor, groups, none
            with pytest.raises(ProcessNotFoundError, match="does not belong"):
                running.signal_process(pid, signal.SIGKILL)
            with pytest.raises(ProcessNotFoundError, match="does not belong"):
                running.signal_process(pid, signal.SIGKILL, group=True)
        assert host.poll() is None
        assert "sleep" in Path(f"/proc/{host.pid}/cmdline").read_text()
    finally:
        host.kill()
        host.wait()
    assert running.exec_run(["true"]).returncode == 0  # the container is unharmed


def test_signal_process_of_a_thread_id_names_it_not_found(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A thread's id is no process (pidfd_open: ENOENT since Linux 6.9, EINVAL before): it
    was an InitError."""
    code = (
        "import threading, time\n"
        "t = threading.Thread(target=time.sleep, args=(300,), daemon=True); t.start()\n"
        "print(t.native_id, flush=True); time.sleep(300)\n"
    )
    container = Container.create("thr1", bundle(["sleep", "1000"], rootfs="host_usr"), store=store)
    try:
        container.start()
        process = container.exec(["python3", "-c", code], stdout=subprocess.PIPE)
        assert process.stdout is not None
        tid = int(process.stdout.readline())
        assert tid != process.pid
        for group in (False, True):
            with pytest.raises(ProcessNotFoundError, match="does not belong"):
                container.signal_process(tid, 0, group=group)
        process.kill()
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        container.destroy()


# -- foreground process groups -----------------------------------------------------------------


def _job_runs(container: Container, command: tuple[str, ...]) -> Callable[[], bool]:
    return lambda: command in commands(container)


def test_foreground_group_of_an_exec_d_tty(running: Container) -> None:
    shell = running.exec(["sh"], tty=True)
    assert shell.console is not None
    shell.console.write(b"sleep 302\n")
    eventually(_job_runs(running, ("sleep", "302")), "the shell's job started")

    def interrupted() -> bool:  # (again until the shell has made the job the foreground)
        shell.send_signal(signal.SIGINT, foreground=True)
        return not _job_runs(running, ("sleep", "302"))()

    eventually(interrupted, "the job was interrupted")
    assert shell.poll() is None  # the shell itself got nothing
    shell.console.write(b"echo still here; exit 3\n")
    out, _ = shell.communicate(timeout=10)
    assert b"still here" in (out or b"")
    assert shell.returncode == 3


def test_foreground_group_of_a_terminal_init(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create("pc3", bundle(["sh"], terminal=True), store=store)
    try:
        assert container.console is not None
        container.start()
        container.console.write(b"sleep 303\n")
        eventually(_job_runs(container, ("sleep", "303")), "the shell's job started")

        def interrupted() -> bool:  # (again until the shell has made the job the foreground)
            container.kill(signal.SIGINT, foreground=True)
            return not _job_runs(container, ("sleep", "303"))()

        eventually(interrupted, "the job died")
        assert commands(container) == [("sh",)]  # the init shell survived
        container.console.write(b"exit 4\n")
        assert container.wait(timeout=10) == 4
    finally:
        if container.console is not None:
            container.console.close()
        container.destroy()


def test_foreground_without_a_terminal_is_an_error(running: Container) -> None:
    with pytest.raises(ProcessNotFoundError, match="no controlling terminal"):
        running.kill(signal.SIGINT, foreground=True)
    process = running.exec(["sleep", "100"])
    with pytest.raises(ProcessNotFoundError, match="no controlling terminal"):
        process.send_signal(signal.SIGINT, foreground=True)
    process.kill()
    assert process.wait(timeout=10) == -signal.SIGKILL
    with pytest.raises(ValueError, match="exclude"):
        running.kill(signal.SIGINT, all=True, foreground=True)


# -- forward_signals -------------------------------------------------------------------------

TRAP = "trap 'echo {sig} > /tmp/{marker}; exit 7' {sig}; echo ready; while :; do sleep 0.05; done"


def test_forward_signals_to_an_exec_d_process(running: Container) -> None:
    script = TRAP.format(sig="USR1", marker="exec-marker")
    process = running.exec(["sh", "-c", script], stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _: seen.append(signum))
    try:
        with running.forward_signals(process):
            os.kill(os.getpid(), signal.SIGUSR1)
            assert process.wait(timeout=10) == 7
        assert seen == []  # relayed, not handled here
        os.kill(os.getpid(), signal.SIGUSR1)  # our handler is back
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)
        process.stdout.close()
    done = running.exec_run(["cat", "/tmp/exec-marker"], capture_output=True)
    assert done.stdout == b"USR1\n"


def test_forward_signals_to_the_init(store: FileStore, bundle: BundleFactory) -> None:
    script = TRAP.format(sig="USR2", marker="init-marker")
    container = Container.create("pc4", bundle(["sh", "-c", script]), store=store)
    try:
        container.start()
        eventually(lambda: ("sleep", "0.05") in commands(container), "the trap is set")
        before = signal.getsignal(signal.SIGUSR2)
        with container.forward_signals(signals=[signal.SIGUSR2]):
            assert signal.getsignal(signal.SIGUSR2) is not before
            os.kill(os.getpid(), signal.SIGUSR2)
            assert container.wait(timeout=10) == 7
        assert signal.getsignal(signal.SIGUSR2) == before
    finally:
        container.destroy()


def test_forward_signals_by_pid(running: Container) -> None:
    script = TRAP.format(sig="HUP", marker="pid-marker")
    shell = running.exec(["sh", "-c", f"sh -c {script!r} & wait"], stdout=subprocess.PIPE)
    assert shell.stdout is not None
    assert shell.stdout.readline() == b"ready\n"
    (inner,) = [i for i in running.processes() if i.ppid == shell.pid and i.name != "sleep"]
    with running.forward_signals(inner.pid, [signal.SIGHUP]):
        os.kill(os.getpid(), signal.SIGHUP)
        assert shell.wait(timeout=10) == 0
    shell.stdout.close()
    assert running.exec_run(["cat", "/tmp/pid-marker"], capture_output=True).stdout == b"HUP\n"


def test_forward_signals_outside_the_main_thread(running: Container) -> None:
    errors: list[BaseException] = []

    def enter() -> None:
        try:
            with running.forward_signals():
                pass
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "main thread" in str(errors[0])
    for bad, problem in (
        ([signal.SIGKILL], "SIGKILL"),
        ([999], "no signal 999"),
        (["NOPE"], "unknown"),
    ):
        with pytest.raises(InvalidArgumentError, match=problem) as e:
            running.forward_signals(signals=bad)
        assert f'container "{running.id}"' in str(e.value)
    with running.forward_signals(signals=["HUP", "usr1", 35]) as forwarder:  # (as kill takes)
        assert forwarder.signals == (signal.SIGHUP, signal.SIGUSR1, 35)  # (35: real-time)


def test_forward_signals_resizes_the_tty(running: Container) -> None:
    """With a terminal on our side, the pty gets its size (on entry and on SIGWINCH)."""
    ours, theirs = os.openpty()
    saved = os.dup(0)
    process = running.exec(["sh", "-c", "read x; stty size"], tty=True)
    try:
        fcntl.ioctl(theirs, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        os.dup2(theirs, 0)  # our stdin is now a terminal of 33x101
        with running.forward_signals(process):
            assert process.console is not None
            size = fcntl.ioctl(process.console.fileno(), termios.TIOCGWINSZ, bytes(8))
            assert struct.unpack("HHHH", size)[:2] == (33, 101)
            fcntl.ioctl(theirs, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            os.kill(os.getpid(), signal.SIGWINCH)
            out, _ = process.communicate(b"\n", timeout=10)
        assert (out or b"").splitlines()[-1] == b"40 120"
    finally:
        os.dup2(saved, 0)
        for fd in (saved, ours, theirs):
            os.close(fd)
        if process.returncode is None:
            process.kill()
            process.wait(timeout=10)


# -- processes() -----------------------------------------------------------------------------


def test_processes_lists_a_known_tree(running: Container) -> None:
    shell = running.exec(["sh", "-c", "sleep 304 & sleep 305 & wait"], user="1000:1000")
    want = {("sleep", "304"), ("sleep", "305")}
    eventually(lambda: want <= set(commands(running)), "both sleeps started")
    infos = running.processes()
    assert all(isinstance(info, ProcessInfo) for info in infos)
    by_command = {info.command: info for info in infos}
    init = by_command[("sleep", "1000")]
    assert (init.ppid, init.uid) == (1, 0)
    sh = by_command[("sh", "-c", "sleep 304 & sleep 305 & wait")]
    assert (sh.pid, sh.ppid, sh.uid) == (shell.pid, 1, 1000)
    for command in want:
        child = by_command[command]
        assert (child.ppid, child.uid) == (shell.pid, 1000)
        assert child.state in "RS" and child.cpu_time >= 0.0
    assert 1 not in {info.pid for info in infos}  # the supervisor is not the container's
    sandbox = running.sandbox
    assert sandbox is not None and sandbox.pid not in {info.host_pid for info in infos}
    for info in infos:  # host pids name the same processes
        status = Path(f"/proc/{info.host_pid}/status").read_text()
        nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid"))
        assert int(nspid[-1]) == info.pid
    assert [info.pid for info in infos] == sorted(info.pid for info in infos)
    shell.kill(group=True)
    shell.wait(timeout=10)
    eventually(lambda: not want & set(commands(running)), "the sleeps were killed")


def test_processes_without_a_cgroup_come_from_the_supervisor_s_descendants(
    running: Container,
) -> None:
    """The source used when a container has no cgroup lists the same processes."""
    running.exec(["sleep", "306"])
    eventually(lambda: ("sleep", "306") in commands(running), "sleep 306 started")
    sandbox = running.sandbox
    assert sandbox is not None
    by_tree = process_infos(procfs.descendants(sandbox.pid), sandbox.pid)
    # The exec agent is the supervisor's child outside the cgroup (decision 31); a
    # container without a cgroup has none.
    by_tree = [i for i in by_tree if i.name != AGENT_PROCESS_NAME]
    from_cgroup = running.processes()
    assert [(i.pid, i.host_pid, i.ppid, i.command) for i in by_tree] == [
        (i.pid, i.host_pid, i.ppid, i.command) for i in from_cgroup
    ]
    assert ("sleep", "306") in [i.command for i in by_tree]


# -- exec users ------------------------------------------------------------------------------


def ids(container: Container, user: object) -> str:
    done = container.exec_run(
        ["sh", "-c", "echo $(id -u) $(id -g) / $(id -G)"],
        user=user,  # type: ignore[arg-type]
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().strip()


def test_exec_users_by_name_and_id(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "1000"])
    etc = path / "rootfs" / "etc"
    with (etc / "passwd").open("a") as f:
        f.write("app:x:1000:1000::/home/app:/bin/sh\n")
    with (etc / "group").open("a") as f:
        f.write("app:x:1000:\nstaff:x:50:app,nobody\naudio:x:29:app\n")
    container = Container.create("pc5", path, store=store)
    try:
        container.start()
        assert ids(container, "nobody") == "65534 65534 / 65534 50"
        assert ids(container, "app") == "1000 1000 / 1000 29 50"
        assert ids(container, 1000) == "1000 1000 / 1000 29 50"  # a uid found in passwd
        assert ids(container, "1000:1000") == "1000 1000 / 1000"  # a group: no others
        assert ids(container, "app:staff") == "1000 50 / 50"
        assert ids(container, "2000") == "2000 0 / 0"  # not in passwd: taken as is
        assert ids(container, "2000:2001") == "2000 2001 / 2001"
        assert ids(container, (1000, 7)) == "1000 7 / 7"  # exactly, no lookup
        with pytest.raises(ExecError, match=r'container "pc5".*no user \'ghost\''):
            container.exec(["true"], user="ghost")
        with pytest.raises(ExecError, match=r"no group 'ghosts'"):
            container.exec(["true"], user="app:ghosts")
        with pytest.raises(ValueError, match="user"):
            container.exec(["true"], user="a:b:c")
    finally:
        container.destroy()


def test_exec_user_names_are_never_read_from_the_host(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A passwd that is a symlink into /proc/1/root (the host's root) does not lead there."""
    host_users = [line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines()]
    name = next(u for u in host_users if u not in ("root", "nobody"))
    path = bundle(["sleep", "1000"])
    passwd = path / "rootfs" / "etc" / "passwd"
    passwd.unlink()
    passwd.symlink_to("/proc/1/root/etc/passwd")
    container = Container.create("pc6", path, store=store)
    try:
        container.start()
        with pytest.raises(ExecError, match='container "pc6"'):
            container.exec(["true"], user=name)
    finally:
        container.destroy()


def test_exec_users_and_ttys_without_proc_in_the_container(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The exec'd process opens its fd table before it enters the root: no /proc is needed."""
    path = bundle(["sleep", "1000"])
    spec = read_spec_file(path / "config.json")
    mounts = [m for m in spec.mounts or [] if m.destination != "/proc"]
    container = Container.create("pc7", path, store=store, spec=attrs.evolve(spec, mounts=mounts))
    try:
        container.start()
        assert ids(container, "nobody") == "65534 65534 / 65534"
        process = container.exec(["sh", "-c", "ls /proc | wc -l; tty"], tty=True)
        out, _ = process.communicate(timeout=10)
        assert (out or b"").split()[:2] == [b"0", b"/dev/pts/0"]
    finally:
        container.destroy()


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("root", ResolvedUser(0, 0, (0,))),
        ("0", ResolvedUser(0, 0, (0,))),
        ("u", ResolvedUser(5, 6, (9,))),
        ("u:g", ResolvedUser(5, 9)),
        ("u:6", ResolvedUser(5, 6)),
        ("7:8", ResolvedUser(7, 8)),
        ("7", ResolvedUser(7, 0)),
    ],
)
def test_resolve_user(user: str, expected: ResolvedUser) -> None:
    passwd = "# comment\nroot:x:0:0::/root:/bin/sh\nbroken line\nu:x:5:6::/:/bin/sh\n"
    group = "root:x:0:root\ng:x:9:u,other\nbad:x:notanumber:u\n"
    assert resolve_user(user, passwd, group) == expected


def test_resolve_user_errors() -> None:
    with pytest.raises(LookupError, match="no user 'x'"):
        resolve_user("x", "", "")
    with pytest.raises(LookupError, match="no group 'y'"):
        resolve_user("0:y", "", "")
    for bad in ("", ":", "a:", ":b", "a:b:c", "a\nb", "a,b", "99999999999"):
        with pytest.raises(ValueError):
            resolve_user(bad, "", "")


def test_process_pids_agree(running: Container) -> None:
    process = running.exec(["sleep", "100"])
    try:
        (info,) = [i for i in running.processes() if i.pid == process.pid]
        assert info.command == ("sleep", "100")
        again = Process(
            container_id=running.id,
            sandbox=running.sandbox,
            pid=info.pid,
            args=["sleep"],  # type: ignore[arg-type]
        )
        again.terminate()
        assert running.wait_pid(info.pid, timeout=10) == -signal.SIGTERM
    finally:
        process.kill()
