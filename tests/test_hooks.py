"""Tests of sandboxrt._proc.hooks, with real hook processes."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sandboxrt._proc import hooks as hooks_module
from sandboxrt._proc.hooks import OUTPUT_LIMIT, run_hook, run_hooks, run_hooks_best_effort
from sandboxrt.errors import HookError

CID = "ctr-1"
STATE: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "id": CID,
    "status": "creating",
    "pid": 4242,
    "bundle": "/run/bundle",
    "annotations": {"org.example/ü": 'välue "quoted"\n'},
}


def script(tmp_path: Path, name: str, body: str, mode: int = 0o755) -> str:
    """Write a /bin/sh hook script and return its path."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return str(path)


def is_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (absent, or a zombie waiting for init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not is_gone(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def read_pid(path: Path, timeout: float = 5.0) -> int:
    end = time.monotonic() + timeout
    while True:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        assert time.monotonic() < end, f"{path} was never written"
        time.sleep(0.02)


@pytest.fixture(params=["pidfd", "poll"])
def exit_watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once with pidfd exit notification and once with the polling fallback."""
    if request.param == "poll":
        monkeypatch.setattr(hooks_module, "_pidfd", lambda pid: None)
    return str(request.param)


# --- argv, environment, cwd, fds -------------------------------------------------------------


def test_exact_argv_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXRT_LEAK_CHECK", "leaked")
    body = (
        f"/bin/cat /proc/$$/cmdline > {tmp_path}/cmdline\n"
        f"/bin/cat /proc/$$/environ > {tmp_path}/environ\n"
        f'echo "$0 $@" > {tmp_path}/dollar'
    )
    sh = script(tmp_path, "dump.sh", body)
    # path is the interpreter itself, so argv[0] reaches the process unchanged.
    hook = {"path": "/bin/sh", "args": ["custom-argv0", sh, "a", "b c"], "env": ["FOO=bar", "E="]}
    run_hook(hook, STATE, phase="prestart", container_id=CID)

    assert (tmp_path / "cmdline").read_bytes() == b"\0".join(
        [b"custom-argv0", sh.encode(), b"a", b"b c", b""]
    )
    environ = (tmp_path / "environ").read_bytes().split(b"\0")
    assert sorted(environ) == [b"", b"E=", b"FOO=bar"]
    assert (tmp_path / "dollar").read_text() == f"{sh} a b c\n"


def test_defaults_argv_is_path_and_env_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOXRT_LEAK_CHECK", "leaked")
    assert "PATH" in os.environ
    body = (
        f"/bin/cat /proc/$$/cmdline > {tmp_path}/cmdline\n"
        f"/bin/cat /proc/$$/environ > {tmp_path}/environ\n"
        f"/usr/bin/env > {tmp_path}/env"
    )
    sh = script(tmp_path, "dump.sh", body)
    run_hook({"path": sh, "args": []}, STATE, phase="prestart", container_id=CID)

    # The kernel runs "#!/bin/sh" scripts as: /bin/sh <path> <argv[1:]>.
    assert (tmp_path / "cmdline").read_bytes() == b"/bin/sh\0" + sh.encode() + b"\0"
    assert (tmp_path / "environ").read_bytes() == b""
    env = (tmp_path / "env").read_text()
    for leaked in ("PATH=", "HOME=", "SANDBOXRT_LEAK_CHECK="):
        assert leaked not in env


def test_cwd_defaults_to_root_and_can_be_given(tmp_path: Path) -> None:
    sh = script(tmp_path, "pwd.sh", f'/bin/pwd >> {tmp_path}/pwd; echo "$PWD" >> {tmp_path}/pwd')
    run_hook({"path": sh}, STATE, phase="createRuntime", container_id=CID)
    run_hook({"path": sh}, STATE, phase="createRuntime", container_id=CID, cwd=str(tmp_path))
    assert (tmp_path / "pwd").read_text().split("\n") == [
        "/",
        "/",
        str(tmp_path),
        str(tmp_path),
        "",
    ]


def test_hook_inherits_only_std_fds(tmp_path: Path) -> None:
    r, w = os.pipe()
    high = fcntl.fcntl(r, fcntl.F_DUPFD, 100)  # inheritable: no FD_CLOEXEC
    try:
        assert os.get_inheritable(high)
        out = tmp_path / "fds"
        hook = {"path": "/bin/sh", "args": ["sh", "-c", f"exec /bin/ls /proc/self/fd > {out}"]}
        run_hook(hook, STATE, phase="prestart", container_id=CID)
        fds = set(out.read_text().split())
        assert str(high) not in fds
        assert fds <= {"0", "1", "2", "3"}  # 3 is ls's own handle on /proc/self/fd
    finally:
        for fd in (r, w, high):
            os.close(fd)


# --- stdin --------------------------------------------------------------------------------


def test_state_arrives_on_stdin_intact(tmp_path: Path, exit_watch: str) -> None:
    out = tmp_path / "state.json"
    sh = script(tmp_path, "cat.sh", f"/bin/cat > {out}")
    state = dict(STATE)
    state["annotations"] = types.MappingProxyType({"big": "x" * 1_000_000, "ü": "☃"})
    run_hook({"path": sh}, state, phase="prestart", container_id=CID)
    raw = out.read_bytes()
    assert json.loads(raw) == {**STATE, "annotations": {"big": "x" * 1_000_000, "ü": "☃"}}
    assert not raw.endswith(b"\n")


@pytest.mark.parametrize(
    "body",
    ["exit 0", "exec 0<&-; /bin/sleep 0.2; exit 0"],
    ids=["exits-at-once", "closes-stdin-then-runs"],
)
def test_hook_ignoring_stdin_with_large_state(tmp_path: Path, exit_watch: str, body: str) -> None:
    sh = script(tmp_path, "ignore.sh", f": > {tmp_path}/ran; {body}")
    state = {**STATE, "annotations": {"big": "y" * (4 << 20)}}
    run_hook({"path": sh}, state, phase="poststart", container_id=CID)  # (no EPIPE)
    assert (tmp_path / "ran").exists()


def test_unserializable_state_is_a_type_error(tmp_path: Path) -> None:
    sh = script(tmp_path, "ok.sh", f": > {tmp_path}/ran")
    with pytest.raises(TypeError):
        run_hook({"path": sh}, {"x": object()}, phase="prestart", container_id=CID)
    assert not (tmp_path / "ran").exists()


# --- failures -----------------------------------------------------------------------------


def test_nonzero_exit(tmp_path: Path, exit_watch: str) -> None:
    sh = script(tmp_path, "fail.sh", "echo to-stdout; echo to-stderr >&2; exit 3")
    with pytest.raises(HookError) as info:
        run_hook({"path": sh}, STATE, phase="prestart", container_id=CID)
    err = info.value
    assert (err.path, err.phase, err.container_id, err.returncode) == (sh, "prestart", CID, 3)
    assert err.output == "to-stdout\nto-stderr\n"
    text = str(err)
    assert f'prestart hook {sh} of container "{CID}" failed: exited with status 3' in text
    assert "to-stdout\nto-stderr" in text


def test_killed_by_signal(tmp_path: Path) -> None:
    sh = script(tmp_path, "kill.sh", "echo bye; kill -KILL $$")
    with pytest.raises(HookError) as info:
        run_hook({"path": sh}, STATE, phase="poststop", container_id=CID)
    assert info.value.returncode == -signal.SIGKILL
    assert "killed by signal 9" in str(info.value)
    assert info.value.output == "bye\n"


def test_output_is_bounded_and_decoded_leniently(tmp_path: Path) -> None:
    body = "/usr/bin/yes 0123456789 | /usr/bin/head -c 1100000; echo END"
    sh = script(tmp_path, "noisy.sh", body + "; exit 1")
    with pytest.raises(HookError) as info:
        run_hook({"path": sh}, STATE, phase="prestart", container_id=CID)
    first, rest = info.value.output.split("\n", 1)
    assert "truncated" in first
    assert OUTPUT_LIMIT - 20 < len(rest.encode()) <= OUTPUT_LIMIT
    assert rest.endswith("0123456789\nEND\n")

    sh = script(tmp_path, "badutf8.sh", "printf 'a\\377b\\n'; exit 1")
    with pytest.raises(HookError) as info:
        run_hook({"path": sh}, STATE, phase="prestart", container_id=CID)
    assert info.value.output == "a\ufffdb\n"


def test_timeout_kills_hook_and_grandchild(tmp_path: Path, exit_watch: str) -> None:
    body = (
        f"/bin/sh -c 'echo $$ > {tmp_path}/grandchild; exec /bin/sleep 60' &\n"
        f"echo $$ > {tmp_path}/hook\n"
        "echo started\n"
        "/bin/sleep 60"
    )
    sh = script(tmp_path, "slow.sh", body)
    start = time.monotonic()
    with pytest.raises(HookError) as info:
        run_hook({"path": sh, "timeout": 1}, STATE, phase="prestart", container_id=CID)
    assert 0.9 < time.monotonic() - start < 30  # (its timeout, not its 60 s)
    survivors = {name: read_pid(tmp_path / name) for name in ("hook", "grandchild")}
    survivors = {name: pid for name, pid in survivors.items() if not wait_gone(pid)}
    for pid in survivors.values():  # (still there, so still ours)
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"survived the timeout: {survivors}"
    err = info.value
    assert "prestart hook" in str(err) and "timed out after 1s" in str(err)
    assert err.returncode is None
    assert "started" in err.output


def test_timeout_of_hook_that_closed_its_output(tmp_path: Path) -> None:
    body = f"echo $$ > {tmp_path}/hook; exec >/dev/null 2>&1; /bin/sleep 60"
    sh = script(tmp_path, "quiet.sh", body)
    with pytest.raises(HookError, match="timed out after 1s"):
        run_hook({"path": sh, "timeout": 1}, STATE, phase="prestart", container_id=CID)
    hook = read_pid(tmp_path / "hook")
    if not wait_gone(hook):
        os.kill(hook, signal.SIGKILL)  # (still there, so still ours)
        pytest.fail(f"hook {hook} survived its timeout")


def test_background_child_holding_output_does_not_block(tmp_path: Path, exit_watch: str) -> None:
    body = (
        f"/bin/sh -c 'echo $$ > {tmp_path}/daemon; exec /bin/sleep 30' &\n"
        f"while [ ! -s {tmp_path}/daemon ]; do :; done\n"
        "echo done"
    )
    sh = script(tmp_path, "daemonize.sh", body)
    start = time.monotonic()
    try:
        run_hook({"path": sh, "timeout": 20}, STATE, phase="poststart", container_id=CID)
        assert time.monotonic() - start < 15  # (not held until its 20 s timeout)
        daemon = read_pid(tmp_path / "daemon")
        assert not is_gone(daemon)  # a successful hook's children are left alone
    finally:
        if (tmp_path / "daemon").exists():
            daemon = read_pid(tmp_path / "daemon")
            os.kill(daemon, signal.SIGKILL)
            assert wait_gone(daemon)


def test_relative_path_is_rejected_not_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script(tmp_path, "rel.sh", f": > {tmp_path}/ran")
    monkeypatch.chdir(tmp_path)
    for path in ("rel.sh", "./rel.sh"):
        with pytest.raises(HookError, match="must be absolute") as info:
            run_hook({"path": path}, STATE, phase="prestart", container_id=CID)
        assert info.value.path == path
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing", "FileNotFoundError"),
        ("not-executable", "PermissionError"),
        ("directory", "PermissionError"),
        ("no-shebang", "Exec format error"),
        ("missing-cwd", "FileNotFoundError"),
    ],
)
def test_hook_that_cannot_be_executed(tmp_path: Path, kind: str, expected: str) -> None:
    cwd = None
    if kind == "missing":
        path = str(tmp_path / "nope")
    elif kind == "not-executable":
        path = script(tmp_path, "noexec.sh", "exit 0", mode=0o644)
    elif kind == "directory":
        path = str(tmp_path)
    elif kind == "no-shebang":
        (tmp_path / "raw").write_text("exit 0\n")
        (tmp_path / "raw").chmod(0o755)
        path = str(tmp_path / "raw")
    else:
        path = script(tmp_path, "ok.sh", "exit 0")
        cwd = str(tmp_path / "no-such-dir")
    with pytest.raises(HookError) as info:
        run_hook({"path": path}, STATE, phase="prestart", container_id=CID, cwd=cwd)
    assert "cannot execute it" in str(info.value)
    assert expected in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.returncode is None


@pytest.mark.parametrize(
    "hook",
    [
        ["/bin/true"],
        {},
        {"path": ""},
        {"path": 5},
        {"path": "/bin/true\0x"},
        {"path": "/bin/true", "args": "/bin/true"},
        {"path": "/bin/true", "args": ["true", 1]},
        {"path": "/bin/true", "env": "A=1"},
        {"path": "/bin/true", "env": ["NOEQUALS"]},
        {"path": "/bin/true", "env": ["=x"]},
        {"path": "/bin/true", "timeout": 0},
        {"path": "/bin/true", "timeout": -1},
        {"path": "/bin/true", "timeout": True},
        {"path": "/bin/true", "timeout": "5"},
    ],
)
def test_malformed_hook(hook: Any) -> None:
    with pytest.raises(HookError, match="invalid hook"):
        run_hook(hook, STATE, phase="prestart", container_id=CID)


# --- sequences ----------------------------------------------------------------------------


def three_hooks(tmp_path: Path, middle_status: int = 1) -> list[dict[str, Any]]:
    return [
        {"path": script(tmp_path, "one.sh", f": > {tmp_path}/one")},
        {"path": script(tmp_path, "two.sh", f": > {tmp_path}/two; exit {middle_status}")},
        {"path": script(tmp_path, "three.sh", f": > {tmp_path}/three")},
    ]


def test_run_hooks_stops_at_first_failure(tmp_path: Path) -> None:
    hooks = three_hooks(tmp_path)
    with pytest.raises(HookError) as info:
        run_hooks(hooks, STATE, phase="createContainer", container_id=CID)
    assert info.value.path == hooks[1]["path"]
    assert (tmp_path / "one").exists() and (tmp_path / "two").exists()
    assert not (tmp_path / "three").exists()


def test_run_hooks_runs_all_in_order(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hooks = [{"path": script(tmp_path, f"h{i}.sh", f"echo {i} >> {log}")} for i in range(3)]
    run_hooks(hooks, STATE, phase="startContainer", container_id=CID)
    assert log.read_text() == "0\n1\n2\n"


def test_run_hooks_best_effort(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hooks = three_hooks(tmp_path, middle_status=4)
    hooks.append({"path": str(tmp_path / "missing")})
    logger = logging.getLogger("sandboxrt.test.hooks")
    with caplog.at_level(logging.WARNING, logger="sandboxrt.test.hooks"):
        errors = run_hooks_best_effort(hooks, STATE, phase="poststop", container_id=CID, log=logger)
    assert [e.path for e in errors] == [hooks[1]["path"], hooks[3]["path"]]
    assert errors[0].returncode == 4
    assert all((tmp_path / n).exists() for n in ("one", "two", "three"))
    warnings = [r for r in caplog.records if r.name == "sandboxrt.test.hooks"]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.WARNING]
    assert hooks[1]["path"] in warnings[0].getMessage()
    assert "poststop hook" in warnings[1].getMessage()

    assert run_hooks_best_effort(hooks[:1], STATE, phase="poststop", container_id=CID) == []


def test_concurrent_hooks_from_threads(tmp_path: Path) -> None:
    sh = script(tmp_path, "cat.sh", '/bin/cat > "$OUT"')
    n = 8

    def one(i: int) -> None:
        env = [f"OUT={tmp_path}/out{i}"]
        run_hook({"path": sh, "env": env}, {**STATE, "pid": i}, phase="prestart", container_id=CID)

    before = threading.active_count()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    assert threading.active_count() == before
    for i in range(n):
        assert json.loads((tmp_path / f"out{i}").read_text())["pid"] == i


def test_a_hook_whose_exit_status_this_process_cannot_see(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller that ignores SIGCHLD (a daemon) has the kernel reap its children unseen:
    a failing prestart hook read as a success, and its container ran. A fatal hook is
    refused before it runs; a poststop hook runs, with a warning that its failure
    cannot be known."""
    sh = script(tmp_path, "fails.sh", f": > {tmp_path}/ran; exit 3")
    before = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with pytest.raises(HookError, match="ignores SIGCHLD") as info:
            run_hook({"path": sh}, STATE, phase="prestart", container_id=CID)
        assert info.value.container_id == CID
        assert not (tmp_path / "ran").exists()
        with caplog.at_level(logging.WARNING):
            errors = run_hooks_best_effort(
                [{"path": sh}], STATE, phase="poststop", container_id=CID
            )
        assert errors == [] and (tmp_path / "ran").exists()
        assert "whether its poststop hooks fail cannot be known" in caplog.text
    finally:
        signal.signal(signal.SIGCHLD, before)
    with pytest.raises(HookError, match="exited with status 3"):  # (seen again)
        run_hook({"path": sh}, STATE, phase="prestart", container_id=CID)
