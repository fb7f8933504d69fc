"""Processes exec'd into real containers: streams, exit codes, signals, timeouts, isolation."""

from __future__ import annotations

import concurrent.futures
import gc
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
from conftest import BundleFactory, in_python, needs_busybox, needs_root, small_pid_space

from sandboxrt import (
    Container,
    ExecError,
    FileStore,
    InvalidArgumentError,
    InvalidStateError,
    Process,
    ProcessError,
    ProcessNotFoundError,
    ProcessTimeoutError,
    Status,
    WaitTimeoutError,
)
from sandboxrt._core.plan import exec_plan

pytestmark = [needs_root, needs_busybox]


def output(container: Container, *args: str, **kwargs: object) -> str:
    """The stdout of ``args`` run to completion in ``container`` (exit code 0 expected)."""
    done = container.exec_run(list(args), capture_output=True, **kwargs)  # type: ignore[arg-type]
    assert done.returncode == 0, done
    return done.stdout.decode()


def status_fields(text: str, *names: str) -> dict[str, str]:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name: fields[name].strip() for name in names}


def live_commands(container: Container) -> list[str]:
    """The command lines of the container's live (non-zombie) processes."""
    script = 'for p in /proc/[0-9]*; do tr "\\0" " " < $p/cmdline 2>/dev/null; echo; done'
    return [line.strip() for line in output(container, "sh", "-c", script).splitlines()]


# -- streams -------------------------------------------------------------------------------


def test_output_streams_line_by_line_while_the_process_runs(running: Container) -> None:
    process = running.exec(
        ["sh", "-c", "echo a; read x; echo b $x"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stdout.readline() == b"a\n"
    assert process.poll() is None  # blocked in read: it is still running
    process.stdin.write(b"go\n")
    process.stdin.flush()
    assert process.stdout.readline() == b"b go\n"
    assert process.wait(timeout=10) == 0
    process.stdin.close()
    process.stdout.close()


def test_stdin_reaches_the_process(running: Container) -> None:
    process = running.exec(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, err = process.communicate(b"hello\nworld\n", timeout=30)
    assert (out, err, process.returncode) == (b"hello\nworld\n", None, 0)


def test_100_mb_of_output_does_not_deadlock(running: Container) -> None:
    process = running.exec(
        ["head", "-c", "100000000", "/dev/zero"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = process.communicate(timeout=120)
    assert len(out or b"") == 100_000_000
    assert err == b""
    assert process.returncode == 0


def test_large_input_and_output_at_once_do_not_deadlock(running: Container) -> None:
    data = os.urandom(8 * 1024 * 1024)
    process = running.exec(
        ["sh", "-c", "cat; cat /proc/self/status >&2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = process.communicate(data, timeout=120)
    assert out == data
    assert b"NoNewPrivs" in (err or b"")


def test_streaming_from_python_in_a_host_usr_container(
    store: FileStore, bundle: BundleFactory
) -> None:
    container = Container.create("py1", bundle(["sleep", "1000"], rootfs="host_usr"), store=store)
    try:
        container.start()
        code = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)"
        process = container.exec(
            ["python3", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert process.stdin is not None and process.stdout is not None
        for word in (b"one", b"two", b"three"):
            process.stdin.write(word + b"\n")
            process.stdin.flush()
            assert process.stdout.readline() == word.upper() + b"\n"
        process.stdin.close()
        assert process.wait(timeout=30) == 0
        process.stdout.close()
    finally:
        container.destroy()


def test_stderr_to_stdout_and_devnull(running: Container) -> None:
    done = running.exec_run(
        ["sh", "-c", "echo out; echo err >&2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert sorted(done.stdout.split()) == [b"err", b"out"]
    done = running.exec_run(["echo", "x"], stdout=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (0, None)


def test_output_to_a_file(running: Container, tmp_path: Path) -> None:
    path = tmp_path / "out"
    with path.open("wb") as f:
        assert running.exec(["echo", "to a file"], stdout=f).wait(timeout=10) == 0
    assert path.read_bytes() == b"to a file\n"


# -- exit codes and signals ----------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, 255])
def test_exit_codes(running: Container, code: int) -> None:
    assert running.exec(["sh", "-c", f"exit {code}"]).wait(timeout=10) == code
    assert running.exec_run(["sh", "-c", f"exit {code}"]).returncode == code


def test_check_raises_a_process_error(running: Container) -> None:
    with pytest.raises(ProcessError) as caught:
        running.exec_run(
            ["sh", "-c", "echo out; echo err >&2; exit 7"], capture_output=True, check=True
        )
    error = caught.value
    assert isinstance(error, subprocess.CalledProcessError)
    assert (error.returncode, error.stdout, error.stderr) == (7, b"out\n", b"err\n")
    assert f'"{running.id}"' in str(error)


def test_text_mode_as_subprocess_run(running: Container) -> None:
    """``text``/``universal_newlines``, ``encoding`` and ``errors`` as ``subprocess.run``
    takes them: ``str`` in and out, newlines translated."""
    script = ["sh", "-c", "cat; printf 'a\\r\\nb\\rc\\n'; echo err >&2; exit 2"]
    done = running.exec_run(script, input="é\n", capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (2, "é\na\nb\nc\n", "err\n")
    latin = ["sh", "-c", "cat; printf '\\351' >&2; exit 3"]
    done = running.exec_run(latin, input="é", capture_output=True, encoding="latin-1")
    assert (done.stdout, done.stderr) == ("é", "é")
    done = running.exec_run(["echo", "x"], capture_output=True, universal_newlines=True)
    assert done.stdout == "x\n"
    with pytest.raises(ProcessError) as caught:  # its output is text too
        running.exec_run(latin, capture_output=True, errors="replace", check=True)
    assert (caught.value.returncode, caught.value.stderr) == (3, "\ufffd")
    with pytest.raises(UnicodeDecodeError):  # (strict, as subprocess.run)
        running.exec_run(latin, capture_output=True, text=True)
    with pytest.raises(TypeError, match="input must be bytes"):
        running.exec_run(["cat"], input="text without text mode")
    with pytest.raises(TypeError, match="input must be str in text mode, not bytes"):
        running.exec_run(["cat"], input=b"bytes in text mode", text=True)  # type: ignore[call-overload]
    with pytest.raises(InvalidArgumentError, match="different values"):
        running.exec_run(["true"], text=True, universal_newlines=False)
    # An unknown codec is refused before the program runs, as subprocess.run does.
    with pytest.raises(InvalidArgumentError, match="unknown encoding"):
        running.exec_run(["touch", "/ran"], encoding="no-such-codec")
    with pytest.raises(InvalidArgumentError, match="unknown error handler"):
        running.exec_run(["touch", "/ran"], text=True, errors="no-such-handler")
    assert running.exec_run(["test", "-e", "/ran"]).returncode == 1


def test_terminate_kill_and_send_signal(running: Container) -> None:
    process = running.exec(["sleep", "100"])
    assert process.poll() is None
    process.terminate()
    assert process.wait(timeout=10) == -signal.SIGTERM
    process.terminate()  # exited: nothing happens
    process = running.exec(["sleep", "100"])
    process.kill()
    assert process.wait(timeout=10) == -signal.SIGKILL
    trap = "trap 'echo usr1; exit 5' USR1; echo ready; while true; do sleep 0.05; done"
    process = running.exec(["sh", "-c", trap], stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    process.send_signal(signal.SIGUSR1)
    assert process.wait(timeout=10) == 5
    assert process.stdout.read() == b"usr1\n"
    process.stdout.close()


def test_wait_and_poll(running: Container) -> None:
    process = running.exec(["sleep", "0.5"])
    with pytest.raises(ProcessTimeoutError) as caught:
        process.wait(timeout=0.05)
    assert isinstance(caught.value, subprocess.TimeoutExpired)
    assert not caught.value.killed
    assert process.poll() is None  # a wait timeout leaves it running
    assert process.wait(timeout=10) == 0
    assert process.poll() == 0
    # The status stays available to later waits (here from a fresh Process object).
    again = Process(container_id=running.id, sandbox=running.sandbox, pid=process.pid, args=["x"])  # type: ignore[arg-type]
    assert again.wait(timeout=10) == 0


def test_with_block_closes_streams_and_waits(running: Container) -> None:
    with running.exec(["echo", "x"], stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        assert process.stdout.read() == b"x\n"
    assert process.returncode == 0
    assert process.stdout.closed


# -- timeouts ------------------------------------------------------------------------------


def test_timeout_kills_the_process_and_what_it_forked(running: Container) -> None:
    process = running.exec(["sh", "-c", "sleep 100 & sleep 100"], timeout=1.0)
    assert "sleep 100" in live_commands(running)
    start = time.monotonic()
    with pytest.raises(ProcessTimeoutError) as caught:
        process.wait(timeout=30)
    assert time.monotonic() - start < 10
    assert caught.value.killed and process.timed_out
    assert process.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while "sleep 100" in live_commands(running):  # the orphan is reaped by the supervisor
        assert time.monotonic() < deadline, live_commands(running)
        time.sleep(0.05)


def test_a_process_that_exited_before_its_deadline_did_not_time_out(
    running: Container,
) -> None:
    """Nobody looked before the deadline: the timer finds it exited, and kills nothing."""
    process = running.exec(["sh", "-c", "sleep 100 & exit 0"], timeout=0.5)
    time.sleep(1.5)
    assert process.wait(timeout=10) == 0
    assert not process.timed_out
    assert "sleep 100" in live_commands(running)  # its group was left alone


def test_exec_run_timeout_raises_timeout_expired_with_the_output(running: Container) -> None:
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        running.exec_run(
            ["sh", "-c", "echo started; sleep 100 & sleep 100"], capture_output=True, timeout=0.5
        )
    assert time.monotonic() - start < 10
    error = caught.value
    assert isinstance(error, ProcessTimeoutError) and error.killed
    assert error.stdout == b"started\n"
    assert "sleep 100" not in live_commands(running) or _eventually_gone(running)


@pytest.mark.parametrize("how", ["exec_run", "deadline"])
def test_a_timeout_does_not_wait_for_what_left_the_group(running: Container, how: str) -> None:
    """A child that left the process group (setsid) keeps the output pipe open past the
    kill: the timeout is raised with the output so far, as subprocess.run does, not when
    the child ends."""
    script = ["sh", "-c", "setsid sleep 60 & echo started; sleep 60"]
    start = time.monotonic()
    with pytest.raises(ProcessTimeoutError) as caught:
        if how == "exec_run":
            running.exec_run(script, capture_output=True, timeout=0.5)
        else:
            running.exec(script, stdout=subprocess.PIPE, timeout=0.5).communicate()
    assert time.monotonic() - start < 30
    assert caught.value.killed
    assert caught.value.output == b"started\n"


@pytest.mark.parametrize("how", ["exec_run", "communicate"])
def test_a_timeout_after_the_exit_says_the_process_exited(running: Container, how: str) -> None:
    """A process that exited in time, whose output a child out of its group (setsid) still
    holds, is not said to be killed, nor still running: the time-out gives its status."""
    script = ["sh", "-c", "setsid sleep 60 & echo started; exit 3"]
    with pytest.raises(ProcessTimeoutError) as caught:
        if how == "exec_run":
            running.exec_run(script, capture_output=True, timeout=1)
        else:
            running.exec(script, stdout=subprocess.PIPE).communicate(timeout=1)
    error = caught.value
    assert not error.killed and error.returncode == 3
    assert "exited 3, but a process it left running held its output open" in str(error)
    assert error.output == b"started\n"


def test_a_dropped_process_with_a_deadline_is_freed(running: Container) -> None:
    """Its deadline does not keep a dropped Process (its fd, its timer thread) alive."""
    before, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # (dropped unwaited: it says so)
        for _ in range(20):
            running.exec(["true"], timeout=600)
        gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    eventually_true = time.monotonic() + 10
    while threading.active_count() > threads + 2 and time.monotonic() < eventually_true:
        time.sleep(0.01)
    assert threading.active_count() <= threads + 2


def _eventually_gone(container: Container) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "sleep 100" not in live_commands(container):
            return True
        time.sleep(0.05)
    return False


def test_communicate_timeout_can_be_resumed(running: Container) -> None:
    process = running.exec(["sh", "-c", "echo one; sleep 0.5; echo two"], stdout=subprocess.PIPE)
    with pytest.raises(ProcessTimeoutError) as caught:
        process.communicate(timeout=0.2)
    assert caught.value.stdout == b"one\n"
    out, _ = process.communicate(timeout=30)
    assert out == b"one\ntwo\n"


# -- many at once, from elsewhere ----------------------------------------------------------


def test_100_concurrent_execs(running: Container) -> None:
    def one(i: int) -> tuple[int, bytes]:
        done = running.exec_run(
            ["sh", "-c", "echo $i"], env={"i": str(i)}, capture_output=True, timeout=60
        )
        return done.returncode, done.stdout

    with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, range(100)))
    assert results == [(0, f"{i}\n".encode()) for i in range(100)]


def test_exec_from_another_python_process(running: Container, store: FileStore) -> None:
    code = (
        "import subprocess, sys\n"
        "from sandboxrt import Container, FileStore\n"
        f"c = Container.load({running.id!r}, store=FileStore({str(store.root)!r}))\n"
        "p = c.exec(['sh', '-c', 'echo from $$; exit 4'], stdout=subprocess.PIPE)\n"
        "print(p.stdout.read().decode().strip())\n"
        "sys.exit(p.wait())\n"
    )
    done = in_python(code)
    assert done.returncode == 4, done.stderr
    assert re.fullmatch(r"from \d+\n", done.stdout)


def eventually_pid(container: Container, command: tuple[str, ...]) -> int:
    """The sandbox pid of the container's process running ``command``, once it runs."""
    for _ in range(100):
        found = [p.pid for p in container.processes() if p.command == command]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no process {command} in {container.id}")


def test_a_process_of_another_is_not_ours(running: Container) -> None:
    sandbox = running.sandbox
    assert sandbox is not None
    with pytest.raises(ProcessNotFoundError, match="does not belong"):
        sandbox.wait_process(running.id, 31000)
    with pytest.raises(ProcessNotFoundError, match="does not belong"):
        sandbox.signal_process(running.id, 31000, signal.SIGTERM)
    with pytest.raises(ProcessNotFoundError, match="does not belong"):
        sandbox.signal_process(running.id, 1, signal.SIGTERM)  # the supervisor
    # One of its processes that is neither its init nor exec'd: said so.
    shell = running.exec(["sh", "-c", "sleep 100 & wait"])
    child = eventually_pid(running, ("sleep", "100"))
    with pytest.raises(ProcessNotFoundError, match="neither its init nor exec'd into it"):
        running.wait_pid(child, timeout=1)
    shell.kill(group=True)
    shell.wait()


# -- errors and states ---------------------------------------------------------------------


def test_missing_binary_is_a_clear_error(running: Container) -> None:
    with pytest.raises(ExecError, match=rf"{running.id}.*'nosuch'.*not found in \$PATH"):
        running.exec(["nosuch", "arg"])
    with pytest.raises(ExecError, match=r"/bin/nosuch.*does not exist"):
        running.exec(["/bin/nosuch"])
    with pytest.raises(ExecError, match="cannot exec 'true'"):
        running.exec(["true"], cwd="/bin/busybox")  # not a directory
    assert running.exec(["true"]).wait(timeout=10) == 0  # the container is unharmed


def test_a_missing_cwd_fails_the_exec_and_makes_nothing(running: Container) -> None:
    """As ``runc exec --cwd``: unlike an init's, an exec'd process's missing cwd is an
    error, through the agent and the slow way (it was made, root's, in the rootfs)."""
    rootfs = Path(running.bundle) / "rootfs"
    for user in (None, 1000):
        with pytest.raises(ExecError, match=r"chdir to cwd '/nope/a': No such file"):
            running.exec(["true"], cwd="/nope/a", user=user)
    assert not (rootfs / "nope").exists()
    assert running.exec(["true"], cwd="/tmp", user=1000).wait(timeout=10) == 0


def test_bad_arguments(running: Container) -> None:
    with pytest.raises(ValueError, match="args"):
        running.exec([])
    with pytest.raises(ValueError, match="absolute"):
        running.exec(["true"], cwd="tmp")
    with pytest.raises(ValueError, match="user"):
        running.exec(["true"], user="1:2:3")
    with pytest.raises(TypeError, match="user"):
        running.exec(["true"], user=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tty"):
        running.exec(["true"], tty=True, stdout=subprocess.PIPE)


def test_exec_into_a_stopped_container(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create("st1", bundle(["true"]), store=store)
    try:
        container.start()
        assert container.wait(timeout=10) == 0
        with pytest.raises(InvalidStateError, match='exec in container "st1" in state stopped'):
            container.exec(["true"])
    finally:
        container.destroy()


def test_an_object_of_a_destroyed_container_execs_as_the_new_one_of_its_id(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["sleep", "1000"])
    first = Container.create("again", path, store=store)
    stale = Container.load("again", store=store)
    try:
        first.start()
        assert output(stale, "id", "-u") == "0\n"  # (its plan is cached from here on)
    finally:
        first.destroy()
    config = path / "config.json"
    document = json.loads(config.read_text())
    document["process"]["user"] = {"uid": 1000, "gid": 1000}
    config.write_text(json.dumps(document))
    second = Container.create("again", path, store=store)
    try:
        second.start()
        assert output(stale, "id", "-u") == "1000\n"  # the container the id names now
    finally:
        second.destroy()


def stale_and_fresh(
    store: FileStore, path: Path, cid: str, fresh_args: list[str], *, warmup: int = 0
) -> tuple[Process, Container, Process]:
    """A process of a destroyed container ``cid`` (after ``warmup`` execs, for a higher
    pid), the running container made next with that id, and a process of it with the
    same pid (both sandboxes number their processes alike), started by ``fresh_args``
    (the earlier ones are waited for). The caller destroys the container."""
    first = Container.create(cid, path, store=store)
    try:
        first.start()
        for _ in range(warmup):
            first.exec(["true"]).wait(timeout=10)
        stale = first.exec(["sleep", "1000"])
    finally:
        first.destroy()
    second = Container.create(cid, path, store=store)
    try:
        second.start()
        fresh = second.exec(fresh_args)
        while fresh.pid < stale.pid:  # until it has the stale one's pid
            fresh.kill()
            fresh.wait(timeout=10)
            fresh = second.exec(fresh_args)
        assert fresh.pid == stale.pid
    except BaseException:
        second.destroy()
        raise
    return stale, second, fresh


def test_a_process_of_a_destroyed_container_never_reaches_the_next_of_its_id(
    store: FileStore, bundle: BundleFactory
) -> None:
    # The stale process object, asking the control socket by path, used to signal the
    # new container's process of its pid.
    path = bundle(["sleep", "1000"])
    stale, second, fresh = stale_and_fresh(store, path, "reused", ["sleep", "1000"], warmup=10)
    try:
        stale.kill()
        assert stale.wait(timeout=10) == -signal.SIGKILL
        assert fresh.poll() is None
        assert second.processes()  # the new sandbox still answers
    finally:
        second.destroy()


def test_a_process_of_a_destroyed_container_never_reads_the_next_s_statuses(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Both sandboxes numbered their execs alike too: once the second stopped, the stale
    handle read its exec's status from the files the second left under the same runtime
    directory (42 for a process killed with its sandbox)."""
    path = bundle(["sleep", "1000"])
    stale, second, fresh = stale_and_fresh(store, path, "reread", ["sh", "-c", "exit 42"])
    try:
        assert fresh.wait(timeout=10) == 42
        second.kill(signal.SIGKILL)
        assert second.wait(timeout=10) == -signal.SIGKILL
        assert stale.poll() == -signal.SIGKILL
    finally:
        second.destroy()


@pytest.mark.parametrize("timeout", [0, -1])
def test_a_deadline_already_past_is_a_timeout(running: Container, timeout: float) -> None:
    with pytest.raises(WaitTimeoutError):
        running.wait(timeout=timeout)
    process = running.exec(["sleep", "100"])
    with pytest.raises(ProcessTimeoutError):
        process.wait(timeout=timeout)
    with pytest.raises(WaitTimeoutError):
        running.wait_pid(process.pid, timeout=timeout)
    process.kill()
    assert process.wait(timeout=10) == -signal.SIGKILL
    # An exited process's status is there at once: asked, not waited for.
    assert running.wait_pid(process.pid, timeout=timeout) == -signal.SIGKILL


@pytest.mark.parametrize("forever", [math.inf, 1e12, 1e300])
def test_a_timeout_of_forever_waits_for_ever(running: Container, forever: float) -> None:
    """As ``subprocess`` takes it (it overflowed a socket's timeout, or a timer's)."""
    done = running.exec_run(["sh", "-c", "exit 3"], timeout=forever)
    assert done.returncode == 3
    process = running.exec(["sh", "-c", "exit 4"], timeout=forever)
    assert process.wait(timeout=forever) == 4
    assert process.communicate(timeout=forever) == (None, None)
    assert running.wait_pid(process.pid, timeout=forever) == 4
    with pytest.raises(WaitTimeoutError):
        running.wait(timeout=0)
    for call in (
        lambda: running.wait(timeout=math.nan),
        lambda: process.wait(timeout=math.nan),
        lambda: running.exec_run(["true"], timeout=math.nan),
        lambda: running.wait_pid(process.pid, timeout=math.nan),
    ):
        with pytest.raises(InvalidArgumentError, match=f'container "{running.id}": timeout'):
            call()
    with pytest.raises(TypeError, match="timeout must be a number"):
        running.wait(timeout="1")  # type: ignore[arg-type]


def test_a_process_used_in_a_forked_child_leaves_the_parent_s_wait_alone(
    running: Container,
) -> None:
    """The child's poll went on the exec's connection, which it shares with the parent:
    the parent's wait took the child's "no status yet" (a ProtocolError)."""
    process = running.exec(["sleep", "1"])
    child = os.fork()
    if child == 0:  # (polls while the parent waits; says how it went by its exit status)
        code = 1
        try:
            time.sleep(0.2)
            seen = [process.poll() for _ in range(5)]
            code = 0 if None in seen else 2
        finally:
            os._exit(code)
    try:
        assert process.wait(timeout=30) == 0
    finally:
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_timed_out_communicate_leaves_stdin_blocking(running: Container) -> None:
    """Its input half written, the caller's stdin stayed non-blocking (a later write
    raised BlockingIOError), as Popen.communicate never leaves it."""
    process = running.exec(["sleep", "100"], stdin=subprocess.PIPE)
    assert process.stdin is not None
    with pytest.raises(ProcessTimeoutError):
        process.communicate(b"z" * 1_000_000, timeout=0.3)
    assert os.get_blocking(process.stdin.fileno())
    process.kill()
    assert process.wait(timeout=10) == -signal.SIGKILL


def test_exec_into_a_paused_container(running: Container) -> None:
    running.pause()
    with pytest.raises(InvalidStateError, match="state paused"):
        running.exec(["true"])


def test_exec_into_a_created_container(store: FileStore, bundle: BundleFactory) -> None:
    container = Container.create("cr1", bundle(["sleep", "1000"]), store=store)
    try:
        assert output(container, "cat", "/etc/hostname") == "sandboxrt\n"
        container.start()
        assert container.status is Status.RUNNING
    finally:
        container.destroy()


def test_exec_d_processes_die_with_the_container(running: Container) -> None:
    process = running.exec(["sleep", "100"])
    running.kill(signal.SIGKILL)
    assert running.wait(timeout=10) == -signal.SIGKILL
    assert process.wait(timeout=10) == -signal.SIGKILL


def test_exec_d_processes_keep_their_status_once_the_container_stopped(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A process that exited before its container did reads its own status afterwards,
    from a Process or ``wait_pid`` (of this process or another), not ``-SIGKILL``."""
    container = Container.create("kept1", bundle(["sh", "-c", "sleep 1"]), store=store)
    try:
        container.start()
        unwaited = container.exec(["sh", "-c", "exit 5"])
        waited = container.exec(["sh", "-c", "exit 6"])
        assert waited.wait(timeout=10) == 6
        killed = container.exec(["sleep", "100"])
        assert container.wait(timeout=30) == 0
        assert unwaited.wait(timeout=10) == 5
        assert container.wait_pid(unwaited.pid) == 5
        assert container.wait_pid(waited.pid) == 6
        assert killed.wait(timeout=10) == -signal.SIGKILL
        code = (
            "from sandboxrt import Container, FileStore\n"
            f"c = Container.load('kept1', store=FileStore({str(store.root)!r}))\n"
            f"print(c.wait_pid({unwaited.pid}))\n"
        )
        done = in_python(code)
        assert done.stdout.strip() == "5", done.stderr
    finally:
        container.destroy()


# -- what the process is and sees ----------------------------------------------------------


def test_namespaces_root_and_cgroup_are_the_container_s(running: Container) -> None:
    init_pid = _init_nspid(running)
    script = (
        f"echo $$; for ns in /proc/self/ns/mnt /proc/{init_pid}/ns/mnt /proc/self/ns/cgroup "
        f"/proc/{init_pid}/ns/cgroup; do readlink $ns; done; "
        f"cat /proc/self/cgroup; echo --; cat /proc/{init_pid}/cgroup; ls /bin/busybox"
    )
    process = running.exec(["sh", "-c", script], stdout=subprocess.PIPE)
    out, _ = process.communicate(timeout=30)
    lines = (out or b"").decode().splitlines()
    assert int(lines[0]) == process.pid and process.pid not in (1, init_pid)
    mnt_self, mnt_init, cg_self, cg_init = lines[1:5]
    assert mnt_self == mnt_init and cg_self == cg_init
    own = os.readlink("/proc/self/ns/mnt")
    assert mnt_self != own  # not the host's mount namespace
    rest = "\n".join(lines[5:])
    mine, theirs = rest.split("\n--\n")
    assert mine == "\n".join(theirs.splitlines()[: len(mine.splitlines())])
    assert lines[-1] == "/bin/busybox"


def test_the_process_is_in_the_container_s_cgroup_on_the_host(running: Container) -> None:
    sandbox = running.sandbox
    assert sandbox is not None
    process = running.exec(["sleep", "100"])
    try:
        # Its host pid: in the sandbox's PID namespace, with the pid exec gave.
        pid_ns = os.readlink(f"/proc/{sandbox.pid}/ns/pid")
        host_pid = next(pid for pid in _host_pids(pid_ns) if _nspid(pid)[-1] == process.pid)
        init_host_pid = _init_host_pid(running)
        with open(f"/proc/{init_host_pid}/cgroup") as f:
            theirs = f.read()
        with open(f"/proc/{sandbox.pid}/cgroup") as f:
            assert f.read() != theirs  # the supervisor stays outside
        with open(f"/proc/{host_pid}/cgroup") as f:
            assert f.read() == theirs
        with open(f"/proc/{host_pid}/comm") as f:
            assert f.read() == "busybox\n"  # sleep is a busybox applet
    finally:
        process.kill()
        process.wait(timeout=10)


def _host_pids(pid_ns: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == pid_ns:
                    found.append(int(name))
            except OSError:
                continue
    return found


def _init_host_pid(container: Container) -> int:
    """The container's init on the host: the supervisor's first child (PID 2 or later in
    the sandbox, after a root built ahead that did not serve)."""
    supervisor = container.state().pid
    assert supervisor is not None
    with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
        children = [int(pid) for pid in f.read().split()]
    return min(children, key=lambda pid: _nspid(pid)[-1])


def _init_nspid(container: Container) -> int:
    return _nspid(_init_host_pid(container))[-1]


def _nspid(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return [0]


def test_env_cwd_and_user_overrides(running: Container) -> None:
    spec_env = running._record.spec["process"]["env"]
    home = "HOME=/root"  # from the container's /etc/passwd, unless the env has one (as runc)
    assert sorted(output(running, "env").splitlines()) == sorted([*spec_env, home])
    env = output(running, "/bin/env", env={"FOO": "bar baz"})
    assert sorted(env.splitlines()) == ["FOO=bar baz", home]
    assert output(running, "/bin/env", env=["A=1", "HOME=/h"]).splitlines() == ["A=1", "HOME=/h"]
    assert output(running, "pwd") == "/\n"
    assert output(running, "pwd", cwd="/tmp") == "/tmp\n"
    assert output(running, "id", "-u") == "0\n"
    assert output(running, "sh", "-c", "id -u; id -g; id -G", user="1000:1001").split() == [
        "1000",
        "1001",
        "1001",
    ]
    # 65534 is nobody in the bundle's /etc/passwd: its group comes along (as runc does).
    assert output(running, "sh", "-c", "id -u; id -g", user=65534).split() == ["65534", "65534"]
    assert output(running, "sh", "-c", "id -u; id -g", user="4242").split() == ["4242", "0"]


def test_the_process_gets_the_container_s_privileges(running: Container) -> None:
    names = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
    mine = status_fields(output(running, "cat", "/proc/self/status"), *names)
    init = status_fields(output(running, "cat", f"/proc/{_init_nspid(running)}/status"), *names)
    assert mine == init
    assert mine["NoNewPrivs"] == "1" and mine["Seccomp"] == "2"
    assert mine["CapEff"] != "000001ffffffffff"  # the default set, not everything
    # Nothing ignored or blocked leaks from the supervisor (Python ignores SIGPIPE).
    sig = status_fields(output(running, "cat", "/proc/self/status"), "SigIgn", "SigBlk")
    assert sig == {"SigIgn": "0000000000000000", "SigBlk": "0000000000000000"}
    # A process that is not PID 1 or 2 and leads its own process group and session.
    stat = output(running, "cat", "/proc/self/stat")
    fields = stat[stat.rindex(")") + 2 :].split()
    pid = int(stat.split()[0])
    assert pid > 2 and int(fields[2]) == pid and int(fields[3]) == pid  # pgrp, session


def test_exec_plan_is_the_spec_s_process_with_overrides(running: Container) -> None:
    spec = running._record.spec
    plan = exec_plan(spec, ["x"], compile_seccomp=lambda _: b"\0" * 8)
    assert plan.env == spec["process"]["env"]
    assert plan.capabilities is not None and plan.capabilities.effective
    assert plan.no_new_privileges and plan.seccomp is not None
    plan = exec_plan(
        spec,
        ["x"],
        env={"A": "1"},
        cwd="/tmp",
        user="5:6",
        terminal=True,
        compile_seccomp=lambda _: b"\0" * 8,
    )
    assert (plan.env, plan.cwd, plan.uid, plan.gid, plan.terminal) == (["A=1"], "/tmp", 5, 6, True)
    assert plan.user == "5:6"  # looked up in the container, as runc does


def test_tty_gives_a_pty(running: Container) -> None:
    process = running.exec(["tty"], tty=True)
    out, err = process.communicate(timeout=30)
    assert err is None
    assert re.fullmatch(rb"/dev/pts/\d+\r\n", out or b""), out
    assert process.returncode == 0
    process = running.exec(["sh", "-c", "read x; echo got $x"], tty=True)
    out, _ = process.communicate(b"hello\n", timeout=30)
    assert (out or b"").endswith(b"got hello\r\n")


@pytest.mark.parametrize("data", [b"abc\n", b"abc", bytearray(b"ab\n"), memoryview(b"ab\n")])
def test_input_on_a_terminal_ends_as_its_user_ends_it(running: Container, data: bytes) -> None:
    """With ^D (twice after a line not ended): a program reading to the end gets there.
    The caller's buffer is left as it was."""
    before = bytes(data)
    done = running.exec_run(["wc", "-c"], tty=True, input=data, timeout=30)
    assert done.stdout is not None
    assert done.stdout.endswith(b"%d\r\n" % len(before)), done.stdout  # (after the echo)
    assert bytes(data) == before


def test_a_terminal_has_the_size_asked_for_from_the_start(running: Container) -> None:
    """``console_size`` sizes the pty before the program runs (docker exec -t sizes it
    to the caller's terminal); without it, 0x0 as runc's (busybox's stty cannot tell)."""
    done = running.exec_run(["stty", "size"], tty=True, console_size=(30, 100), timeout=30)
    assert done.stdout == b"30 100\r\n"
    done = running.exec_run(["stty", "size"], tty=True, timeout=30)
    assert b"30 100" not in (done.stdout or b"")
    with pytest.raises(InvalidArgumentError, match="needs tty=True"):
        running.exec(["true"], console_size=(30, 100))
    for bad in ((30,), (30, -1), (30, 70000), "ab"):
        with pytest.raises(InvalidArgumentError, match="console_size must be"):
            running.exec(["true"], tty=True, console_size=bad)  # type: ignore[arg-type]


def test_the_console_reads_to_the_end_once_the_process_exited(running: Container) -> None:
    """Linux answers ``EIO`` on a pty's master once its terminal is closed everywhere: the
    console gives what was left, then end of file, as a pipe does."""
    process = running.exec(["sh", "-c", "echo one; echo two"], tty=True)
    assert process.console is not None
    with process:
        assert process.wait(timeout=10) == 0
        assert process.console.read().replace(b"\r", b"") == b"one\ntwo\n"
        assert process.console.read() == b"" and process.console.read(10) == b""
    # Non-blocking, with nothing to read yet: None, as a FileIO's (not end of file).
    process = running.exec(["sleep", "5"], tty=True)
    assert process.console is not None
    with process:
        os.set_blocking(process.console.fileno(), False)
        assert process.console.read() is None and process.console.read(10) is None
        process.kill()


def _next_pid(container: Container) -> int:
    return int(container.exec_run(["sh", "-c", "echo $$"], capture_output=True).stdout)


def test_a_pid_another_exec_was_given_is_not_taken_for_an_unwaited_process(
    running: Container,
) -> None:
    """Once the PID space wraps, a later exec may get the pid of an exec nobody waited for:
    the old Process still reads its own status and never signals the newer process (each
    exec has a serial the supervisor checks)."""
    small_pid_space(running, 400)
    burn = ["sh", "-c", "i=0; while [ $i -lt 20 ]; do (:); i=$((i+1)); done"]
    while _next_pid(running) < 320:  # (past the pids a wrap never hands out again)
        running.exec_run(burn)
    old = running.exec(["sh", "-c", "exit 7"])  # exits at once; never waited for
    wrapped, last = False, old.pid
    while not wrapped or last < old.pid - 20:
        running.exec_run(burn)
        pid = _next_pid(running)
        wrapped, last = wrapped or pid < last, pid
    new = None
    for _ in range(100):
        candidate = running.exec(["sleep", "1000"])
        if candidate.pid == old.pid:
            new = candidate
            break
        candidate.kill()
        candidate.wait()
    assert new is not None, "no exec got the old pid"
    try:
        assert old.poll() == 7
        old.kill()
        old.send_signal(signal.SIGKILL, group=True)
        old.send_signal(signal.SIGKILL, foreground=True)
        assert new.poll() is None
        assert old.wait() == 7
    finally:
        new.kill()
    assert new.wait() == -signal.SIGKILL


def test_a_process_dropped_unwaited_warns_as_popen_does(running: Container) -> None:
    with pytest.warns(ResourceWarning, match="is still running"):
        running.exec(["sleep", "10"])
        gc.collect()
    done = running.exec(["true"])
    done.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del done
        gc.collect()


def test_text_no_c_string_carries_is_a_bad_argument(running: Container) -> None:
    """A lone surrogate (not ``surrogateescape``'s bytes) in an argument, the env or a path
    of the file API: an InvalidArgumentError, not a failed exec or an EIO."""
    for call in (
        lambda: running.exec(["echo", "\ud800"]),
        lambda: running.exec(["true"], env={"X": "\ud800"}),
        lambda: running.exec(["true"], cwd="/tmp/\ud800"),
        lambda: running.files.read_bytes("/tmp/\ud800"),
    ):
        with pytest.raises(InvalidArgumentError, match="UTF-8"):
            call()
    # surrogateescape's own (bytes that are not UTF-8) pass, as to subprocess
    done = running.exec_run(["echo", "\udcff"], capture_output=True, check=True)
    assert done.stdout == b"\xff\n"
