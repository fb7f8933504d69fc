"""The overlay root (``Config(overlay=True)``) and the export of its changes.

Real containers on a shared busybox bundle: the bundle's rootfs must come out
byte-identical, each container sees only its own writes, the tmpfs upper
layer's size limit holds, and ``export_changes`` writes the upper layer as an
OCI image layer (whiteouts for deletions, an opaque marker for replaced
directories).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import resource
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from conftest import BundleFactory, needs_busybox, needs_root
from test_launchers import _ahead_of, _init_of

import sandboxrt
from sandboxrt import (
    Config,
    Container,
    ContainerFileError,
    FileStore,
    InvalidStateError,
    MissingFeatureError,
    NoOverlayError,
    Pod,
    SystemCallError,
    _changes,
)
from sandboxrt._core import abi
from sandboxrt._core.plan import build_plan
from sandboxrt._os import syscalls
from sandboxrt._proc.launcher import ForkServerLauncher
from sandboxrt.sandbox import remote_error

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(sandboxrt.__file__)))
MIB = 1024 * 1024


# --- helpers ---------------------------------------------------------------------------------


def tree_digest(root: Path) -> str:
    """A hash of everything under ``root``: names, types, modes, owners, mtimes, contents."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in ["", *sorted(dirnames), *sorted(filenames)]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            fields = (rel, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
            digest.update(repr(fields).encode())
            if os.path.islink(path):
                digest.update(os.readlink(path).encode())
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def overlay(size: int = 8 * MIB) -> Config:
    return Config(overlay=True, overlay_size=size)


@contextlib.contextmanager
def running(store: FileStore, bundle: Path, cid: str, config: Config) -> Iterator[Container]:
    container = Container.create(cid, bundle, store=store, config=config)
    try:
        container.start()
        yield container
    finally:
        container.destroy()


def sh(container: Container, script: str) -> subprocess.CompletedProcess[bytes]:
    return container.exec_run(["sh", "-c", script], capture_output=True, timeout=60)


def assert_store_empty(store: FileStore) -> None:
    assert Container.list(store=store) == []
    assert sorted(os.listdir(store.root)) in ([], [".sandboxes"]), os.listdir(store.root)
    assert os.listdir(store.runtime_dir) == []


def read_layer(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    members: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            f = tar.extractfile(member) if member.isreg() else None
            members[member.name] = (member, f.read() if f else b"")
    return members


# --- pure parts ------------------------------------------------------------------------------


def test_config_validates_the_overlay_size() -> None:
    assert Config().overlay is False
    assert Config().overlay_size == 256 * MIB
    assert Config(overlay=True, overlay_size=MIB).overlay_size == MIB
    with pytest.raises(ValueError, match="must be 65536 to"):
        Config(overlay=True, overlay_size=0)
    with pytest.raises(TypeError, match="bytes"):
        Config(overlay=True, overlay_size="64m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        Config(overlay=True, overlay_size=True)


def test_the_plan_carries_the_overlay_size(bundle: BundleFactory) -> None:
    path = bundle()
    spec = json.loads((path / "config.json").read_text())

    common = {
        "container_id": "c",
        "sandbox_id": "c",
        "spec": spec,
        "bundle": str(path),
        "runtime_root": "/run/x",
        "compile_seccomp": lambda _s: b"\0" * 8,
    }
    assert build_plan(**common).init.overlay_size == 0
    sized = build_plan(**common, overlay_size=3 * MIB)
    assert sized.init.overlay_size == 3 * MIB
    assert sized.init.rootfs == str(path / "rootfs")
    with pytest.raises(ValueError, match="negative"):
        build_plan(**common, overlay_size=-1)


def test_a_refused_overlay_reaches_the_library_as_missing_feature() -> None:
    details = {"feature": "an overlay root on /x", "detail": 'container "c": refused'}
    error = remote_error("c", "MissingFeatureError", "whatever", details)
    assert isinstance(error, MissingFeatureError)
    assert "an overlay root on /x" in str(error) and 'container "c"' in str(error)
    assert isinstance(remote_error("c", "NoOverlay", "no", {}), NoOverlayError)


# --- real containers -------------------------------------------------------------------------


@needs_root
@needs_busybox
def test_twenty_containers_share_one_rootfs(store: FileStore, bundle: BundleFactory) -> None:
    """20 containers from 4 threads write different content to one path at once; each
    reads back its own, and the shared rootfs is byte-identical afterwards."""
    path = bundle(["sleep", "1000"])
    rootfs = path / "rootfs"
    before = tree_digest(rootfs)
    threads, per_thread = 4, 5
    barrier = threading.Barrier(threads, timeout=120)
    errors: list[BaseException] = []
    seen: dict[str, bytes] = {}

    def worker(t: int) -> None:
        containers: list[Container] = []
        try:
            for i in range(per_thread):
                cid = f"ov{t}-{i}"
                container = Container.create(cid, path, store=store, config=overlay())
                containers.append(container)
                container.start()
                done = sh(container, f"printf '{cid}' > /etc/hostname; rm /etc/group")
                assert done.returncode == 0, done.stderr
            barrier.wait()  # all 20 alive, each with its own write to /etc/hostname
            for container in containers:
                seen[container.id] = sh(container, "cat /etc/hostname; ls /etc").stdout
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            for container in containers:
                container.destroy()

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert not errors, errors
    assert len(seen) == threads * per_thread
    for cid, out in seen.items():
        assert out.startswith(cid.encode()), (cid, out)
        assert b"group" not in out.split(b"\n", 1)[1]
    assert tree_digest(rootfs) == before
    assert (rootfs / "etc" / "hostname").read_text() == "sandboxrt\n"
    assert_store_empty(store)


@needs_root
@needs_busybox
def test_lowerdir_paths_with_commas_and_colons(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "1000"], name="odd,name:with\\chars")
    with running(store, path, "odd", overlay()) as container:
        done = sh(container, "echo in > /etc/new; cat /etc/new; cat /etc/hostname")
        assert done.stdout == b"in\nsandboxrt\n", done.stderr
    assert not (path / "rootfs" / "etc" / "new").exists()


@needs_root
@needs_busybox
def test_the_upper_layer_size_limit_holds(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "1000"])
    with running(store, path, "small", overlay(MIB)) as container:
        assert sh(container, "echo fits > /fits && cat /fits").stdout == b"fits\n"
        done = sh(container, "dd if=/dev/zero of=/big bs=1024 count=4096")
        assert done.returncode != 0
        assert os.strerror(errno.ENOSPC).encode() in done.stderr, done.stderr
        blocks = sh(container, "df -k / | tail -1").stdout.split()
        assert int(blocks[1]) == 1024, blocks
        # Files are bounded too (kernel memory, not counted in the size): empty ones
        # fail once the layer's inodes (1024 for 1 MiB) are taken.
        script = "mkdir /many && cd /many && for i in $(seq 2000); do >f$i || exit 7; done"
        many = sh(container, script)
        assert many.returncode == 7, many
        assert os.strerror(errno.ENOSPC).encode() in many.stderr, many.stderr
    assert not (path / "rootfs" / "big").exists()


@needs_root
@needs_busybox
def test_an_export_nested_past_the_fd_limit_is_a_typed_error(
    store: FileStore, bundle: BundleFactory
) -> None:
    nest = "d=/deep; for i in $(seq 300); do d=$d/d; done; mkdir -p $d"
    with running(store, bundle(["sleep", "1000"]), "deep", overlay(MIB)) as container:
        assert sh(container, nest).returncode == 0
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
        try:
            with pytest.raises(SystemCallError, match=r'container "deep": export the changes'):
                container.export_changes(io.BytesIO())
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        out = io.BytesIO()
        container.export_changes(out)
        assert "deep/" + "d/" * 299 + "d" in read_layer(out.getvalue())


@needs_root
@needs_busybox
def test_a_full_layer_is_a_container_file_error(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """The file API's verbs name the container and path when the layer is full."""
    host = tmp_path / "big"
    host.write_bytes(b"x" * (2 * MIB))
    with running(store, bundle(["sleep", "1000"]), "full", overlay(MIB)) as container:
        with pytest.raises(ContainerFileError, match=r'"full".*/big1') as info:
            container.files.write_bytes("/big1", b"x" * (2 * MIB))
        assert info.value.errno == errno.ENOSPC
        container.files.remove("/big1")
        with pytest.raises(ContainerFileError, match=r'"full".*/big2') as info:
            container.files.copy_in(host, "/big2")
        assert info.value.errno == errno.ENOSPC


@needs_root
@needs_busybox
def test_export_changes_writes_an_oci_layer(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    path = bundle(["sleep", "1000"])
    rootfs = path / "rootfs"
    (rootfs / "data").mkdir()
    (rootfs / "data" / "keep.txt").write_text("lower\n")
    (rootfs / "data" / "gone.txt").write_text("lower\n")
    (rootfs / "opq").mkdir()
    (rootfs / "opq" / "old.txt").write_text("old\n")
    before = tree_digest(rootfs)
    script = """
        set -e
        echo added > /data/new.txt
        chmod 0640 /data/new.txt
        ln /data/new.txt /data/hard
        echo modified > /data/keep.txt
        rm /data/gone.txt
        rm -r /opq
        mkdir /opq
        echo fresh > /opq/new.txt
        ln -s /data/new.txt /link
        mkfifo /fifo
        stat -c %Y /data/new.txt
    """
    with running(store, path, "exp", overlay()) as container:
        done = sh(container, script)
        assert done.returncode == 0, done.stderr
        mtime = int(done.stdout)
        owned = container.exec_run(["sh", "-c", "echo mine > /tmp/owned"], user="123:456")
        assert owned.returncode == 0
        target = tmp_path / "layer.tar"
        container.export_changes(target)
        streamed = io.BytesIO()
        container.pause()  # a frozen container's layer exports too, the same
        try:
            container.export_changes(streamed)
        finally:
            container.resume()
    data = target.read_bytes()
    assert data == streamed.getvalue()
    members = read_layer(data)
    new, content = members["data/new.txt"]
    hard, hard_content = members["data/hard"]
    # One of the two names carries the data, the other is a hard link to it.
    assert {new.type, hard.type} == {tarfile.REGTYPE, tarfile.LNKTYPE}
    regular, linked = (new, hard) if new.isreg() else (hard, new)
    assert linked.linkname == regular.name
    assert (content or hard_content) == b"added\n"
    assert (regular.mode, regular.uid, regular.gid) == (0o640, 0, 0)
    owned_info, owned_content = members["tmp/owned"]
    assert (owned_info.uid, owned_info.gid, owned_content) == (123, 456, b"mine\n")
    assert members["tmp"][0].mode == 0o1777
    assert int(regular.mtime) == mtime
    assert members["data/keep.txt"][1] == b"modified\n"
    assert members["data/.wh.gone.txt"][0].size == 0
    assert "data/gone.txt" not in members
    assert members["opq"][0].isdir()
    assert members["opq/.wh..wh..opq"][0].isreg()
    assert members["opq/new.txt"][1] == b"fresh\n"
    assert "opq/old.txt" not in members
    link = members["link"][0]
    assert link.issym() and link.linkname == "/data/new.txt"
    assert members["fifo"][0].isfifo()
    # Only changes: nothing the container left alone (the busybox binary...).
    assert not any(name.startswith("bin/") for name in members)
    assert tree_digest(rootfs) == before
    assert_store_empty(store)


@needs_root
@needs_busybox
def test_export_never_opens_a_node_swapped_in_for_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk's ``lstat`` saw a regular file; by its open, a device node has the name
    (a container swapping one in): it is not opened for reading from the host's side."""
    layer = tmp_path / "upper"
    layer.mkdir()
    (layer / "file").write_bytes(b"x")
    seen_as_file = os.lstat(layer / "file")
    os.mknod(layer / "node", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    opened_for_reading: list[str] = []
    real_open = os.open

    def spy(path: str, flags: int, *args: object, **kwargs: object) -> int:
        fd = real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]
        if not flags & os.O_PATH and stat.S_ISCHR(os.fstat(fd).st_mode):
            opened_for_reading.append(path)
        return fd

    top = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
    try:
        monkeypatch.setattr(os, "open", spy)
        assert _changes._open_checked(top, "node", seen_as_file, _changes._O_FILE) is None
        fd = _changes._open_checked(top, "file", seen_as_file, _changes._O_FILE)
        monkeypatch.undo()
        assert fd is not None
        assert os.read(fd, 10) == b"x"
        os.close(fd)
    finally:
        os.close(top)
    assert opened_for_reading == []


def test_export_keeps_the_containers_user_overlay_attributes(tmp_path: Path) -> None:
    """The overlay uses ``trusted.overlay.*``: a ``user.overlay.opaque`` a container set
    is its own attribute (not an opaque directory), and is exported as one."""
    layer = tmp_path / "upper"
    (layer / "etc").mkdir(parents=True)
    try:
        os.setxattr(layer / "etc", "user.overlay.opaque", b"y")
        os.setxattr(layer / "etc", "user.overlay.keep", b"1")
    except OSError as exc:
        pytest.skip(f"no user xattrs on {tmp_path}: {exc}")
    os.setxattr(layer / "etc", "trusted.overlay.origin", b"overlay's own")
    out = io.BytesIO()
    top = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _changes.write_layer(top, out)
    finally:
        os.close(top)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        assert tar.getnames() == ["etc"]
        headers = tar.getmember("etc").pax_headers
    assert headers.get("SCHILY.xattr.user.overlay.opaque") == "y"
    assert headers.get("SCHILY.xattr.user.overlay.keep") == "1"
    assert "SCHILY.xattr.trusted.overlay.origin" not in headers


@needs_root
@needs_busybox
def test_export_changes_of_a_created_container(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "1000"])
    container = Container.create("fresh", path, store=store, config=overlay())
    try:
        assert sh(container, "echo early > /early").returncode == 0
        out = io.BytesIO()
        container.export_changes(out)
        assert read_layer(out.getvalue())["early"][1] == b"early\n"
    finally:
        container.destroy()


@needs_root
@needs_busybox
def test_export_changes_is_bounded_by_max_bytes(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """A sparse file of a terabyte costs the container nothing and the tar its whole size:
    ``max_bytes`` stops the export before it, naming the file, and a path made goes."""
    container = Container.create(
        "bounded", bundle(["sleep", "1000"]), store=store, config=overlay()
    )
    try:
        script = "echo small > /small && dd if=/dev/zero of=/sparse bs=4096 count=1 seek=268435455"
        assert sh(container, script).returncode == 0
        dest = tmp_path / "layer.tar"
        with pytest.raises(ContainerFileError, match="max_bytes") as e:
            container.export_changes(dest, max_bytes=1 << 20)
        assert e.value.errno == errno.EFBIG and e.value.filename == "/sparse"
        assert not dest.exists()
        # What was there before is never removed (a file of the caller's, a link, a node).
        kept = tmp_path / "kept.tar"
        kept.write_text("precious")
        (tmp_path / "link.tar").symlink_to(kept)
        for there in (kept, tmp_path / "link.tar"):
            with pytest.raises(ContainerFileError, match="max_bytes"):
                container.export_changes(there, max_bytes=1 << 20)
            assert there.exists()
        out = io.BytesIO()
        with pytest.raises(ContainerFileError, match="max_bytes"):
            container.export_changes(out, max_bytes=1 << 20)
        assert len(out.getvalue()) < 1 << 21  # (what was written before it)
        sh(container, "rm /sparse")
        container.export_changes(out := io.BytesIO(), max_bytes=6)
        assert read_layer(out.getvalue())["small"][1] == b"small\n"
        with pytest.raises(TypeError):
            container.export_changes(io.BytesIO(), max_bytes=1.5)  # type: ignore[arg-type]
    finally:
        container.destroy()


@needs_root
@needs_busybox
def test_a_file_named_as_a_whiteout_is_refused_by_the_export(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A layer cannot hold ``.wh.k`` as a file: applied, it deleted the lower ``k`` the
    container still had. Refused, naming it, rather than written to mean another tree."""
    container = Container.create("wh", bundle(["sleep", "1000"]), store=store, config=overlay())
    try:
        assert sh(container, "mkdir -p /keep && touch /keep/k /keep/.wh.k").returncode == 0
        with pytest.raises(ContainerFileError, match="whiteout") as e:
            container.export_changes(io.BytesIO())
        assert e.value.errno == errno.EINVAL and e.value.filename == "/keep/.wh.k"
    finally:
        container.destroy()


@needs_root
@needs_busybox
def test_export_changes_refuses_without_overlay_or_once_stopped(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["true"])
    plain = Container.create("plain", path, store=store)
    try:
        with pytest.raises(NoOverlayError, match="Config\\(overlay=True\\)"):
            plain.export_changes(io.BytesIO())
    finally:
        plain.destroy()
    stopped = Container.create("stopped", path, store=store, config=overlay())
    try:
        stopped.start()
        assert stopped.wait(timeout=30) == 0
        out = io.BytesIO()
        with pytest.raises(InvalidStateError, match="upper layer went with its sandbox"):
            stopped.export_changes(out)
        assert out.getvalue() == b""
    finally:
        stopped.destroy()
    assert_store_empty(store)


@needs_root
@needs_busybox
def test_overlay_with_a_readonly_root(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "1000"], readonly=True)
    with running(store, path, "ro", overlay()) as container:
        done = sh(container, "echo x > /etc/x")
        assert done.returncode != 0
        assert os.strerror(errno.EROFS).encode() in done.stderr, done.stderr
        assert sh(container, "grep ' / ' /proc/mounts").stdout.split()[2:4][0] == b"overlay"
        assert b"ro" in sh(container, "grep ' / ' /proc/mounts").stdout.split()[3].split(b",")
    assert not (path / "rootfs" / "etc" / "x").exists()


_LOADER = """
import json, sys
sys.path.insert(0, {parent!r})
from sandboxrt import Container, FileStore
container = Container.load({cid!r}, store=FileStore({root!r}))
container.export_changes({dest!r})
config = container.config
print(json.dumps({{"overlay": config.overlay, "overlay_size": config.overlay_size}}))
"""


@needs_root
@needs_busybox
def test_the_overlay_config_survives_load_in_another_process(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    path = bundle(["sleep", "1000"])
    with running(store, path, "loaded", overlay(2 * MIB)) as container:
        assert sh(container, "echo kept > /kept").returncode == 0
        dest = tmp_path / "other.tar"
        code = _LOADER.format(
            parent=PACKAGE_PARENT, cid="loaded", root=str(store.root), dest=str(dest)
        )
        done = subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"overlay": True, "overlay_size": 2 * MIB}
        assert read_layer(dest.read_bytes())["kept"][1] == b"kept\n"
        assert Container.load("loaded", store=store).config == overlay(2 * MIB)


@contextlib.contextmanager
def too_deep_rootfs(tmp_path: Path, rootfs: Path) -> Iterator[Path]:
    """``rootfs`` seen through two stacked read-only overlays: a third (the container's)
    exceeds the kernel's stacking depth, so overlayfs refuses it as a lower layer.

    The two overlays are mounted on the host under ``tmp_path`` and always undone.
    """
    empty = tmp_path / "empty"
    empty.mkdir()
    first, second = tmp_path / "ovl1", tmp_path / "ovl2"
    first.mkdir()
    second.mkdir()
    mounted: list[Path] = []
    try:
        for target, lower in ((first, rootfs), (second, first)):
            syscalls.mount("overlay", str(target), "overlay", 0, f"lowerdir={lower}:{empty}")
            mounted.append(target)
        yield second
    finally:
        for target in reversed(mounted):
            syscalls.umount2(str(target), abi.MNT_DETACH)


@needs_root
@needs_busybox
def test_a_rootfs_overlayfs_refuses_gives_a_typed_error_and_leaves_nothing(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    path = bundle(["true"])
    spec = json.loads((path / "config.json").read_text())
    with too_deep_rootfs(tmp_path, path / "rootfs") as deep:
        spec["root"]["path"] = str(deep)
        (path / "config.json").write_text(json.dumps(spec))
        with pytest.raises(MissingFeatureError, match="overlay") as caught:
            Container.create("deep", path, store=store, config=overlay())
        assert 'container "deep"' in str(caught.value)
        assert "fuse-overlayfs" in str(caught.value)
        # Without the overlay the same rootfs runs: the error is the overlay's alone.
        assert Container.run("deep-plain", path, store=store) == 0
    assert_store_empty(store)


@needs_root
@needs_busybox
def test_config_is_recorded(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "1000"])
    with running(store, path, "rec", overlay(3 * MIB)) as container:
        record = store.load("rec")
        assert record.config["overlay"] is True
        assert record.config["overlay_size"] == 3 * MIB
        assert container.config == attrs.evolve(Config(), overlay=True, overlay_size=3 * MIB)


class _Counter(io.RawIOBase):
    """A write-only sink that keeps only a count and a hash of what it got."""

    def __init__(self) -> None:
        self.count = 0
        self.hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.count += len(data)
        self.hash.update(data)
        return len(data)


@needs_root
@needs_busybox
def test_export_streams_large_files_in_constant_memory(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A 192 MiB file goes out without this process's peak RSS growing by its size."""
    path = bundle(["sleep", "1000"])
    with running(store, path, "big", overlay(256 * MIB)) as container:
        done = sh(container, "dd if=/dev/zero of=/big bs=1048576 count=192 2>/dev/null")
        assert done.returncode == 0, done.stderr
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        sink = _Counter()
        container.export_changes(sink)  # type: ignore[arg-type]
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    assert sink.count > 192 * MIB
    assert grown < 32 * MIB, f"peak RSS grew by {grown // MIB} MiB"


@needs_root
@needs_busybox
def test_an_overlay_root_built_ahead_serves_with_its_upper_layer(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A warm sandbox builds the next overlay root ahead; the container that adopts it
    gets its upper layer too (its writes land there and export), the bundle untouched."""
    launcher = ForkServerLauncher(build_ahead=True)
    path = bundle(["true"])
    before = tree_digest(path / "rootfs")
    try:
        ahead = _ahead_of(launcher, store, path, overlay())
        container = Container.create(
            "ahead-ov", path, store=store, launcher=launcher, config=overlay()
        )
        try:
            assert _init_of(container) == ahead
            assert sh(container, "echo adopted > /etc/motd").returncode == 0
            out = io.BytesIO()
            container.export_changes(out)
            assert read_layer(out.getvalue())["etc/motd"][1] == b"adopted\n"
        finally:
            container.destroy()
    finally:
        launcher.close()
    assert tree_digest(path / "rootfs") == before


@needs_root
@needs_busybox
def test_each_container_of_a_pod_has_its_own_overlay(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["sleep", "1000"])
    before = tree_digest(path / "rootfs")
    pod = Pod.create("ovpod", path, store=store, config=overlay())
    try:
        pod.root.start()
        sub = pod.add_container("ovsub", path, config=overlay())
        sub.start()
        assert sh(pod.root, "echo root > /who").returncode == 0
        assert sh(sub, "echo sub > /who").returncode == 0
        for container, who in ((pod.root, b"root\n"), (sub, b"sub\n")):
            assert sh(container, "cat /who").stdout == who
            out = io.BytesIO()
            container.export_changes(out)
            assert read_layer(out.getvalue())["who"][1] == who
    finally:
        pod.destroy()
    assert tree_digest(path / "rootfs") == before


@needs_root
@needs_busybox
def test_the_file_api_sees_the_overlay_root(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "1000"])
    (path / "rootfs" / "data").mkdir()
    (path / "rootfs" / "data" / "lower.txt").write_text("lower\n")
    before = tree_digest(path / "rootfs")
    with running(store, path, "ovfiles", overlay()) as container:
        assert sh(container, "echo upper > /data/lower.txt").returncode == 0
        assert container.files.read_text("/data/lower.txt") == "upper\n"
        container.files.write_text("/data/from-files", "written\n")
        assert sh(container, "cat /data/from-files").stdout == b"written\n"
        out = io.BytesIO()
        container.export_changes(out)
        layer = read_layer(out.getvalue())
        assert layer["data/from-files"][1] == b"written\n"
        assert layer["data/lower.txt"][1] == b"upper\n"
    assert tree_digest(path / "rootfs") == before
    assert_store_empty(store)
