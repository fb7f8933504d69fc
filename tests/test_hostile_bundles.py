"""Hostile bundles: symlinks and fake device nodes in the rootfs must never reach the host.

Each container test plants a canary outside the rootfs (in ``tmp_path``) and
checks afterwards that it was neither modified, read from inside, nor
mounted over; the autouse leak check of conftest also fails any test that
changes the host's mount table.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BundleFactory, edit_config, needs_busybox, needs_root, run_output

from sandboxrt import Container, ExecError, FileStore
from sandboxrt._os import beneath
from sandboxrt.bundle import BUSYBOX, make_bundle
from sandboxrt.errors import InitError, SandboxrtError

SECRET = "host-secret-" + uuid.uuid4().hex


# -- helpers ---------------------------------------------------------------------------------


def create_fails(store: FileStore, bundle: Path) -> str:
    """Creating the container must fail (cleanly: nothing left running); the message."""
    with pytest.raises(SandboxrtError) as info:
        run_output(store, bundle)
    assert isinstance(info.value, InitError), info.value
    return str(info.value)


def without_dev_mounts(document: dict[str, Any]) -> None:
    """No tmpfs on /dev: the rootfs's own /dev (and its /dev/null) is what the container gets."""
    document["mounts"] = [m for m in document["mounts"] if not m["destination"].startswith("/dev")]


def fingerprint(path: Path) -> tuple[str, int, int, int]:
    """Content hash, mode, mtime and device of a host file: any change shows."""
    st = path.lstat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mode, st.st_mtime_ns, st.st_dev


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A host file outside every rootfs; checked untouched after the test."""
    path = tmp_path / "host" / "shadow-canary"
    path.parent.mkdir()
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    before = fingerprint(path)
    listing = sorted(os.listdir(path.parent))
    yield path
    assert fingerprint(path) == before, "the host canary was modified"
    assert sorted(os.listdir(path.parent)) == listing, "something was created next to it"


# -- unit: resolution beneath a root (no privileges needed) ---------------------------------


def walk(root: Path, path: str, **kwargs: Any) -> str:
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        fd, resolved = beneath.walk(root_fd, path, **kwargs)
    finally:
        os.close(root_fd)
    try:
        expected = os.path.normpath(os.path.realpath(root) + resolved)
        assert beneath.fd_path(fd) == expected
    finally:
        os.close(fd)
    return resolved


def test_walk_resolves_symlinks_as_the_container_would(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "real").mkdir(parents=True)
    (root / "abs").symlink_to("/etc/real")
    (root / "rel").symlink_to("etc/../etc/real")
    (root / "up").symlink_to("../../../../../etc")
    (root / "etc" / "real" / "back").symlink_to("..")
    assert walk(root, "/abs") == "/etc/real"
    assert walk(root, "/rel/") == "/etc/real"
    assert walk(root, "/up/real") == "/etc/real"
    assert walk(root, "/etc/../../../etc/real/back/real") == "/etc/real"
    assert walk(root, "../..") == "/"
    assert walk(root, "/abs", follow=False) == "/abs"


def test_walk_never_follows_magic_links(tmp_path: Path) -> None:
    """The kernel would follow ``/proc/self/root`` to the host's /; _walk resolves its text."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "magic").symlink_to("/proc/self/root")
    with pytest.raises(FileNotFoundError):  # the root has no /proc of its own
        walk(root, "/magic/etc/passwd")
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "root").symlink_to("/")
    assert walk(root, "/magic") == "/"


def test_walk_creates_beneath_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "data").symlink_to(outside)
    assert walk(root, "/data/sub/file", create="file") == f"{outside}/sub/file"
    assert (root / str(outside).lstrip("/") / "sub" / "file").is_file()
    assert list(outside.iterdir()) == []


def test_walk_loops_and_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("/a")
    (root / "file").write_text("x")
    with pytest.raises(OSError) as info:
        walk(root, "/a")
    assert info.value.errno == errno.ELOOP
    with pytest.raises(NotADirectoryError):
        walk(root, "/file/x")


# -- rootfs symlinks under spec mounts -------------------------------------------------------


@needs_root
@needs_busybox
@pytest.mark.parametrize("target", ["/", "../../..", "/proc/1/root"])
def test_proc_symlink_to_host_root_fails_cleanly(
    store: FileStore, bundle: BundleFactory, canary: Path, target: str
) -> None:
    path = bundle(["true"])
    (path / "rootfs" / "proc").rmdir()
    (path / "rootfs" / "proc").symlink_to(target)
    message = create_fails(store, path)
    assert "proc must be mounted on an ordinary directory" in message


@needs_root
@needs_busybox
def test_sys_symlink_fails_cleanly(store: FileStore, bundle: BundleFactory, canary: Path) -> None:
    path = bundle(["true"])
    (path / "rootfs" / "sys").rmdir()
    (path / "rootfs" / "sys").symlink_to(canary.parent)
    assert "sysfs must be mounted on an ordinary directory" in create_fails(store, path)
    assert list(canary.parent.iterdir()) == [canary]


@needs_root
@needs_busybox
def test_dotdot_destination_stays_in_the_rootfs(store: FileStore, bundle: BundleFactory) -> None:
    name = f"sandboxrt-escape-{uuid.uuid4().hex[:12]}"
    path = bundle(["sh", "-c", f"grep ' /tmp/{name} ' /proc/mounts"])
    mount = {"destination": f"/etc/../../tmp/{name}", "type": "tmpfs", "source": "tmpfs"}
    edit_config(path, lambda d: d["mounts"].append(mount))
    code, out = run_output(store, path)
    assert code == 0, out
    assert out.split()[2] == "tmpfs"
    assert not os.path.lexists(f"/tmp/{name}")
    assert (path / "rootfs" / "tmp" / name).is_dir()


@needs_root
@needs_busybox
@pytest.mark.parametrize("style", ["absolute", "relative", "magic"])
def test_bind_through_symlinked_directory_lands_in_the_rootfs(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, style: str
) -> None:
    hostdir = tmp_path / "hostdir"
    source = tmp_path / "source"
    hostdir.mkdir()
    source.mkdir()
    path = bundle(["sh", "-c", "echo hi > /data/sub/file; ls /data"])
    rootfs = path / "rootfs"
    link = {
        "absolute": str(hostdir),
        "relative": os.path.relpath(hostdir, rootfs),
        "magic": f"/proc/1/root{hostdir}",
    }[style]
    (rootfs / "data").symlink_to(link)
    bind = {"destination": "/data/sub", "type": "bind", "source": str(source), "options": ["bind"]}
    edit_config(path, lambda d: d["mounts"].append(bind))
    code, out = run_output(store, path)
    assert list(hostdir.iterdir()) == [], "the mount point was created on the host"
    if style == "magic":  # after the pivot the kernel follows it, and /proc/1 is off-limits
        assert code == 1, out
        assert "/data: Permission denied" in out
        assert list(source.iterdir()) == []
        return
    assert code == 0, out
    assert out.split() == ["sub"]
    assert (source / "file").read_text() == "hi\n"


@needs_root
@needs_busybox
def test_swapping_a_mount_point_for_a_symlink_never_reaches_the_host(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """A host-side racer flips ``rootfs/inner`` between a directory and a symlink to the host."""
    hostdir = tmp_path / "hostdir"
    hostdir.mkdir()
    path = bundle(["true"])
    rootfs = path / "rootfs"
    inner, parked = rootfs / "inner", rootfs / "parked"
    inner.mkdir()
    mount = {"destination": "/inner/sub", "type": "tmpfs", "source": "tmpfs"}
    edit_config(path, lambda d: d["mounts"].append(mount))
    stop = threading.Event()

    def racer() -> None:
        while not stop.is_set():  # the container's init may create ``inner`` meanwhile
            with contextlib.suppress(OSError):
                os.rename(inner, parked)
            with contextlib.suppress(OSError):
                inner.symlink_to(hostdir)
            with contextlib.suppress(OSError):
                inner.unlink()
            with contextlib.suppress(OSError):
                os.rename(parked, inner)

    thread = threading.Thread(target=racer)
    thread.start()
    outcomes: list[int | str] = []
    try:
        for i in range(12):
            try:
                outcomes.append(run_output(store, path, cid=f"race{i}")[0])
            except SandboxrtError as exc:  # a refused creation is a safe outcome too
                outcomes.append(str(exc))
    finally:
        stop.set()
        thread.join()
    assert list(hostdir.iterdir()) == [], outcomes
    # Each run either worked or was refused with an error naming its container (the racer
    # may have moved ``inner`` away at that moment): both are safe.
    assert all(o == 0 or f'container "race{i}"' in str(o) for i, o in enumerate(outcomes)), outcomes


# -- masked and read-only paths --------------------------------------------------------------


@needs_root
@needs_busybox
@pytest.mark.parametrize("via", ["file", "dir", "magic"])
def test_masked_symlink_to_a_host_file(
    store: FileStore, bundle: BundleFactory, canary: Path, via: str
) -> None:
    path = bundle(["sh", "-c", "cat /etc/secret /etc/x/shadow-canary 2>&1; true"])
    etc = path / "rootfs" / "etc"
    if via == "file":
        (etc / "secret").symlink_to(canary)
        masked = ["/etc/secret"]
    elif via == "dir":
        (etc / "x").symlink_to(canary.parent)
        masked = ["/etc/x/shadow-canary"]
    else:
        (etc / "x").symlink_to(f"/proc/1/root{canary.parent}")
        masked = ["/etc/x/shadow-canary"]
    edit_config(path, lambda d: d["linux"].update(maskedPaths=masked, readonlyPaths=masked))
    code, out = run_output(store, path)
    assert code == 0, out
    assert SECRET not in out


@needs_root
@needs_busybox
@pytest.mark.parametrize("fake", ["regular", "core_pattern", "host_file", "zero"])
def test_fake_dev_null_refuses_masking(
    store: FileStore, bundle: BundleFactory, canary: Path, fake: str
) -> None:
    """CVE-2025-31133: with no tmpfs on /dev, the rootfs's /dev/null is the mask source
    (a name the rootfs has is left as it is, as runc leaves it)."""
    path = edit_config(bundle(["true"]), without_dev_mounts)
    null = path / "rootfs" / "dev" / "null"
    if fake == "regular":
        null.write_text("not a device\n")
    elif fake == "core_pattern":
        null.symlink_to("/proc/sys/kernel/core_pattern")
    elif fake == "host_file":
        null.symlink_to(canary)
    elif fake == "zero":
        os.mknod(null, 0o20666, os.makedev(1, 5))
    message = create_fails(store, path)
    assert "/dev/null is not the null device 1:3" in message


@needs_root
@needs_busybox
@pytest.mark.parametrize("how", ["spelled", "symlink"])
def test_a_host_dev_reached_another_way_gets_no_defaults(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, how: str
) -> None:
    """A bind of a host /dev (a stand-in here) at "//dev", or at a mount point the
    rootfs's /dev is a symlink to: nothing is written into it, its ptmx stays."""
    host_dev = tmp_path / "host-dev"
    host_dev.mkdir()
    (host_dev / "ptmx").write_text("the host's\n")
    path = bundle(["true"])

    def change(document: dict[str, Any]) -> None:
        without_dev_mounts(document)
        where = "//dev" if how == "spelled" else "/mnt/devices"
        bind = {"destination": where, "type": "bind", "source": str(host_dev)}
        document["mounts"].append({**bind, "options": ["rbind"]})
        document["linux"]["maskedPaths"] = []

    edit_config(path, change)
    if how == "symlink":
        (path / "rootfs" / "dev").rmdir()
        (path / "rootfs" / "mnt" / "devices").mkdir(parents=True)
        (path / "rootfs" / "dev").symlink_to("mnt/devices")
    assert run_output(store, path) == (0, "")
    assert sorted(os.listdir(host_dev)) == ["ptmx"]
    assert (host_dev / "ptmx").read_text() == "the host's\n"


@needs_root
@needs_busybox
def test_a_rootfs_dev_gets_the_default_nodes_without_a_dev_mount(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: no tmpfs on /dev, the rootfs's own /dev gets the missing default nodes and
    symlinks (the masks need /dev/null: the container failed to start)."""
    path = edit_config(
        bundle(["sh", "-c", "stat -c '%t:%T' /dev/null; readlink /dev/fd"]), without_dev_mounts
    )
    assert run_output(store, path) == (0, "1:3\n/proc/self/fd\n")
    assert (path / "rootfs" / "dev" / "null").is_char_device()


@needs_root
@needs_busybox
def test_real_dev_null_in_the_rootfs_masks(store: FileStore, bundle: BundleFactory) -> None:
    """The control: a genuine 1:3 node in the rootfs's own /dev is used as the mask."""
    path = edit_config(bundle(["stat", "-c", "%F %t:%T", "/proc/keys"]), without_dev_mounts)
    os.mknod(path / "rootfs" / "dev" / "null", 0o20666, os.makedev(1, 3))
    assert run_output(store, path) == (0, "character special file 1:3\n")


# -- devices, cwd, executable ----------------------------------------------------------------


@needs_root
@needs_busybox
@pytest.mark.parametrize("where", ["dev_dir", "node"])
def test_device_node_symlink_does_not_escape(
    store: FileStore, bundle: BundleFactory, canary: Path, where: str
) -> None:
    path = edit_config(bundle(["ls", "-l", "/dev/escape"]), without_dev_mounts)
    rootfs = path / "rootfs"
    if where == "dev_dir":
        (rootfs / "dev").rmdir()
        (rootfs / "dev").symlink_to(canary.parent)
    else:
        (rootfs / "dev" / "escape").symlink_to(canary)
    device = {"path": "/dev/escape", "type": "c", "major": 1, "minor": 5, "fileMode": 0o666}

    def change(document: dict[str, Any]) -> None:
        document["linux"]["devices"] = [device]
        document["linux"]["maskedPaths"] = []

    edit_config(path, change)
    code, out = run_output(store, path)
    assert code == 0, out
    if where == "dev_dir":  # created in the rootfs's copy of the canary's directory
        assert out.startswith("crw-rw-rw-"), out
        assert (rootfs / str(canary.parent).lstrip("/") / "escape").is_char_device()
    else:  # the name is taken: left as it is (as runc), neither followed nor replaced
        assert out.startswith("lrwxrwxrwx"), out
        assert (rootfs / "dev" / "escape").is_symlink()


@needs_root
@needs_busybox
def test_a_bind_mounted_dev_is_left_as_it_is(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """As runc: a /dev bound from the host (a stand-in directory here) gets no default
    node, symlink or spec device written into it."""
    host_dev = tmp_path / "host-dev"
    host_dev.mkdir()
    (host_dev / "null").write_text("a host file, not a node\n")
    device = {"path": "/dev/extra", "type": "c", "major": 1, "minor": 5, "fileMode": 0o666}

    def bind_dev(document: dict[str, Any]) -> None:
        without_dev_mounts(document)
        bind = {"destination": "/dev", "type": "bind", "source": str(host_dev)}
        document["mounts"].append({**bind, "options": ["rbind"]})
        document["linux"]["devices"] = [device]
        document["linux"]["maskedPaths"] = []  # (masks are binds of /dev/null)

    path = edit_config(bundle(["ls", "/dev"]), bind_dev)
    assert run_output(store, path) == (0, "null\n")
    assert sorted(os.listdir(host_dev)) == ["null"]
    assert (host_dev / "null").read_text() == "a host file, not a node\n"


@needs_root
@needs_busybox
def test_a_spec_device_keeps_a_file_the_rootfs_has_at_its_path(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: a node whose name is taken in the bundle's rootfs is not made (the
    bundle's file is not replaced)."""
    path = edit_config(bundle(["cat", "/etc/important"]), without_dev_mounts)
    (path / "rootfs" / "etc" / "important").write_text("precious\n")
    device = {"path": "/etc/important", "type": "c", "major": 1, "minor": 5, "fileMode": 0o666}
    edit_config(path, lambda d: d["linux"].update(devices=[device], maskedPaths=[]))
    assert run_output(store, path) == (0, "precious\n")
    assert (path / "rootfs" / "etc" / "important").read_text() == "precious\n"


@needs_root
@needs_busybox
@pytest.mark.parametrize(
    ("cwd", "link"),
    [
        ("/work", "/"),
        ("/work", "/proc/1/root"),
        ("/proc/1/root", None),
        ("/proc/1/cwd", None),
        ("/proc/self/root", None),
    ],
)
def test_cwd_cannot_reach_host_files(
    store: FileStore, bundle: BundleFactory, canary: Path, cwd: str, link: str | None
) -> None:
    relative = str(canary).lstrip("/")
    path = bundle(["sh", "-c", f"ls; cat {relative} 2>&1; cat ../../{relative} 2>&1; true"])
    if link is not None:
        (path / "rootfs" / "work").symlink_to(link)
    edit_config(path, lambda d: d["process"].update(cwd=cwd))
    code, out = run_output(store, path)
    assert code == 0, out
    assert SECRET not in out
    assert "No such file or directory" in out


@needs_root
@needs_busybox
def test_executable_through_proc_1_root_is_not_the_host_file(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    host_bin = tmp_path / "hostbin" / "host-only-sh"
    host_bin.parent.mkdir()
    host_bin.write_bytes(Path(BUSYBOX).read_bytes())
    host_bin.chmod(0o755)
    path = bundle([f"/proc/1/root{host_bin}", "sh", "-c", "echo escaped"])
    assert "does not exist" in create_fails(store, path)


@needs_root
@needs_busybox
@pytest.mark.parametrize("setting", ["oomScoreAdj", "sysctl"])
def test_a_bind_led_into_proc_never_takes_the_runtime_s_writes(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, setting: str
) -> None:
    """A rootfs symlink (``/vol -> /proc/self``) that would put a bind of a host file over
    the file the runtime writes a setting to: refused, as runc refuses binds inside /proc;
    the host file keeps its content."""
    host_file = tmp_path / "volume-file"
    host_file.write_text("0\n")
    path = bundle(["true"])
    link, target, name = {
        "oomScoreAdj": ("/proc/self", "/vol/oom_score_adj", "oom_score_adj"),
        "sysctl": ("/proc/sys/net/ipv4", "/vol/ip_forward", "ip_forward"),
    }[setting]

    def change(document: dict[str, Any]) -> None:
        bind = {"destination": target, "type": "bind", "source": str(host_file)}
        document["mounts"].append({**bind, "options": ["bind"]})
        if setting == "oomScoreAdj":
            document["process"]["oomScoreAdj"] = 500
        else:
            document["linux"]["sysctl"] = {"net.ipv4.ip_forward": "0"}

    edit_config(path, change)
    (path / "rootfs" / "vol").symlink_to(link)
    message = create_fails(store, path)
    assert f"mount destination {target} is inside /proc" in message, message
    assert name in message
    assert host_file.read_text() == "0\n"


@needs_root
@needs_busybox
def test_a_setting_is_written_to_procfs_only(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """Without a procfs at /proc (a rootfs whose /proc leads to a bound host directory), a
    sysctl is not written to the file found there: the creation fails."""
    volume = tmp_path / "volume"
    (volume / "sys" / "net" / "ipv4").mkdir(parents=True)
    (volume / "sys" / "net" / "ipv4" / "ip_forward").write_text("1\n")
    path = bundle(["true"])

    def change(document: dict[str, Any]) -> None:
        document["mounts"] = [m for m in document["mounts"] if m["type"] != "proc"]
        bind = {"destination": "/data", "type": "bind", "source": str(volume)}
        document["mounts"].append({**bind, "options": ["rbind"]})
        document["linux"]["sysctl"] = {"net.ipv4.ip_forward": "0"}
        document["linux"]["maskedPaths"] = []
        document["linux"]["readonlyPaths"] = []

    edit_config(path, change)
    (path / "rootfs" / "proc").rmdir()
    (path / "rootfs" / "proc").symlink_to("/data")
    message = create_fails(store, path)
    assert "ip_forward is not a file of procfs" in message, message
    assert (volume / "sys" / "net" / "ipv4" / "ip_forward").read_text() == "1\n"


@needs_busybox
@pytest.mark.parametrize("planted", ["files", "directories"])
def test_making_a_bundle_again_never_writes_through_a_container_s_symlinks(
    tmp_path: Path, planted: str
) -> None:
    """A container may have swapped its rootfs's files (or directories) for symlinks to
    host paths; ``make_bundle`` on the same path replaces them and leaves the host alone."""
    host = tmp_path / "host"
    host.mkdir()
    host.chmod(0o700)
    for name in ("hostname", "passwd", "group", "busybox"):
        (host / name).write_text("the host's\n")
    path = tmp_path / "bundle"
    make_bundle(path, ["true"], rootfs="busybox")
    rootfs = path / "rootfs"
    if planted == "files":
        for name in ("hostname", "passwd", "group"):
            (rootfs / "etc" / name).unlink()
            (rootfs / "etc" / name).symlink_to(host / name)
        (rootfs / "bin" / "busybox").unlink()
        (rootfs / "bin" / "busybox").symlink_to(host / "busybox")
    else:
        for name in ("etc", "tmp", "bin"):
            shutil.rmtree(rootfs / name)
            (rootfs / name).symlink_to(host)
    make_bundle(path, ["true"], rootfs="busybox")
    for name in ("hostname", "passwd", "group", "busybox"):
        assert (host / name).read_text() == "the host's\n"
    assert sorted(os.listdir(host)) == ["busybox", "group", "hostname", "passwd"]
    assert stat.S_IMODE(host.stat().st_mode) == 0o700
    assert not (rootfs / "etc").is_symlink() and not (rootfs / "tmp").is_symlink()
    assert (rootfs / "etc" / "hostname").read_text() == "sandboxrt\n"
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    assert (rootfs / "bin" / "busybox").read_bytes() == Path(BUSYBOX).read_bytes()
    assert os.readlink(rootfs / "bin" / "sh") == "busybox"


@needs_root
@needs_busybox
def test_users_are_never_looked_up_in_a_file_of_the_kernel(
    store: FileStore, bundle: BundleFactory
) -> None:
    """``/etc/passwd`` made a symlink into the container's procfs (``/proc/kmsg`` would hang
    the lookup, made with the runtime's privileges, and drain the host's kernel log) is
    refused, not read; the init still starts."""
    path = bundle(["sh", "-c", "echo $HOME; sleep 10"])
    (path / "rootfs" / "etc" / "passwd").unlink()
    (path / "rootfs" / "etc" / "passwd").symlink_to("/proc/self/status")
    container = Container.create("kernel-file", path, store=store, stdout=subprocess.PIPE)
    try:
        container.start()
        assert container.stdout is not None
        assert container.stdout.readline() == b"/\n"
        with pytest.raises(ExecError, match="is a file of the kernel's"):
            container.exec(["true"], user="root")
    finally:
        container.destroy()


@needs_root
@needs_busybox
def test_a_bind_over_the_dev_tmpfs_gets_no_defaults(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """The spec's tmpfs on /dev, then a bind of a host directory at /data, which the
    rootfs makes a symlink to /dev: the bind covers the tmpfs, and neither the default
    nodes and symlinks nor the spec's devices are made in the host directory."""
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "null").write_text("the host's\n")  # (the masks need a /dev/null)
    path = bundle(["true"])

    def change(document: dict[str, Any]) -> None:
        bind = {"destination": "/data", "type": "bind", "source": str(volume)}
        document["mounts"].append({**bind, "options": ["rbind"]})
        document["linux"]["devices"] = [
            {"path": "/dev/extra", "type": "c", "major": 1, "minor": 5, "fileMode": 0o666}
        ]
        document["linux"]["maskedPaths"] = []

    edit_config(path, change)
    (path / "rootfs" / "data").symlink_to("/dev")
    assert run_output(store, path) == (0, "")
    assert sorted(os.listdir(volume)) == ["null"]
    assert (volume / "null").read_text() == "the host's\n"


@needs_root
@needs_busybox
def test_a_spec_device_at_a_default_path_is_the_spec_s(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: ``/dev/zero`` listed in ``linux.devices`` gets the spec's mode and owner,
    not the default node's (which used to take its name first)."""
    path = bundle(["stat", "-c", "%a %u:%g %t:%T", "/dev/zero"])
    device = {
        "path": "/dev/zero",
        "type": "c",
        "major": 1,
        "minor": 5,
        "fileMode": 0o600,
        "uid": 1000,
        "gid": 1000,
    }
    edit_config(path, lambda d: d["linux"].update(devices=[device]))
    assert run_output(store, path) == (0, "600 1000:1000 1:5\n")


@needs_root
@needs_busybox
def test_a_spec_device_is_never_made_in_a_bind_mount(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """A rootfs symlink (``/data -> /dev/net``) puts the bind of a host volume at /data over
    a directory of the /dev tmpfs: the spec's ``/dev/net/tun`` would be made there, on the
    host. The creation fails instead (runc makes it)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    path = bundle(["true"])
    tun = {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 0o666}

    def change(document: dict[str, Any]) -> None:
        bind = {"destination": "/data", "type": "bind", "source": str(volume)}
        document["mounts"].append({**bind, "options": ["rbind"]})
        document["linux"]["devices"] = [tun]

    edit_config(path, change)
    (path / "rootfs" / "data").symlink_to("/dev/net")
    message = create_fails(store, path)
    assert "device /dev/net/tun would be made in a bind mount" in message, message
    assert os.listdir(volume) == []


@needs_root
@needs_busybox
def test_a_spec_device_reaches_a_dev_the_rootfs_links_elsewhere(
    store: FileStore, bundle: BundleFactory
) -> None:
    """``/dev -> /devx`` in the rootfs: the spec's tmpfs is mounted at /devx and its devices
    are made there (the defaults are not: /dev is not a directory of ours)."""
    path = bundle(["stat", "-c", "%F %t:%T", "/devx/foo"])
    foo = {"path": "/dev/foo", "type": "c", "major": 1, "minor": 5, "fileMode": 0o666}
    edit_config(path, lambda d: d["linux"].update(devices=[foo], maskedPaths=[]))
    (path / "rootfs" / "dev").rmdir()
    (path / "rootfs" / "devx").mkdir()
    (path / "rootfs" / "dev").symlink_to("devx")
    assert run_output(store, path) == (0, "character special file 1:5\n")


@needs_root
@needs_busybox
def test_a_host_directory_bound_over_proc_is_refused(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """As runc: only a procfs may be bound at /proc."""
    fake = tmp_path / "fake-proc"
    fake.mkdir()
    path = bundle(["true"])
    bind = {"destination": "/proc", "type": "bind", "source": str(fake), "options": ["rbind"]}
    edit_config(path, lambda d: d["mounts"].append(bind))
    message = create_fails(store, path)
    assert "only a procfs may be bound there" in message, message


@needs_root
@needs_busybox
def test_a_spec_device_a_bind_brings_is_left_as_it_is(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """As runc: a device of ``linux.devices`` that a bind already brought (the host's
    ``/dev/dri`` bound at ``/dev/dri``, its ``card0`` listed too) is left alone, not
    refused as a node made in a bind."""
    dri = tmp_path / "dri"
    dri.mkdir()
    (dri / "card0").write_text("the host's\n")
    path = bundle(["cat", "/dev/dri/card0"])
    card = {"path": "/dev/dri/card0", "type": "c", "major": 226, "minor": 0, "fileMode": 0o666}

    def change(document: dict[str, Any]) -> None:
        bind = {"destination": "/dev/dri", "type": "bind", "source": str(dri)}
        document["mounts"].append({**bind, "options": ["rbind"]})
        document["linux"]["devices"] = [card]

    edit_config(path, change)
    assert run_output(store, path) == (0, "the host's\n")


@needs_root
@needs_busybox
def test_a_spec_device_is_never_made_beneath_a_bind_either(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """A mount beneath an rbind'd host volume is the host's too: a rootfs symlink
    (``/dev/net -> /data/sub``) steering a device there is refused."""
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "sub", str(volume / "sub")], check=True
    )
    try:
        path = bundle(["true"])
        tun = {"path": "/dev/net/tun", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666}

        def change(document: dict[str, Any]) -> None:
            without_dev_mounts(document)
            bind = {"destination": "/data", "type": "bind", "source": str(volume)}
            document["mounts"].append({**bind, "options": ["rbind"]})
            document["linux"]["devices"] = [tun]
            document["linux"]["maskedPaths"] = []

        edit_config(path, change)
        (path / "rootfs" / "dev" / "net").symlink_to("/data/sub")
        message = create_fails(store, path)
        assert "device /dev/net/tun would be made in a bind mount" in message, message
        assert os.listdir(volume / "sub") == []
    finally:
        subprocess.run(["umount", str(volume / "sub")], check=True)
