"""What a real container sees: terminal, root, mounts, /dev, hostname, user, cwd, env, rlimits."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REOPEN_STDIO,
    BundleFactory,
    edit_config,
    needs_busybox,
    needs_root,
    reopened_stdio,
    run_output,
    supervisor_pids,
    wait_until,
)
from test_userns import with_userns

from sandboxrt import (
    PIPE,
    Container,
    FileStore,
    ForkServerLauncher,
    InitError,
    InvalidArgumentError,
    MissingFeatureError,
    SpecError,
)

pytestmark = [needs_root, needs_busybox]


# -- helpers ---------------------------------------------------------------------------------


def add_mounts(bundle: Path, *mounts: dict[str, Any]) -> None:
    edit_config(bundle, lambda d: d["mounts"].extend(mounts))


def sh(store: FileStore, bundle: BundleFactory, script: str, **kwargs: Any) -> str:
    """Run ``sh -c script`` in a new busybox container; its output (exit code 0 expected)."""
    code, out = run_output(store, bundle(["sh", "-c", script], **kwargs))
    assert code == 0, out
    return out


def mount_line(mounts: str, destination: str) -> list[str]:
    """The fields of the /proc/mounts line of ``destination`` (the last one mounted there)."""
    lines = [line.split() for line in mounts.splitlines() if line.split()[1:2] == [destination]]
    assert lines, f"{destination} is not mounted:\n{mounts}"
    return lines[-1]


def read_master(fd: int, timeout: float = 10.0) -> bytes:
    """Read a pty master until the slave side is closed everywhere."""
    out = b""
    end = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < end:
            if not sel.select(end - time.monotonic()):
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: no slave left
                return out
            if not chunk:
                return out
            out += chunk
    raise AssertionError(f"the pty never closed; read so far: {out!r}")


# -- 10. terminal ----------------------------------------------------------------------------


def test_terminal_through_console_socket(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    path = bundle(["sh", "-c", "tty; echo hi"], terminal=True)
    sock_path = tmp_path / "console.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sock_path))
        listener.listen(1)
        container = Container.create("tty", path, store=store, console_socket=sock_path)
        try:
            assert container.console is None
            conn, _ = listener.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
            assert len(fds) == 1
            master = fds[0]
            try:
                assert os.isatty(master)
                container.start()
                out = read_master(master).decode()
            finally:
                os.close(master)
            assert container.wait(timeout=10) == 0
        finally:
            container.destroy()
    assert "/dev/pts/" in out
    assert "hi" in out


def test_terminal_without_console_socket(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sh", "-c", "tty; echo hi; ls /proc/self/fd"], terminal=True)
    container = Container.create("tty", path, store=store)
    try:
        assert container.console is not None
        assert not os.get_inheritable(container.console.fileno())
        container.start()
        out = read_master(container.console.fileno()).decode()
        assert container.wait(timeout=10) == 0
    finally:
        if container.console is not None:
            container.console.close()
        container.destroy()
    lines = out.split()
    assert lines[0].startswith("/dev/pts/")
    assert lines[1] == "hi"
    assert sorted(lines[2:]) == ["0", "1", "2", "3"], "the caller's stdio leaked in"


def test_the_terminal_has_the_specs_console_size(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["stty", "size"], terminal=True)
    edit_config(path, lambda d: d["process"].update(consoleSize={"height": 33, "width": 111}))
    with Container.create("tty", path, store=store) as container:
        assert container.console is not None
        container.start()
        out = read_master(container.console.fileno()).decode()
        assert container.wait(timeout=10) == 0
    assert out.split() == ["33", "111"]


def test_unreachable_console_socket_leaves_nothing(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    path = bundle(["true"], terminal=True)
    before = supervisor_pids()
    with pytest.raises(InvalidArgumentError, match=r'"tty": cannot send the console to .*missing'):
        Container.create("tty", path, store=store, console_socket=tmp_path / "missing.sock")
    assert Container.list(store=store) == []
    assert list(Path(store.runtime_dir).iterdir()) == []
    assert supervisor_pids() == before


def test_a_console_socket_is_dialled_before_anything_is_made(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """As runc: one that takes no connection (its backlog full) fails the create at
    once, before any hook runs, rather than holding it (and its lock) for ever."""
    path = bundle(["true"], terminal=True)
    ran = tmp_path / "ran"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {ran}\n")
    hook.chmod(0o755)
    edit_config(path, lambda d: d.update(hooks={"createRuntime": [{"path": str(hook)}]}))
    sock_path = tmp_path / "full.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sock_path))
        listener.listen(0)
        waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        waiting.connect(str(sock_path))  # (the backlog is full now)
        with waiting, pytest.raises(InvalidArgumentError, match="cannot send the console"):
            Container.create("tty", path, store=store, console_socket=sock_path)
    for name in ("console_socket", "pid_file"):
        bad = {name: str(tmp_path / "a\0b")}
        with pytest.raises(InvalidArgumentError, match=f'"tty": {name} must not hold a NUL byte'):
            Container.create("tty", path, store=store, **bad)  # type: ignore[arg-type]
    assert not ran.exists()
    assert Container.list(store=store) == []


def test_a_console_socket_needs_a_terminal_and_run_a_terminal_a_socket(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """As runc: a console socket without process.terminal is refused; and ``run`` of a
    terminal with nothing to read it (no console socket) would hang: refused too."""
    with pytest.raises(InvalidArgumentError, match='"t1": a console socket is for a terminal'):
        Container.create("t1", bundle(["true"]), store=store, console_socket=tmp_path / "s")
    with pytest.raises(InvalidArgumentError, match=r'"t2": Container\.run of a process\.terminal'):
        Container.run("t2", bundle(["true"], terminal=True), store=store)
    # The terminal is the program's stdio: pipes given as well would stay empty.
    with pytest.raises(InvalidArgumentError, match=r'"t3": with process\.terminal, the terminal'):
        Container.create("t3", bundle(["true"], terminal=True), store=store, stdout=subprocess.PIPE)
    assert Container.list(store=store) == []


def test_no_fds_leak_into_the_program(store: FileStore, bundle: BundleFactory) -> None:
    code, out = run_output(store, bundle(["ls", "/proc/self/fd"]))
    assert code == 0, out
    assert sorted(out.split()) == ["0", "1", "2", "3"]  # 3: ls's own directory


# -- 11. read-only root ----------------------------------------------------------------------


def test_readonly_root(store: FileStore, bundle: BundleFactory) -> None:
    script = (
        "touch /x 2>/dev/null; echo root=$?; touch /tmp/x 2>/dev/null; echo tmp=$?; "
        "touch /dev/shm/x; echo shm=$?"
    )
    # default_spec mounts no /tmp: on a read-only root it is read-only too.
    assert sh(store, bundle, script, readonly=True).split() == ["root=1", "tmp=1", "shm=0"]
    path = bundle(["sh", "-c", script], readonly=True)
    add_mounts(path, {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"})
    code, out = run_output(store, path)
    assert (code, out.split()) == (0, ["root=1", "tmp=0", "shm=0"])
    assert sh(store, bundle, script).split() == ["root=0", "tmp=0", "shm=0"]


# -- 12. mounts ------------------------------------------------------------------------------


def test_proc(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sh", "-c", "test -e /proc/self/status && cat /proc/1/cmdline"])
    container = Container.create("proc", path, store=store, stdout=subprocess.PIPE)
    try:
        supervisor = container.state().pid
        expected = Path(f"/proc/{supervisor}/cmdline").read_bytes()
        container.start()
        assert container.stdout is not None
        out = container.stdout.read()
        assert container.wait(timeout=10) == 0
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()
    assert out == expected
    assert b"sandboxrt" in out


def test_sysfs(store: FileStore, bundle: BundleFactory) -> None:
    out = sh(store, bundle, "test -d /sys/kernel && echo ok; cat /proc/mounts")
    assert out.startswith("ok\n")
    fields = mount_line(out, "/sys")
    assert fields[2] == "sysfs"
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(fields[3].split(","))


def test_tmpfs_size_and_mode(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sh", "-c", "stat -c %a /scratch; cat /proc/mounts"])
    add_mounts(
        path,
        {
            "destination": "/scratch",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "noexec", "size=1m", "mode=1770"],
        },
    )
    code, out = run_output(store, path)
    assert code == 0, out
    assert out.startswith("1770\n")
    fields = mount_line(out, "/scratch")
    assert fields[2] == "tmpfs"
    options = set(fields[3].split(","))
    assert {"rw", "nosuid", "nodev", "noexec", "size=1024k", "mode=1770"} <= options


def test_devpts_and_mqueue(store: FileStore, bundle: BundleFactory) -> None:
    out = sh(store, bundle, "cat /proc/mounts")
    devpts = mount_line(out, "/dev/pts")
    assert devpts[2] == "devpts"
    assert {"nosuid", "noexec", "gid=5", "mode=620", "ptmxmode=666"} <= set(devpts[3].split(","))
    mqueue = mount_line(out, "/dev/mqueue")
    assert mqueue[2] == "mqueue"
    assert {"nosuid", "nodev", "noexec"} <= set(mqueue[3].split(","))


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("hello from the host\n")
    script = shared / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    return shared


def test_bind_read_write(store: FileStore, bundle: BundleFactory, host_dir: Path) -> None:
    path = bundle(["sh", "-c", "cat /data/hello.txt && echo new > /data/new.txt && /data/run.sh"])
    add_mounts(
        path, {"destination": "/data", "type": "bind", "source": str(host_dir), "options": ["bind"]}
    )
    code, out = run_output(store, path)
    assert (code, out) == (0, "hello from the host\nran\n")
    assert (host_dir / "new.txt").read_text() == "new\n"


def test_bind_readonly(store: FileStore, bundle: BundleFactory, host_dir: Path) -> None:
    path = bundle(["sh", "-c", "cat /data/hello.txt; echo x > /data/new.txt; echo rc=$?"])
    add_mounts(
        path,
        {
            "destination": "/data",
            "type": "bind",
            "source": str(host_dir),
            "options": ["bind", "ro"],
        },
    )
    code, out = run_output(store, path)
    assert code == 0
    assert out.startswith("hello from the host\n")
    assert out.endswith("rc=1\n")
    assert "Read-only file system" in out
    assert not (host_dir / "new.txt").exists()


def test_bind_single_file(store: FileStore, bundle: BundleFactory, host_dir: Path) -> None:
    path = bundle(["cat", "/etc/greeting"])
    add_mounts(
        path,
        {
            "destination": "/etc/greeting",
            "type": "bind",
            "source": str(host_dir / "hello.txt"),
            "options": ["rbind", "ro"],
        },
    )
    assert run_output(store, path) == (0, "hello from the host\n")


def test_bind_nosuid_nodev_noexec(store: FileStore, bundle: BundleFactory, host_dir: Path) -> None:
    path = bundle(["sh", "-c", "/data/run.sh; echo rc=$?; cat /proc/mounts"])
    add_mounts(
        path,
        {
            "destination": "/data",
            "type": "bind",
            "source": str(host_dir),
            "options": ["rbind", "nosuid", "nodev", "noexec"],
        },
    )
    code, out = run_output(store, path)
    assert code == 0, out
    assert "rc=126" in out  # noexec: permission denied
    fields = mount_line(out, "/data")
    assert {"rw", "nosuid", "nodev", "noexec"} <= set(fields[3].split(","))


def _host_submount() -> tuple[str, str]:
    """A host mount point with another mount below it (for rbind)."""
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    for parent, child in (("/dev", "pts"), ("/dev", "shm"), ("/sys", "fs/cgroup")):
        if parent in points and f"{parent}/{child}" in points:
            return parent, child
    pytest.skip("no host mount with a submount to rbind")


@pytest.mark.parametrize("kind", ["bind", "rbind"])
def test_rbind_brings_submounts(store: FileStore, bundle: BundleFactory, kind: str) -> None:
    parent, child = _host_submount()
    path = bundle(["cat", "/proc/mounts"])
    add_mounts(
        path, {"destination": "/host", "type": "bind", "source": parent, "options": [kind, "ro"]}
    )
    code, out = run_output(store, path)
    assert code == 0, out
    points = [line.split()[1] for line in out.splitlines()]
    assert "/host" in points
    assert (f"/host/{child}" in points) is (kind == "rbind")


@pytest.mark.parametrize(
    ("propagation", "seen"), [("rslave", True), ("rprivate", False), ("rshared", True)]
)
def test_a_slave_bind_sees_what_the_host_mounts_later(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, propagation: str, seen: bool
) -> None:
    """Kubernetes' HostToContainer: with ``rslave`` a mount made on the host under the
    bind's source after the start shows in the container (it never did: each bind was
    made private first); with ``rprivate`` it does not. With ``rshared`` too, as runc: it
    is made a slave first, so that nothing mounted beneath it ever reaches the host."""
    source = tmp_path / "src"
    source.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(source)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(source)], check=True)
        path = bundle(["sh", "-c", "read x; cat /x/sub/marker 2>&1"])
        options = ["rbind", propagation]
        add_mounts(
            path,
            {"destination": "/x", "type": "bind", "source": str(source), "options": options},
            # Mounted by the runtime beneath the bind: it must never reach the host.
            {"destination": "/x/mine", "type": "tmpfs", "source": "tmpfs", "options": []},
        )
        container = Container.create(
            "prop", path, store=store, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            container.start()
            (source / "sub").mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(source / "sub")], check=True)
            (source / "sub" / "marker").write_text("from the host\n")
            assert container.stdin is not None and container.stdout is not None
            container.stdin.write(b"go\n")
            container.stdin.close()
            out = container.stdout.read().decode()
            assert container.wait(timeout=30) == (0 if seen else 1), out
            assert (out == "from the host\n") is seen, out
            assert not os.path.ismount(source / "mine")  # nothing went back to the host
        finally:
            if container.stdout is not None:
                container.stdout.close()
            container.destroy()
    finally:
        subprocess.run(["umount", "-R", str(source)], check=True)


@pytest.mark.parametrize(("options", "child_ro"), [(["rro"], True), (["ro"], False)])
def test_recursive_options_reach_the_submounts(
    store: FileStore, bundle: BundleFactory, options: list[str], child_ro: bool
) -> None:
    """``rro`` (and the other ``r*`` options) hold beneath the mount too; ``ro`` only on it."""
    parent, child = _host_submount()
    path = bundle(["cat", "/proc/mounts"])
    add_mounts(
        path,
        {
            "destination": "/host",
            "type": "bind",
            "source": parent,
            "options": ["rbind", "rnosuid", *options],
        },
    )
    code, out = run_output(store, path)
    assert code == 0, out
    top = set(mount_line(out, "/host")[3].split(","))
    below = set(mount_line(out, f"/host/{child}")[3].split(","))
    assert {"ro", "nosuid"} <= top
    assert "nosuid" in below
    assert ("ro" in below) is child_ro


def test_nosymfollow(store: FileStore, bundle: BundleFactory, host_dir: Path) -> None:
    (host_dir / "link").symlink_to("hello.txt")
    path = bundle(["sh", "-c", "cat /data/hello.txt; cat /data/link; echo rc=$?"])
    add_mounts(
        path,
        {
            "destination": "/data",
            "type": "bind",
            "source": str(host_dir),
            "options": ["rbind", "nosymfollow"],
        },
    )
    code, out = run_output(store, path)
    assert code == 0, out
    assert out.startswith("hello from the host\n")
    assert out.endswith("rc=1\n"), out  # the link is not followed (ELOOP)


def test_default_devices_and_symlinks(store: FileStore, bundle: BundleFactory) -> None:
    script = (
        "stat -c '%n %F %t:%T %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty;"
        ' for l in fd stdin stdout stderr ptmx; do echo "$l -> $(readlink /dev/$l)"; done;'
        " echo data > /dev/null && head -c 4 /dev/zero | wc -c"
    )
    lines = sh(store, bundle, script).splitlines()
    assert lines == [
        "/dev/null character special file 1:3 666",
        "/dev/zero character special file 1:5 666",
        "/dev/full character special file 1:7 666",
        "/dev/random character special file 1:8 666",
        "/dev/urandom character special file 1:9 666",
        "/dev/tty character special file 5:0 666",
        "fd -> /proc/self/fd",
        "stdin -> /proc/self/fd/0",
        "stdout -> /proc/self/fd/1",
        "stderr -> /proc/self/fd/2",
        "ptmx -> pts/ptmx",
        "4",
    ]


def test_sysctl_is_applied(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["cat", "/proc/sys/net/ipv4/ip_forward"])
    edit_config(path, lambda d: d["linux"].update(sysctl={"net.ipv4.ip_forward": "1"}))
    assert run_output(store, path) == (0, "1\n")
    # One the kernel refuses is named (its EINVAL says not which).
    edit_config(path, lambda d: d["linux"].update(sysctl={"net.ipv4.ip_forward": "2x"}))
    with pytest.raises(InitError, match=r"setting sysctl net\.ipv4\.ip_forward to '2x'"):
        Container.create("bad-sysctl", path, store=store)


def test_masked_and_readonly_paths(store: FileStore, bundle: BundleFactory) -> None:
    script = (
        "wc -c < /proc/keys; ls /sys/firmware | wc -l;"
        " (echo 1 > /proc/sys/kernel/panic) 2>/dev/null; echo sys=$?;"
        " cat /proc/sys/kernel/ostype"
    )
    assert sh(store, bundle, script).split() == ["0", "0", "sys=1", "Linux"]


def test_masked_and_readonly_symlinks_hide_and_protect_their_targets(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A masked or read-only path that is a symlink in the rootfs: its target (beneath the
    root) is masked or made read-only, as runc does (it was skipped: left exposed)."""
    script = (
        "cat /etc/secret /etc/real-secret; ls /etc/hidden | wc -l;"
        " (echo x > /etc/rodir/new) 2>/dev/null; echo ro=$?"
    )
    path = bundle(["sh", "-c", script])
    etc = path / "rootfs" / "etc"
    (etc / "real-secret").write_text("SECRET\n")
    (etc / "secret").symlink_to("real-secret")
    (etc / "real-hidden").mkdir()
    (etc / "real-hidden" / "inner").write_text("x")
    (etc / "hidden").symlink_to("/etc/real-hidden")
    (etc / "rodir").mkdir()
    (etc / "rolink").symlink_to("rodir")

    def change(document: dict[str, Any]) -> None:
        document["linux"]["maskedPaths"] = ["/etc/secret", "/etc/hidden"]
        document["linux"]["readonlyPaths"] = ["/etc/rolink"]

    edit_config(path, change)
    assert run_output(store, path) == (0, "0\nro=1\n")
    assert not (etc / "rodir" / "new").exists()


def test_symlink_in_rootfs_does_not_lead_outside(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = bundle(["sh", "-c", "echo in > /escape/sub/file; cat /proc/mounts"])
    (path / "rootfs" / "escape").symlink_to(outside)  # absolute: resolved in the rootfs
    add_mounts(path, {"destination": "/escape/sub", "type": "tmpfs", "source": "tmpfs"})
    code, out = run_output(store, path)
    assert code == 0, out
    assert list(outside.iterdir()) == []
    assert mount_line(out, f"{outside}/sub")[2] == "tmpfs"


# -- 13. hostname, user, cwd, env, rlimits -------------------------------------------------


def test_hostname_and_domainname(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sh", "-c", "hostname; cat /proc/sys/kernel/domainname"])
    edit_config(path, lambda d: d.update(hostname="box-1", domainname="example.org"))
    assert run_output(store, path) == (0, "box-1\nexample.org\n")
    assert socket.gethostname() != "box-1"


def test_user_umask_cwd(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sh", "-c", "id; umask; pwd; touch f; stat -c %a f"])

    def change(document: dict[str, Any]) -> None:
        document["process"]["user"] = {
            "uid": 1000,
            "gid": 1000,
            "additionalGids": [10, 20],
            "umask": 0o027,
        }
        document["process"]["cwd"] = "/tmp"

    edit_config(path, change)
    code, out = run_output(store, path)
    assert code == 0, out
    assert out.splitlines() == ["uid=1000 gid=1000 groups=10,20", "0027", "/tmp", "640"]


def test_what_runc_gives_the_same_spec(store: FileStore, bundle: BundleFactory) -> None:
    """Differences a run of one config.json under runc and sandboxrt showed: an rlimit
    Python's ``resource`` has no name for; ``readonlyPaths`` adding ``nodev``/``nosuid``
    (``/dev`` read-only lost its devices) and coming after the masks (a masked path
    inside read-only ``/proc/sys`` read EACCES, not nothing); a tmpfs without ``mode=``
    over a directory (world-writable, where runc keeps the directory's mode); and
    duplicate additional gids (each once)."""
    script = (
        "grep 'Max file locks' /proc/self/limits | tr -s ' '; "
        "echo x > /dev/null && head -c 3 /dev/zero | wc -c; "
        "cat /proc/sys/kernel/core_pattern; echo masked=$?; "
        "stat -c %a /opt; grep Groups /proc/self/status"
    )
    path = bundle(["sh", "-c", script])
    (path / "rootfs" / "opt").mkdir(mode=0o700, exist_ok=True)
    (path / "rootfs" / "opt").chmod(0o700)

    def change(document: dict[str, Any]) -> None:
        process, linux = document["process"], document["linux"]
        process["rlimits"] = [{"type": "RLIMIT_LOCKS", "hard": 10, "soft": 10}]
        process["user"]["additionalGids"] = [0, 0, 3, 3]
        linux["readonlyPaths"] = [*linux.get("readonlyPaths", []), "/dev"]
        linux["maskedPaths"] = [*linux.get("maskedPaths", []), "/proc/sys/kernel/core_pattern"]
        document["mounts"].append({"destination": "/opt", "type": "tmpfs", "source": "tmpfs"})

    edit_config(path, change)
    code, out = run_output(store, path)
    assert code == 0, out
    assert out.splitlines() == [
        "Max file locks 10 10 locks ",
        "3",
        "masked=0",
        "700",
        "Groups:\t0 3 ",
    ]


def test_a_relative_program_runs_from_the_working_directory(
    store: FileStore, bundle: BundleFactory
) -> None:
    """``WORKDIR /app`` with ``CMD ["./hello.sh"]``, and an exec of one elsewhere: as
    execve, relative to the cwd, not to the root."""
    path = bundle(["./hello.sh"])
    rootfs = path / "rootfs"
    for where, text in (("", "root"), ("app", "app"), ("tmp", "tmp")):
        script = rootfs / where / "hello.sh"
        script.parent.mkdir(exist_ok=True)
        script.write_text(f"#!/bin/sh\necho from {text}\n")
        script.chmod(0o755)
    edit_config(path, lambda d: d["process"].update(cwd="/app"))
    assert run_output(store, path) == (0, "from app\n")
    edit_config(path, lambda d: d["process"].update(args=["sleep", "60"]))
    container = Container.create("rel", path, store=store)
    try:
        container.start()
        done = container.exec_run(["./hello.sh"], cwd="/tmp", capture_output=True, timeout=30)
        assert (done.returncode, done.stdout) == (0, b"from tmp\n")
        done = container.exec_run(["hello.sh"], cwd="/tmp", env={"PATH": "."}, capture_output=True)
        assert done.stdout == b"from tmp\n"
    finally:
        container.destroy()


def test_cwd_is_created(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["pwd"])
    edit_config(path, lambda d: d["process"].update(cwd="/work/dir"))
    assert run_output(store, path) == (0, "/work/dir\n")


def test_env_passed_exactly(store: FileStore, bundle: BundleFactory) -> None:
    """The spec's env as it is, and HOME from the container's /etc/passwd when it has
    none (as runc): root's there, / for a user passwd does not list."""
    env = ["PATH=/bin", "FOO=bar baz", "EMPTY=", "MULTI=a=b=c"]
    path = bundle(["env"])
    edit_config(path, lambda d: d["process"].update(env=env))
    code, out = run_output(store, path)
    assert code == 0
    assert sorted(out.splitlines()) == sorted([*env, "HOME=/root"])
    edit_config(path, lambda d: d["process"].update(env=[*env, "HOME=/mine"]))
    assert sorted(run_output(store, path)[1].splitlines()) == sorted([*env, "HOME=/mine"])
    edit_config(path, lambda d: d["process"].update(env=env, user={"uid": 4321, "gid": 4321}))
    assert "HOME=/" in run_output(store, path)[1].splitlines()


def test_a_missing_cwd_is_made_under_a_read_only_root_too(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: made before the root is remounted read-only (it failed with EROFS). One
    bundle after another with other cwds: a root built ahead for the last plan's cwd does
    not serve (it failed with EROFS too)."""
    path = bundle(["pwd"], readonly=True)
    launcher = ForkServerLauncher(build_ahead=True)
    try:
        for i, cwd in enumerate(("/work", "/wa", "/wb", "/wc")):
            edit_config(path, lambda d, cwd=cwd: d["process"].update(cwd=cwd))
            c = Container.create(f"ro{i}", path, store=store, launcher=launcher, stdout=PIPE)
            try:
                c.start()
                assert c.stdout is not None
                assert (c.wait(timeout=30), c.stdout.read()) == (0, f"{cwd}\n".encode())
            finally:
                if c.stdout is not None:
                    c.stdout.close()
                c.destroy()
    finally:
        launcher.close()


def test_home_is_the_users_for_the_init_and_every_exec(
    store: FileStore, bundle: BundleFactory
) -> None:
    """nobody's home in the busybox rootfs's /etc/passwd, for the init, an exec through
    the agent and one the slow way (a terminal)."""
    path = bundle(["sh", "-c", "echo $HOME; exec sleep 60"])
    edit_config(path, lambda d: d["process"].update(user={"uid": 65534, "gid": 65534}))
    container = Container.create("home", path, store=store, stdout=subprocess.PIPE)
    try:
        container.start()
        assert container.stdout is not None
        assert container.stdout.readline() == b"/nonexistent\n"
        by_agent = container.exec_run(["sh", "-c", "echo $HOME"], capture_output=True)
        assert by_agent.stdout == b"/nonexistent\n"
        slow = container.exec_run(["sh", "-c", "echo $HOME"], capture_output=True, user=65534)
        assert slow.stdout == b"/nonexistent\n"
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()


def test_a_user_may_reopen_its_stdio_and_terminal_but_host_files_keep_their_owner(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """As runc: the pipes (and a pty of the container's) are given to the process's user,
    so that ``> /dev/stderr`` works for the init, an exec through the agent and one the
    slow way; a host file given as stdout keeps its owner (runc would give it away)."""
    path = bundle(["sh", "-c", f"{REOPEN_STDIO}; exec sleep 60"])
    edit_config(path, lambda d: d["process"].update(user={"uid": 1000, "gid": 1000}))
    with reopened_stdio(store, path, "stdio", (None, 1000)) as container:  # agent, slow way
        tty = container.exec(["sh", "-c", "echo hi > /dev/tty"], tty=True, user=1000)
        assert tty.console is not None
        assert tty.wait(timeout=10) == 0
        assert tty.console.read(100).replace(b"\r", b"") == b"hi\n"
        tty.console.close()
        log = tmp_path / "log"
        with log.open("wb") as f:
            done = container.exec_run(["sh", "-c", "echo kept"], stdout=f)
        assert done.returncode == 0
        assert (log.read_bytes(), log.stat().st_uid) == (b"kept\n", os.getuid())
        fifo = tmp_path / "fifo"  # a named FIFO is a host file too
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            with open(fifo, "wb") as f:
                done = container.exec_run(["sh", "-c", "echo kept"], stdout=f)
            assert (done.returncode, os.read(reader, 100)) == (0, b"kept\n")
        finally:
            os.close(reader)
        assert fifo.stat().st_uid == os.getuid()


def test_a_missing_cwd_is_made_by_the_runtime_for_any_user(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: the runtime (root) makes it; the user could not (it failed with EACCES)."""
    path = bundle(["pwd"])
    edit_config(
        path, lambda d: d["process"].update(cwd="/srv/app", user={"uid": 1000, "gid": 1000})
    )
    assert run_output(store, path) == (0, "/srv/app\n")


def test_a_cwd_only_root_may_search_is_entered_for_any_user(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: the runtime enters the cwd as root before the user change (a mode 0700
    directory of root's failed with EACCES), for the init and an exec."""
    path = bundle(["sh", "-c", "pwd; exec sleep 60"])
    (path / "rootfs" / "priv").mkdir(mode=0o700)
    edit_config(path, lambda d: d["process"].update(cwd="/priv", user={"uid": 1000, "gid": 1000}))
    container = Container.create("priv", path, store=store, stdout=subprocess.PIPE)
    try:
        container.start()
        assert container.stdout is not None
        assert container.stdout.readline() == b"/priv\n"
        done = container.exec_run(["pwd"], capture_output=True)
        assert (done.returncode, done.stdout) == (0, b"/priv\n")
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()


def test_no_new_privileges_and_oom_score_adj(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sh", "-c", "grep NoNewPrivs /proc/self/status; cat /proc/self/oom_score_adj"])
    edit_config(path, lambda d: d["process"].update(oomScoreAdj=345, noNewPrivileges=True))
    code, out = run_output(store, path)
    assert (code, out.split()) == (0, ["NoNewPrivs:", "1", "345"])


@pytest.mark.parametrize(
    ("klass", "priority", "shown"),
    [("IOPRIO_CLASS_IDLE", 0, "idle"), ("IOPRIO_CLASS_BE", 6, "best-effort: prio 6")],
)
def test_io_priority(
    store: FileStore, bundle: BundleFactory, klass: str, priority: int, shown: str
) -> None:
    """As runc: ``process.ioPriority`` is the init's, and an exec'd process's (it was
    refused as unsupported)."""
    path = bundle(["sh", "-c", "ionice -p $$; exec sleep 60"])
    wanted = {"class": klass, "priority": priority}
    edit_config(path, lambda d: d["process"].update(ioPriority=wanted))
    container = Container.create("ioprio", path, store=store, stdout=subprocess.PIPE)
    try:
        container.start()
        assert container.stdout is not None
        assert container.stdout.readline().decode().strip() == shown
        done = container.exec_run(["sh", "-c", "ionice -p $$"], capture_output=True)
        assert done.stdout.decode().strip() == shown
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()


#: The policy and nice value of the shell that runs it (``/proc/self/sched``, ``stat``).
SHOW_SCHEDULER = "grep -E '^policy' /proc/$$/sched | tr -d ' '; cut -d' ' -f19 /proc/$$/stat"


@pytest.mark.parametrize(
    ("scheduler", "shown"),
    [
        ({"policy": "SCHED_BATCH", "nice": 5}, ["policy:3", "5"]),
        ({"policy": "SCHED_IDLE"}, ["policy:5", "0"]),
        # (A fork resets a negative nice, or a real-time policy, to the defaults.)
        (
            {"policy": "SCHED_BATCH", "nice": -5, "flags": ["SCHED_FLAG_RESET_ON_FORK"]},
            ["policy:3", "-5"],
        ),
    ],
)
def test_scheduler(
    store: FileStore, bundle: BundleFactory, scheduler: dict[str, Any], shown: list[str]
) -> None:
    """As runc: ``process.scheduler`` is the init's, and an exec'd process's, even one that
    resets on fork (which the exec agent, spawning by fork, could not give it). It was
    refused as unsupported."""
    path = bundle(["sh", "-c", f"{SHOW_SCHEDULER}; exec sleep 60"])
    edit_config(path, lambda d: d["process"].update(scheduler=scheduler))
    container = Container.create("sched", path, store=store, stdout=subprocess.PIPE)
    try:
        container.start()
        assert container.stdout is not None
        assert [container.stdout.readline().decode().strip() for _ in shown] == shown
        for _ in range(2):  # (the second through the agent, when one serves)
            done = container.exec_run(["sh", "-c", SHOW_SCHEDULER], capture_output=True)
            assert done.stdout.decode().split() == shown
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()


@pytest.mark.parametrize("userns", [False, True], ids=["", "userns"])
def test_time_offsets(store: FileStore, bundle: BundleFactory, userns: bool) -> None:
    """As runc: ``linux.timeOffsets`` move the clocks of a new time namespace, for the init
    and exec'd processes (they were refused as unsupported); also in a new user namespace
    (where the supervisor, no longer dumpable, could not write them)."""
    day = 86400
    path = bundle(["sh", "-c", "cut -d. -f1 /proc/uptime; exec sleep 60"])

    def offset(document: dict[str, Any]) -> None:
        document["linux"]["namespaces"].append({"type": "time"})
        document["linux"]["timeOffsets"] = {"boottime": {"secs": day}}
        if userns:
            with_userns(document)

    edit_config(path, offset)
    container = Container.create("timens", path, store=store, stdout=subprocess.PIPE)
    try:
        container.start()
        assert container.stdout is not None
        seen = [int(container.stdout.readline())]
        done = container.exec_run(["cut", "-d.", "-f1", "/proc/uptime"], capture_output=True)
        seen.append(int(done.stdout))
        host = float(Path("/proc/uptime").read_text().split()[0])
        assert all(host + day - 60 < uptime <= host + day for uptime in seen), (seen, host)
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()


def test_rlimit_nofile(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sh", "-c", "ulimit -n; ulimit -Hn"])
    edit_config(
        path,
        lambda d: d["process"].update(
            rlimits=[{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]
        ),
    )
    assert run_output(store, path) == (0, "123\n456\n")


def test_an_unlimited_rlimit_as_docker_writes_it(store: FileStore, bundle: BundleFactory) -> None:
    """RLIM_INFINITY is 2**64-1 in a spec (it overflowed Python's setrlimit)."""
    path = bundle(["sh", "-c", "ulimit -c; ulimit -Hc"])
    unlimited = {"type": "RLIMIT_CORE", "soft": 2**64 - 1, "hard": 2**64 - 1}
    edit_config(path, lambda d: d["process"].update(rlimits=[unlimited]))
    assert run_output(store, path) == (0, "unlimited\nunlimited\n")


def test_namespaces_joined_by_path_as_the_spec_says(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A hostname in a UTS namespace joined by path is set there, as runc does (it was
    dropped without a word); in the runtime's own, refused (safe payload: the host's own
    name). A mount namespace joined by path was not joined: refused, saying so. And
    ``kernel.hostname`` beside ``hostname`` is refused, as runc refuses it."""
    holder = subprocess.Popen(["unshare", "--uts", "sleep", "1000"])
    try:
        wait_until(
            lambda: os.readlink(f"/proc/{holder.pid}/ns/uts") != os.readlink("/proc/self/ns/uts")
        )

        def joining(pid: int, hostname: str) -> Callable[[dict[str, Any]], None]:
            def change(document: dict[str, Any]) -> None:
                for ns in document["linux"]["namespaces"]:
                    if ns["type"] == "uts":
                        ns["path"] = f"/proc/{pid}/ns/uts"
                document["hostname"] = hostname

            return change

        path = edit_config(bundle(["hostname"]), joining(holder.pid, "joined-host"))
        assert run_output(store, path) == (0, "joined-host\n")
        ours = edit_config(bundle(["hostname"]), joining(os.getpid(), socket.gethostname()))
        with pytest.raises(SpecError, match="hostname: not allowed in the runtime's own uts"):
            Container.create("own-uts", ours, store=store)
    finally:
        holder.kill()
        holder.wait()

    def join_mount(document: dict[str, Any]) -> None:
        for ns in document["linux"]["namespaces"]:
            if ns["type"] == "mount":
                ns["path"] = f"/proc/{os.getpid()}/ns/mnt"

    with pytest.raises(MissingFeatureError, match="joining a mount namespace by path"):
        Container.create("mnt-join", edit_config(bundle(["true"]), join_mount), store=store)
    both = edit_config(
        bundle(["true"]), lambda d: d["linux"].update(sysctl={"kernel.hostname": "other"})
    )
    with pytest.raises(SpecError, match="conflicts with the hostname field"):
        Container.create("both-names", both, store=store)
    assert Container.list(store=store) == []
