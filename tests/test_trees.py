"""The rootfs and every bind source reach the sandbox as detached mounts (``open_tree``)
opened on the host side (decision 30): the sandbox resolves no host path for them.

Two ways to show it. A path the sandbox cannot resolve (through our ``/proc/<pid>``: in
the sandbox, ``/proc`` is its own PID namespace's) is mounted all the same; and a rootfs
replaced at its path between the library's open and the init's mounts still gives the
tree that was opened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BundleFactory, needs_busybox, needs_root, wait_until
from test_launchers import _ahead_of, _comm, _init_of

from sandboxrt import PIPE, STDOUT, Config, Container, FileStore, Pod, SubprocessLauncher
from sandboxrt._core.protocol import InitPlan, MountPlan, SandboxPlan, encode
from sandboxrt._core.spec_default import default_spec
from sandboxrt._os import mounts
from sandboxrt._proc import warm
from sandboxrt._proc.launcher import ForkServerLauncher, LaunchedProcess, Launcher
from sandboxrt.bundle import make_bundle

pytestmark = [needs_root, needs_busybox]


def unreachable(path: Path) -> str:
    """``path`` through our own ``/proc/<pid>/root``: the same directory on the host, a
    path that does not exist in a sandbox (its ``/proc`` has no such pid)."""
    return f"/proc/{os.getpid()}/root{path}"


def add_binds(path: Path, binds: list[tuple[str, str]]) -> None:
    doc = json.loads((path / "config.json").read_text())
    doc["mounts"] += [
        {"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro"]}
        for src, dst in binds
    ]
    (path / "config.json").write_text(json.dumps(doc))


def _bundle_out_of_reach(bundle: BundleFactory, tmp_path: Path, marker: str) -> Path:
    """A bundle that prints its /marker (``marker``), a bound file (``bound``) and our
    tasks: its binds are sources the sandbox cannot reach by path."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("bound\n")
    path = bundle(["sh", "-c", "cat /marker /data/f; ls /hostproc"])
    (path / "rootfs/marker").write_text(marker + "\n")
    add_binds(path, [(unreachable(source), "/data"), (f"/proc/{os.getpid()}/task", "/hostproc")])
    return path


def output(container: Container) -> str:
    """Start ``container``, read its output, wait; the output (exit code 0 asserted)."""
    try:
        container.start()
        assert container.stdout is not None
        out = container.stdout.read().decode()
        assert container.wait(timeout=30) == 0, out
        return out
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()


@pytest.fixture
def fork_server() -> Iterator[ForkServerLauncher]:
    launcher = ForkServerLauncher(build_ahead=True)
    try:
        yield launcher
    finally:
        launcher.close()


def test_open_host_tree_is_the_file_asked_for(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    tree = mounts.open_host_tree(str(tmp_path / "link"))  # the symlink resolved here
    try:
        st, opened = real.stat(), os.fstat(tree)
        assert (opened.st_dev, opened.st_ino) == (st.st_dev, st.st_ino)
    finally:
        os.close(tree)
    with pytest.raises(FileNotFoundError):
        mounts.open_host_tree(str(tmp_path / "missing"))


def test_plans_number_their_trees() -> None:
    bind = MountPlan("/d", "none", "/srv/d", bind=True, tree=1)
    plan = InitPlan(args=["true"], container_id="a", rootfs="/b/rootfs", rootfs_tree=True)
    plan = InitPlan(**{**plan.__dict__, "mounts": [MountPlan("/t", "tmpfs", "tmpfs"), bind]})
    assert plan.tree_sources() == [("/b/rootfs", True), ("/srv/d", False)]
    by_path = InitPlan(args=["true"], container_id="a", rootfs="/b/rootfs")
    assert by_path.tree_sources() == []
    # A root is built ahead only from trees (the fork server opens them).
    sandbox = SandboxPlan(
        "s",
        "/r",
        "/r/ctl",
        "/r/exit",
        [[k, ""] for k in ["pid", "network", "ipc", "uts", "mount"]],
        plan,
    )
    assert warm.ahead_plan(encode(sandbox)) is not None
    assert warm.ahead_plan(encode(SandboxPlan(**{**sandbox.__dict__, "init": by_path}))) is None


@pytest.mark.parametrize("launcher", ["subprocess", "forkserver"])
def test_a_rootfs_the_sandbox_cannot_reach_by_path_is_its_root(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, launcher: str
) -> None:
    path = _bundle_out_of_reach(bundle, tmp_path, "rootfs")
    chosen: Launcher = (
        SubprocessLauncher() if launcher == "subprocess" else ForkServerLauncher(build_ahead=False)
    )
    try:
        c = Container.create(
            "unreach", unreachable(path), store=store, launcher=chosen, stdout=PIPE, stderr=STDOUT
        )
        out = output(c).split()
    finally:
        if isinstance(chosen, ForkServerLauncher):
            chosen.close()
    assert out[:2] == ["rootfs", "bound"] and str(os.getpid()) in out


class _SwapOnLaunch:
    """A launcher that replaces the bundle's rootfs at its path just before it launches:
    after the library opened the rootfs's tree, before the init mounts anything."""

    def __init__(self, inner: Launcher, swap: Callable[[], None]) -> None:
        self.inner, self.swap = inner, swap

    def launch(self, *, bootstrap_fd: int, log_fd: int, warm: bool = False) -> LaunchedProcess:
        self.swap()
        return self.inner.launch(bootstrap_fd=bootstrap_fd, log_fd=log_fd, warm=warm)


@pytest.mark.parametrize("launcher", ["subprocess", "forkserver"])
def test_a_rootfs_replaced_after_it_was_opened_is_not_seen(
    store: FileStore, bundle: BundleFactory, launcher: str
) -> None:
    path = bundle(["cat", "/marker"])
    (path / "rootfs/marker").write_text("opened\n")
    decoy = bundle(["true"])
    (decoy / "rootfs/marker").write_text("decoy\n")

    def swap() -> None:
        os.rename(path / "rootfs", path / "rootfs.opened")
        os.rename(decoy / "rootfs", path / "rootfs")

    inner: Launcher = (
        SubprocessLauncher() if launcher == "subprocess" else ForkServerLauncher(build_ahead=False)
    )
    try:
        c = Container.create(
            "swapped", path, store=store, launcher=_SwapOnLaunch(inner, swap), stdout=PIPE
        )
        assert output(c) == "opened\n"
    finally:
        if isinstance(inner, ForkServerLauncher):
            inner.close()
    assert (path / "rootfs/marker").read_text() == "decoy\n"  # the path did change


def test_a_symlinked_rootfs_path_is_resolved_on_the_host(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    path = bundle(["cat", "/marker"])
    (path / "rootfs/marker").write_text("through the link\n")
    os.rename(path / "rootfs", tmp_path / "elsewhere")
    (path / "rootfs").symlink_to(tmp_path / "elsewhere")
    c = Container.create("symroot", path, store=store, stdout=PIPE)
    assert output(c) == "through the link\n"


def test_an_overlay_root_stacks_on_the_rootfs_tree(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sh", "-c", "echo changed > /marker; cat /marker"])
    (path / "rootfs/marker").write_text("lower\n")
    c = Container.create(
        "ovtree", unreachable(path), store=store, config=Config(overlay=True), stdout=PIPE
    )
    assert output(c) == "changed\n"
    assert (path / "rootfs/marker").read_text() == "lower\n"


def test_a_subcontainer_gets_its_rootfs_and_binds_as_trees(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    member = _bundle_out_of_reach(bundle, tmp_path, "member")
    pod = Pod.create("treepod", bundle(["sleep", "1000"]), store=store)
    try:
        pod.root.start()
        c = pod.add_container("treesub", unreachable(member), stdout=PIPE, stderr=STDOUT)
        out = output(c).split()
    finally:
        pod.destroy()
    assert out[:2] == ["member", "bound"] and str(os.getpid()) in out


@pytest.mark.parametrize("kind", ["root", "subcontainer"])
def test_more_trees_than_one_message_carries(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, kind: str
) -> None:
    """20 binds (with the rootfs and stdio, 24 fds): the rest follow the plan; the last
    bind is one the sandbox cannot reach by path."""
    binds = []
    for i in range(19):
        src = tmp_path / f"s{i}"
        src.mkdir()
        (src / "n").write_text(str(i))
        binds.append((str(src), f"/m{i}"))
    binds.append((f"/proc/{os.getpid()}/task", "/hostproc"))
    path = bundle(["sh", "-c", "cat /m0/n /m18/n; echo; ls /hostproc"])
    add_binds(path, binds)
    if kind == "root":
        c = Container.create("many", path, store=store, stdout=PIPE)
        out = output(c).split()
    else:
        pod = Pod.create("manypod", bundle(["sleep", "1000"]), store=store)
        try:
            pod.root.start()
            out = output(pod.add_container("manysub", path, stdout=PIPE)).split()
        finally:
            pod.destroy()
    assert out[0] == "018" and str(os.getpid()) in out


def test_a_root_with_bind_mounts_is_built_ahead_from_trees(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, fork_server: ForkServerLauncher
) -> None:
    """The fork server opens the trees of the last plan's rootfs and binds for the next
    warm sandbox, which builds that root ahead from them; the claim serves it when its
    own trees are copies of the same files."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "marker").write_text("bound\n")
    path = bundle(["cat", "/data/marker"])
    add_binds(path, [(str(source), "/data")])
    ahead = _ahead_of(fork_server, store, path)
    c = Container.create("ahead3", path, store=store, launcher=fork_server, stdout=PIPE)
    try:
        assert _init_of(c) == ahead
        assert _comm(ahead) == "sandboxrt-init"

        # The trees the claim came with, unused, were parked beneath the supervisor's /proc
        # (closing them would wait for an RCU grace period in the library's create), and
        # went with the host's mounts when it confined itself (decision 33).
        def seen() -> list[str]:
            with open(f"/proc/{c.state().pid}/mountinfo") as f:
                return sorted(line.split()[4] for line in f)

        wait_until(lambda: seen() == ["/", "/proc"])
    except BaseException:
        c.destroy()
        raise
    assert output(c) == "bound\n"
    # Another directory at the bind source's path: not served from ahead.
    ahead = _ahead_of(fork_server, store, path)
    shutil.move(source, tmp_path / "old")
    source.mkdir()
    (source / "marker").write_text("new\n")
    c = Container.create("ahead4", path, store=store, launcher=fork_server, stdout=PIPE)
    try:
        assert _init_of(c) != ahead
    except BaseException:
        c.destroy()
        raise
    assert output(c) == "new\n"


@pytest.mark.parametrize("overlay", [False, True])
def test_the_old_root_is_gone_after_the_pivot(
    store: FileStore, bundle: BundleFactory, overlay: bool
) -> None:
    """One mount at ``/``: the rootfs's tree (or the overlay on it); none of the host's."""
    path = bundle(["cat", "/proc/self/mountinfo"])
    c = Container.create("pivoted", path, store=store, config=Config(overlay=overlay), stdout=PIPE)
    lines = [line.split() for line in output(c).splitlines()]
    at_root = [fields for fields in lines if fields[4] == "/"]
    assert len(at_root) == 1, lines
    fstype = at_root[0][at_root[0].index("-") + 1]
    if overlay:
        assert fstype == "overlay"
    else:
        assert str(path / "rootfs").endswith(at_root[0][3])  # a bind of the rootfs
    spec_mounts = {m.destination for m in default_spec().mounts}
    assert {fields[4] for fields in lines} <= {"/"} | spec_mounts | {
        fields[4] for fields in lines if fields[4].startswith(("/proc/", "/sys/"))
    }


def test_a_root_built_ahead_is_matched_by_trees_not_paths(
    store: FileStore, bundle: BundleFactory, fork_server: ForkServerLauncher
) -> None:
    """The claim's trees, opened by the library before the rootfs was replaced at its path,
    are those the root was built ahead from: it serves, and the container sees them."""
    path = bundle(["cat", "/marker"])
    (path / "rootfs/marker").write_text("opened\n")
    decoy = bundle(["true"])
    (decoy / "rootfs/marker").write_text("decoy\n")
    ahead = _ahead_of(fork_server, store, path)

    def swap() -> None:
        os.rename(path / "rootfs", path / "rootfs.opened")
        os.rename(decoy / "rootfs", path / "rootfs")

    launcher = _SwapOnLaunch(fork_server, swap)
    c = Container.create("aheadswap", path, store=store, launcher=launcher, stdout=PIPE)
    try:
        assert _init_of(c) == ahead
    except BaseException:
        c.destroy()
        raise
    assert output(c) == "opened\n"


def test_create_container_hooks_see_the_tree_at_the_rootfs_path(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """A plan with createContainer hooks gets its rootfs as a tree too; the root built in it
    is moved onto the bundle's rootfs path for the hooks (host programs), even where that
    path names another directory by then."""
    path = bundle(["cat", "/marker"])
    (path / "rootfs/marker").write_text("opened\n")
    decoy = bundle(["true"])
    (decoy / "rootfs/marker").write_text("decoy\n")
    seen = tmp_path / "seen"
    doc = json.loads((path / "config.json").read_text())
    doc["hooks"] = {
        "createContainer": [
            {"path": "/bin/sh", "args": ["sh", "-c", f"cat {path}/rootfs/marker > {seen}"]}
        ]
    }
    (path / "config.json").write_text(json.dumps(doc))

    def swap() -> None:
        os.rename(path / "rootfs", path / "rootfs.opened")
        os.rename(decoy / "rootfs", path / "rootfs")

    launcher = _SwapOnLaunch(SubprocessLauncher(), swap)
    c = Container.create("hooktree", path, store=store, launcher=launcher, stdout=PIPE)
    assert output(c) == "opened\n"
    assert seen.read_text() == "opened\n"
    assert (path / "rootfs/marker").read_text() == "decoy\n"


@pytest.mark.parametrize("how", ["create", "run"])
def test_mounts_in_a_root_on_a_shared_host_mount_stay_in_the_container(
    store: FileStore, tmp_path: Path, how: str
) -> None:
    """A detached copy of a shared mount is its peer: the rootfs and a bind source on a
    shared host mount (what `/` is on most hosts; not here) must become private in the
    container before anything is mounted there, or /proc, /dev... would show up on the
    host, under the bundle."""
    shared = tmp_path / "shared"
    shared.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(shared)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        path = shared / "bundle"
        make_bundle(path, ["sh", "-c", "cat /data/f"], rootfs="busybox")
        (shared / "src").mkdir()
        (shared / "src" / "f").write_text("bound\n")
        add_binds(path, [(str(shared / "src"), "/data")])
        (path / "rootfs" / "data").mkdir(exist_ok=True)
        before = _mounts_under(shared)
        if how == "run":
            assert Container.run("shared", path, store=store, stdout=subprocess.DEVNULL) == 0
        else:
            c = Container.create("shared", path, store=store, stdout=PIPE, stderr=STDOUT)
            try:
                c.start()
                assert c.stdout is not None
                assert c.stdout.read() == b"bound\n"
                assert c.wait(timeout=30) == 0
                assert _mounts_under(shared) == before  # while the container is there
            finally:
                if c.stdout is not None:
                    c.stdout.close()
                c.destroy()
        assert _mounts_under(shared) == before
    finally:
        subprocess.run(["umount", "-l", str(shared)], check=False)


def _mounts_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(
            line.split()[4] for line in f if line.split()[4].startswith(str(directory) + "/")
        )
