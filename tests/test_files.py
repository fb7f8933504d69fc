"""``container.files``: every verb on created and running busybox containers, on the rootfs,
a tmpfs mount and a bind mount; hostile rootfs content and swap races stay inside the root;
a 1 GiB file round-trips with constant memory."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from conftest import BundleFactory, needs_busybox, needs_root

from sandboxrt import (
    Container,
    ContainerFileError,
    FileStore,
    InvalidArgumentError,
    InvalidStateError,
    SandboxrtError,
    Status,
    SubprocessLauncher,
)
from sandboxrt._os import syscalls

pytestmark = [needs_root, needs_busybox]


def edit_config(path: Path, **changes: object) -> None:
    """Change the bundle's config.json: ``mounts`` are appended, ``user`` set on process."""
    doc = json.loads((path / "config.json").read_text())
    doc["mounts"] = [*doc.get("mounts", []), *changes.get("mounts", [])]  # type: ignore[list-item]
    if "user" in changes:
        doc["process"]["user"] = changes["user"]
    (path / "config.json").write_text(json.dumps(doc))


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """A host directory bind-mounted at /data in the containers of this module."""
    path = tmp_path / "hostdata"
    path.mkdir()
    (path / "from-host.txt").write_text("host side\n")
    return path


@pytest.fixture(params=["created", "running"])
def container(
    request: pytest.FixtureRequest, store: FileStore, bundle: BundleFactory, host_dir: Path
) -> Iterator[Container]:
    """A busybox container with a tmpfs at /scratch and ``host_dir`` bound at /data,
    created, or running ``sleep``."""
    path = bundle(["sleep", "60"])
    edit_config(
        path,
        mounts=[
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": []},
            {
                "destination": "/data",
                "type": "bind",
                "source": str(host_dir),
                "options": ["rbind", "rw"],
            },
        ],
    )
    c = Container.create("files1", path, store=store)
    try:
        if request.param == "running":
            c.start()
        yield c
    finally:
        c.destroy()


def rootfs(c: Container) -> Path:
    return Path(c.bundle) / "rootfs"


def in_container(c: Container, *args: str) -> str:
    """Output of ``args`` run in the container (running ones only)."""
    return c.exec_run(list(args), capture_output=True, check=True).stdout.decode()


# -- every verb ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["/tmp", "/scratch", "/data"])
def test_read_and_write_on_rootfs_tmpfs_and_bind_mount(
    container: Container, host_dir: Path, where: str
) -> None:
    files = container.files
    assert files.write_bytes(f"{where}/a.bin", b"\x00\x01binary") == 8
    assert files.read_bytes(f"{where}/a.bin") == b"\x00\x01binary"
    files.write_text(f"{where}/a.txt", "héllo\n", encoding="utf-8")
    assert files.read_text(f"{where}/a.txt", encoding="utf-8") == "héllo\n"
    assert "a.txt" in files.listdir(where)
    st = files.stat(f"{where}/a.txt")
    assert st.is_file and st.size == len("héllo\n".encode()) and st.permissions == 0o644
    if where == "/data":  # the bind mount's source is the host directory itself
        assert (host_dir / "a.txt").read_text(encoding="utf-8") == "héllo\n"
        assert files.read_text("/data/from-host.txt") == "host side\n"
    elif where == "/tmp":
        assert (rootfs(container) / "tmp/a.txt").read_bytes() == "héllo\n".encode()
    else:  # the tmpfs lives only in the container's mount namespace
        assert not (rootfs(container) / "scratch/a.txt").exists()
    if container.status.value == "running":
        assert in_container(container, "cat", f"{where}/a.txt") == "héllo\n"


def test_open_streams_in_every_mode(container: Container) -> None:
    files = container.files
    with files.open("/tmp/s.txt", "w") as f:
        f.write("one\n")
    with files.open("/tmp/s.txt", "a") as f:
        f.write("two\n")
    with files.open("/tmp/s.txt") as f:
        assert f.readlines() == ["one\n", "two\n"]
    with files.open("/tmp/s.txt", "r+b") as f:
        f.seek(1)
        f.write(b"N")
        f.seek(0)
        assert f.read() == b"oNe\ntwo\n"
    with pytest.raises(FileExistsError), files.open("/tmp/s.txt", "x"):
        pass
    with files.open("/tmp/new.bin", "xb") as f:
        f.write(b"x" * 100_000)
    assert files.stat("/tmp/new.bin").size == 100_000
    with pytest.raises(ValueError, match="invalid mode"):
        files.open("/tmp/s.txt", "rw")


def test_mkdir_listdir_stat_remove(container: Container) -> None:
    files = container.files
    files.mkdir("/tmp/d")
    with pytest.raises(FileExistsError):
        files.mkdir("/tmp/d")
    files.mkdir("/tmp/d", exist_ok=True)
    files.mkdir("/tmp/d/e/f/g", parents=True)
    files.mkdir("/tmp/d/e/f/g", parents=True)  # as mkdir -p
    files.write_text("/tmp/d/e/f/g/leaf", "x")
    files.symlink("/tmp/d/link", "/tmp/d/e")
    assert files.listdir("/tmp/d") == ["e", "link"]
    assert files.stat("/tmp/d/e").is_dir
    assert files.stat("/tmp/d/link", follow_symlinks=False).is_symlink
    assert files.stat("/tmp/d/link").is_dir
    walked = [e.path for e in files.walk("/tmp/d")]
    assert sorted(walked) == ["e", "e/f", "e/f/g", "e/f/g/leaf", "link"]
    for i, rel in enumerate(walked):  # parents first
        assert "/" not in rel or rel.rsplit("/", 1)[0] in walked[:i]
    with pytest.raises(OSError) as info:
        files.remove("/tmp/d/e")  # not empty
    assert isinstance(info.value, ContainerFileError)
    files.remove("/tmp/d/link")  # the symlink, not its target
    assert files.exists("/tmp/d/e/f/g/leaf")
    files.remove("/tmp/d", recursive=True)
    assert not files.exists("/tmp/d")
    assert not (rootfs(container) / "tmp/d").exists()


def test_errors_are_typed_and_name_the_container_and_path(container: Container) -> None:
    files = container.files
    with pytest.raises(FileNotFoundError) as missing:
        files.read_bytes("/no/such/file")
    assert isinstance(missing.value, SandboxrtError)
    assert missing.value.filename == "/no/such/file"
    assert 'container "files1"' in str(missing.value)
    with pytest.raises(IsADirectoryError):
        files.read_bytes("/tmp")
    with pytest.raises(NotADirectoryError):
        files.listdir("/bin/busybox")
    with pytest.raises(FileExistsError):
        files.mkdir("/tmp")
    with pytest.raises(OSError, match="not a regular file"):
        files.read_bytes("/dev/null")
    with pytest.raises(OSError, match="root itself"):
        files.remove("/", recursive=True)
    assert files.exists("/bin/busybox")
    # A NUL byte cut the path short on its way to the kernel: another file was reached.
    with pytest.raises(ValueError, match="NUL"):
        files.stat("/bin/busybox\0/../../no/such/file")
    with pytest.raises(ValueError, match="NUL"):
        files.symlink("/tmp/link", "/etc/passwd\0x")


def test_the_kernel_s_files_are_not_served(container: Container) -> None:
    """procfs and sysfs files (the supervisor's ``/proc/1/oom_score_adj``, which the
    container made ``/etc/motd`` lead to) are refused: the gofer's privileges would write
    what the container's may not."""
    supervisor = container.sandbox.pid if container.sandbox else 0
    before = Path(f"/proc/{supervisor}/oom_score_adj").read_text()
    motd = rootfs(container) / "etc" / "motd"
    motd.symlink_to("/proc/1/oom_score_adj")
    with pytest.raises(PermissionError, match="procfs or sysfs is not served") as info:
        container.files.write_text("/etc/motd", "500\n")
    assert isinstance(info.value, ContainerFileError)
    for path in ("/proc/1/status", "/sys/kernel/uevent_seqnum"):
        with pytest.raises(PermissionError, match="procfs or sysfs is not served"):
            container.files.read_bytes(path)
    assert Path(f"/proc/{supervisor}/oom_score_adj").read_text() == before


def test_copying_a_tree_into_itself_is_refused(container: Container) -> None:
    """The bundle holds the rootfs: its copy into the container would be beneath the tree
    being copied and grow for ever, as ``cp -r`` refuses to."""
    with pytest.raises(ContainerFileError, match="cannot copy a directory into itself") as info:
        container.files.copy_in(container.bundle, "/work/src")
    assert info.value.errno == errno.EINVAL
    assert container.files.listdir("/work/src") == ["config.json", "rootfs"]


def test_container_paths_may_be_pure_posix_paths(container: Container) -> None:
    """As the builtin ``open`` takes a ``Path``: every path of the file API, and exec's
    ``cwd``, take a ``PurePosixPath``."""
    files, where = container.files, PurePosixPath("/tmp/pure")
    files.mkdir(where)
    files.write_text(where / "a.txt", "pure\n")
    assert files.read_text(where / "a.txt") == "pure\n"
    with files.open(where / "a.txt", "rb") as f:
        assert f.read() == b"pure\n"
    files.symlink(where / "link", PurePosixPath("a.txt"))
    assert files.stat(where / "link").size == 5
    assert sorted(files.listdir(where)) == ["a.txt", "link"]
    assert files.exists(where / "a.txt")
    if container.status is Status.RUNNING:
        done = container.exec_run(["pwd"], cwd=where, capture_output=True, check=True)
        assert done.stdout == b"/tmp/pure\n"
    files.remove(where, recursive=True)
    assert not files.exists(where)


def test_copying_a_file_onto_itself_is_refused(container: Container) -> None:
    """A host file of the rootfs copied in at its own place: refused, as ``cp`` refuses
    ("are the same file"); it was truncated before being read."""
    host_file = rootfs(container) / "etc" / "passwd"
    before = host_file.read_bytes()
    with pytest.raises(ContainerFileError, match="is the file copied in") as info:
        container.files.copy_in(host_file, "/etc/passwd")
    assert info.value.errno == errno.EINVAL
    assert host_file.read_bytes() == before


def test_created_files_belong_to_the_containers_user(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = bundle(["sleep", "60"])
    edit_config(path, user={"uid": 1234, "gid": 4321})
    c = Container.create("owner1", path, store=store)
    try:
        c.files.write_text("/tmp/owned", "x")
        c.files.mkdir("/tmp/od/sub", parents=True)
        c.files.symlink("/tmp/ol", "owned")
        for name in ("tmp/owned", "tmp/od", "tmp/od/sub", "tmp/ol"):
            st = os.lstat(rootfs(c) / name)
            assert (st.st_uid, st.st_gid) == (1234, 4321), name
        assert os.stat(rootfs(c) / "tmp/od").st_mode & 0o777 == 0o755
        c.start()
        assert in_container(c, "cat", "/tmp/owned") == "x"  # readable by that user
    finally:
        c.destroy()


def test_copy_in_and_out_of_files_and_trees(container: Container, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub/deeper").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "sub/deeper/leaf.bin").write_bytes(os.urandom(300_000))
    (src / "sub/run.sh").write_text("#!/bin/sh\n")
    (src / "sub/run.sh").chmod(0o750)
    (src / "link").symlink_to("sub/deeper")
    files = container.files
    files.copy_in(src, "/scratch/tree")
    assert files.listdir("/scratch/tree") == ["link", "sub", "top.txt"]
    assert files.stat("/scratch/tree/sub/run.sh").permissions == 0o750
    assert files.stat("/scratch/tree/link", follow_symlinks=False).is_symlink
    assert (
        files.read_bytes("/scratch/tree/link/leaf.bin")
        == (src / "sub/deeper/leaf.bin").read_bytes()
    )
    files.copy_in(src / "top.txt", "/scratch")  # into a directory: keeps its name
    assert files.read_text("/scratch/top.txt") == "top"

    out = tmp_path / "out"
    files.copy_out("/scratch/tree", out)
    for rel in ("top.txt", "sub/run.sh", "sub/deeper/leaf.bin"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert (out / "sub/run.sh").stat().st_mode & 0o777 == 0o750
    assert (out / "link").is_symlink() and os.readlink(out / "link") == "sub/deeper"
    files.copy_out("/scratch/top.txt", tmp_path / "single.txt")
    assert (tmp_path / "single.txt").read_text() == "top"
    files.copy_out("/scratch/top.txt", out)  # into a host directory
    assert (out / "top.txt").read_text() == "top"


def test_copy_out_stops_past_max_bytes(container: Container, tmp_path: Path) -> None:
    """A bound over all files copied: past it the file being copied is removed and
    EFBIG raised (a sparse terabyte is cheap to make in a container)."""
    files = container.files
    files.mkdir("/scratch/tree", parents=True)
    files.write_bytes("/scratch/tree/a", b"a" * 3000)
    files.write_bytes("/scratch/tree/b", b"b" * 3000)
    out = tmp_path / "bounded"
    files.copy_out("/scratch/tree", out, max_bytes=6000)  # exactly enough
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    out = tmp_path / "bounded2"
    with pytest.raises(ContainerFileError, match="past max_bytes") as raised:
        files.copy_out("/scratch/tree", out, max_bytes=5999)
    assert raised.value.errno == errno.EFBIG
    assert [p.name for p in out.iterdir()] == ["a"]  # b, cut short, is gone
    assert (out / "a").read_bytes() == b"a" * 3000
    with pytest.raises(ContainerFileError, match="past max_bytes"):
        files.copy_out("/scratch/tree/a", tmp_path / "one", max_bytes=0)
    assert not (tmp_path / "one").exists()
    with pytest.raises(ValueError, match="negative"):
        files.copy_out("/scratch/tree/a", tmp_path / "one", max_bytes=-1)
    for wrong in (2.5, True):
        with pytest.raises(TypeError, match="max_bytes must be an int"):
            files.copy_out("/scratch/tree/a", tmp_path / "one", max_bytes=wrong)  # type: ignore[arg-type]
    assert not (tmp_path / "one").exists()


def test_stopped_container_refuses(store: FileStore, bundle: BundleFactory) -> None:
    c = Container.create("stopped1", bundle(["true"]), store=store)
    try:
        c.start()
        c.wait(timeout=30)
        with pytest.raises(InvalidStateError, match='use the files of container "stopped1"'):
            c.files.read_text("/etc/passwd")
        assert c.gofer is None
    finally:
        c.destroy()


# -- hostile rootfs content ----------------------------------------------------------------


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A host directory no container may read or write; checked unchanged afterwards."""
    path = tmp_path / "canary"
    path.mkdir()
    (path / "secret").write_text("HOST SECRET")
    before = snapshot(path)
    yield path
    assert snapshot(path) == before, "a host file outside the container's root changed"


def snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
        for p in [path, *path.rglob("*")]
    }


def test_hostile_symlinks_stay_inside_the_root(
    store: FileStore, bundle: BundleFactory, canary: Path, tmp_path: Path
) -> None:
    path = bundle(["sleep", "60"])
    root = path / "rootfs"
    (root / "etc/shadow").write_text("container shadow\n")
    evil = root / "evil"
    evil.mkdir()
    (evil / "to_root").symlink_to("/")
    (evil / "to_shadow").symlink_to("/etc/shadow")
    (evil / "up").symlink_to("../../..")
    (evil / "proc_root").symlink_to("/proc/self/root")
    (evil / "to_canary").symlink_to(canary)
    c = Container.create("hostile1", path, store=store)
    try:
        c.start()
        files = c.files
        assert files.listdir("/evil/to_root") == files.listdir("/")
        assert files.listdir("/evil/up") == files.listdir("/")
        assert files.read_text("/evil/to_shadow") == "container shadow\n"
        assert files.read_text("/evil/up/etc/shadow") == "container shadow\n"
        assert files.read_text("/../../../etc/shadow") == "container shadow\n"
        # Never followed out: the rootfs's own /proc is empty (ENOENT), and a magic link
        # of a proc mounted there would be refused (ELOOP).
        with pytest.raises(OSError) as refused:
            files.read_text("/evil/proc_root/etc/hostname")
        assert refused.value.errno in (errno.ENOENT, errno.ELOOP)
        with pytest.raises(OSError) as refused:
            files.listdir("/evil/proc_root")
        assert refused.value.errno in (errno.ENOENT, errno.ELOOP)
        with pytest.raises(FileNotFoundError):
            files.read_text("/evil/to_canary/secret")
        with pytest.raises(FileNotFoundError):  # its parent is missing beneath the root
            files.write_text("/evil/to_canary/planted", "x")
        files.write_text("/evil/to_root/planted", "inside")
        assert (root / "planted").read_text() == "inside"
        files.copy_in(canary, "/evil/up/copied")  # host -> container is the caller's choice
        assert (root / "copied/secret").read_text() == "HOST SECRET"
        out = tmp_path / "evil-out"
        files.copy_out("/evil", out)
        for name in ("to_root", "to_shadow", "up", "proc_root", "to_canary"):
            assert (out / name).is_symlink(), name  # copied as links, never followed
        files.copy_out("/evil/to_shadow", tmp_path / "shadow-out")
        assert (tmp_path / "shadow-out").read_text() == "container shadow\n"
        files.remove("/evil/to_canary", recursive=True)  # the link only
        assert canary.is_dir()
        files.remove("/evil/up/copied", recursive=True)
        assert not (root / "copied").exists()
    finally:
        c.destroy()


def test_a_recursive_remove_never_opens_what_replaced_a_directory(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A host thread swaps a directory and a FIFO (RENAME_EXCHANGE) while the gofer
    removes the directory: opened by name as the directory it had seen, the FIFO blocked
    the gofer (and with it every later file call) for good."""
    path = bundle(["sleep", "60"])
    race = path / "rootfs/race"
    race.mkdir()
    c = Container.create("race-rm", path, store=store)
    try:
        for attempt in range(30):
            directory, fifo = race / f"T{attempt}", race / f"F{attempt}"
            (directory / "sub").mkdir(parents=True)
            (directory / "sub/file").write_text("x")
            os.mkfifo(fifo)
            stop = threading.Event()

            def swap(
                directory: Path = directory, fifo: Path = fifo, stop: threading.Event = stop
            ) -> None:
                while not stop.is_set():
                    with contextlib.suppress(OSError):
                        syscalls.rename_exchange(str(directory), str(fifo))

            def remove(directory: Path = directory) -> None:
                with contextlib.suppress(ContainerFileError):  # (whatever it met, it answered)
                    c.files.remove(f"/race/{directory.name}", recursive=True)

            swapper = threading.Thread(target=swap)
            remover = threading.Thread(target=remove, daemon=True)
            swapper.start()
            remover.start()
            remover.join(timeout=20)
            stop.set()
            swapper.join()
            assert not remover.is_alive(), f"the gofer hangs (attempt {attempt})"
        assert c.files.read_text("/etc/hostname")  # it still serves
    finally:
        c.destroy()


def test_a_lease_on_a_file_is_not_waited_out(store: FileStore, bundle: BundleFactory) -> None:
    # The gofer serves one request at a time: a write to a file someone holds a lease on
    # waited for the lease-break time (45 s), and every other file call with it.
    path = bundle(["sleep", "60"])
    leased = path / "rootfs/leased"
    leased.write_text("before")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, signal, sys, time\n"
            "signal.signal(signal.SIGIO, signal.SIG_IGN)\n"
            f"f = open({str(leased)!r})\n"
            "fcntl.fcntl(f, fcntl.F_SETLEASE, fcntl.F_RDLCK)\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        c = Container.create("leased", path, store=store)
    except BaseException:
        holder.kill()
        holder.communicate()
        raise
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(OSError) as raised:
            c.files.write_text("/leased", "after")
        assert raised.value.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        assert c.files.read_text("/etc/hostname")  # the gofer serves on
    finally:
        holder.kill()
        holder.wait()
        c.destroy()


def test_a_host_tree_changing_during_copy_in_is_never_followed_out(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """A host thread swaps a directory of the copied tree with a symlink to a host
    directory (RENAME_EXCHANGE): ``copy_in`` walked the tree by path, and copied that
    directory's files into the container through the symlink."""
    secret = tmp_path / "secret"
    secret.mkdir()
    for i in range(50):
        (secret / f"s{i}").write_text("HOST SECRET")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(50):
        (src / "sub" / f"f{i}").write_text("fine")
    (src / "link").symlink_to(secret)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                syscalls.rename_exchange(str(src / "sub"), str(src / "link"))
            time.sleep(0.0002)

    c = Container.create("race-in", bundle(["sleep", "60"]), store=store)
    swapper = threading.Thread(target=swap)
    try:
        swapper.start()
        copied = 0
        for i in range(20):
            with contextlib.suppress(OSError):  # (an entry gone meanwhile may stop one)
                c.files.copy_in(src, f"/in{i}")
                copied += 1
        stop.set()
        swapper.join()
        grep = "grep -rl 'HOST SECRET' /in*; true"
        found = c.exec_run(["sh", "-c", grep], capture_output=True, timeout=60)
        assert found.stdout == b"", found.stdout  # no file of the canary got in
        assert copied > 0
    finally:
        stop.set()
        swapper.join()
        c.destroy()


def test_directory_swapped_for_a_symlink_during_copies(
    store: FileStore, bundle: BundleFactory, canary: Path, tmp_path: Path
) -> None:
    """For ~3 s a host thread swaps a container directory for a symlink to the host's
    canary, while copies go in and out through it: nothing outside the root is touched."""
    path = bundle(["sleep", "60"])
    race = path / "rootfs/race"
    (race / "dir").mkdir(parents=True)
    (race / "dir/inside.txt").write_text("inside")
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/payload").write_text("PAYLOAD")
    (src / "top").write_text("TOP")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.rename(race / "dir", race / "real")
                os.symlink(canary, race / "dir")
                time.sleep(0.0005)
                os.unlink(race / "dir")
                os.rename(race / "real", race / "dir")

    def read_secret() -> None:
        # No file of that name is in the container: whatever is read came from the host.
        text = c.files.read_text("/race/dir/secret")
        raise AssertionError(f"read {text!r} through the swapped directory")

    c = Container.create("race1", path, store=store)
    swapper = threading.Thread(target=swap)
    copies = failures = 0
    try:
        c.start()
        swapper.start()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            out = tmp_path / f"out{copies}"
            for op in (
                lambda: c.files.copy_in(src, "/race/dir/in"),
                lambda: c.files.copy_in(src / "top", "/race/dir/top"),
                lambda out=out: c.files.copy_out("/race/dir", out),
                lambda: c.files.write_text("/race/dir/written", "W"),
                read_secret,
            ):
                try:
                    op()
                    copies += 1
                except OSError:  # the path changed under the copy: a refusal is safe
                    failures += 1
    finally:
        stop.set()
        if swapper.is_alive():
            swapper.join()
        c.destroy()
    print(f"\nswap race: {copies} operations succeeded, {failures} refused")
    assert copies > 0
    for out in tmp_path.glob("out*"):  # nothing of the host's canary was copied out
        for here, _, names in os.walk(out):
            for name in names:
                p = Path(here, name)
                if not p.is_symlink():
                    assert b"HOST SECRET" not in p.read_bytes(), p


# -- large files ---------------------------------------------------------------------------

GIB = 1 << 30


def test_one_gib_round_trip_with_constant_memory(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    back = tmp_path / "back.bin"
    markers = {0: b"start", GIB // 3: b"third", GIB - 3: b"end"}
    with open(big, "wb") as f:  # sparse, with data at a few offsets
        f.truncate(GIB)
        for offset, data in markers.items():
            f.seek(offset)
            f.write(data)
    c = Container.create("big1", bundle(["sleep", "60"]), store=store)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        c.files.copy_in(big, "/big.bin")
        assert c.files.stat("/big.bin").size == GIB
        c.files.copy_out("/big.bin", back)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        assert grown < 64 * 1024 * 1024, f"peak RSS grew by {grown >> 20} MiB"
        assert back.stat().st_size == GIB
        with open(back, "rb") as f:
            for offset, data in markers.items():
                f.seek(offset)
                assert f.read(len(data)) == data
            f.seek(4096)
            assert f.read(1 << 20) == bytes(1 << 20)
        # The copy in the container's rootfs too (it is the bundle's directory).
        assert (Path(c.bundle) / "rootfs/big.bin").stat().st_size == GIB
    finally:
        c.destroy()
        for p in (big, back):
            p.unlink(missing_ok=True)


def test_copy_to_a_closed_container_after_run(store: FileStore, bundle: BundleFactory) -> None:
    """run() destroys the container: its gofer goes with it, nothing is left."""
    assert Container.run("run1", bundle(["true"]), store=store) == 0
    assert "run1" not in Container.list(store=store)  # processes: the leak fixture checks


# -- resolution beneath a root: openat2 and the fallback walk agree -------------------------

HOSTILE_PATHS = [
    "etc/shadow",
    "evil/to_root/etc/shadow",
    "evil/up/etc/shadow",
    "evil/to_shadow",
    "/../../etc/shadow",
    "evil/proc_root/etc/shadow",
    "evil/to_canary/secret",
    "evil/loop",
    "evil/to_root",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_open_beneath_fallback_resolves_as_openat2(
    tmp_path: Path, canary: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Where openat2 is missing (ENOSYS), the component walk gives the same file, or fails
    too: never a file outside the root."""
    from sandboxrt._os import beneath

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/shadow").write_text("inside")
    evil = root / "evil"
    evil.mkdir()
    (evil / "to_root").symlink_to("/")
    (evil / "up").symlink_to("../../..")
    (evil / "to_shadow").symlink_to("/etc/shadow")
    (evil / "proc_root").symlink_to("/proc/self/root")
    (evil / "to_canary").symlink_to(canary)
    (evil / "loop").symlink_to("loop")
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    outcomes = []
    try:
        for have in (True, False):
            monkeypatch.setattr(beneath, "_have_openat2", have)
            try:
                fd = beneath.open_beneath(root_fd, path)
            except OSError as exc:
                outcomes.append(type(exc).__name__ if exc.errno != 40 else "ELOOP")
                continue
            try:
                st = os.fstat(fd)
                where = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
            assert where == str(root) or where.startswith(f"{root}/"), where
            outcomes.append(f"{st.st_dev}:{st.st_ino}")
    finally:
        os.close(root_fd)
    assert outcomes[0] == outcomes[1] or "proc_root" in path, outcomes


@pytest.mark.parametrize("umask", [None, 0o027])
def test_modes_follow_the_container_users_umask(
    store: FileStore, bundle: BundleFactory, umask: int | None
) -> None:
    """What the file API creates gets the modes the container's own process would give it
    (0666/0777 less ``process.user.umask``, 022 when unset, as runc), unless given; the
    container's process runs with that umask too, whatever the caller's is."""
    path = bundle(["sh", "-c", "umask; touch /tmp/byproc; stat -c %a /tmp/byproc"])
    edit_config(path, user={"uid": 0, "gid": 0, **({"umask": umask} if umask else {})})
    effective = 0o022 if umask is None else umask
    saved = os.umask(0o077)  # the caller's, inherited by a sandbox launched afresh
    try:
        c = Container.create(
            "modes", path, store=store, stdout=subprocess.PIPE, launcher=SubprocessLauncher()
        )
    finally:
        os.umask(saved)
    try:
        c.files.write_text("/tmp/made", "x")
        c.files.mkdir("/tmp/dir")
        c.files.write_bytes("/tmp/exact", b"y", permissions=0o604)
        modes = {name: c.files.stat(f"/tmp/{name}").mode & 0o7777 for name in ("made", "dir")}
        assert modes == {"made": 0o666 & ~effective, "dir": 0o777 & ~effective}
        assert c.files.stat("/tmp/exact").mode & 0o7777 == 0o604
        c.start()
        assert c.stdout is not None
        out = c.stdout.read().decode().split()
        assert c.wait(timeout=30) == 0
        assert out == [f"{effective:04o}", f"{0o666 & ~effective:o}"]
    finally:
        if c.stdout is not None:
            c.stdout.close()
        c.destroy()


def test_one_path_names_one_file_for_every_verb(container: Container) -> None:
    """``..`` after a symlink is the parent of its target for every verb, as the kernel
    (and so the container's own processes) resolves it; a path ending in ``..`` or ``.``
    names no entry to make or remove, and a trailing slash asks for a directory."""
    files = container.files
    files.mkdir("/tmp/app/releases/v2", parents=True)
    files.write_text("/tmp/app/keep_me", "kept")
    files.symlink("/tmp/app/current", "/tmp/app/releases/v2")
    assert files.listdir("/tmp/app/current/..") == ["v2"]
    files.write_text("/tmp/app/current/../made", "x")  # made in releases/, as open(2) would
    assert files.read_text("/tmp/app/releases/made") == "x"
    assert files.read_text("/tmp/app/current/../made") == "x"
    files.remove("/tmp/app/current/../made")
    assert files.listdir("/tmp/app/releases") == ["v2"]
    for path in ("/tmp/app/current/..", "/tmp/app/current/.", "/tmp/app/.."):
        with pytest.raises(ContainerFileError, match=r"ending in \. or \.\.") as refused:
            files.remove(path, recursive=True)
        assert refused.value.errno == errno.EINVAL
    assert files.listdir("/tmp/app") == ["current", "keep_me", "releases"]
    with pytest.raises(IsADirectoryError):
        files.write_text("/tmp/app/new/", "x")
    with pytest.raises(NotADirectoryError):
        files.remove("/tmp/app/keep_me/")
    assert not files.exists("/tmp/app/new")
    files.remove("/tmp/app", recursive=True)


def test_exists_is_false_where_path_exists_says_so(container: Container) -> None:
    files = container.files
    files.write_text("/tmp/plain", "x")
    files.symlink("/tmp/loop", "/tmp/loop")
    assert not files.exists("/tmp/plain/below")  # ENOTDIR
    assert not files.exists("/tmp/loop")  # ELOOP
    assert not files.exists("/tmp/nothing")
    assert files.exists("/tmp/plain")


def test_modes_are_checked_before_anything_is_made(container: Container) -> None:
    files = container.files
    with pytest.raises(TypeError, match="permissions must be an int"):
        files.write_text("/tmp/m1", "x", permissions="644")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mode must be an int"):
        files.mkdir("/tmp/m2", 493.0)  # type: ignore[arg-type]
    for bad in (-1, 0o170777):
        with pytest.raises(InvalidArgumentError, match="permission bits") as e:
            files.write_text("/tmp/m3", "x", permissions=bad)
        assert 'container "files1"' in str(e.value)
        with pytest.raises(InvalidArgumentError, match="permission bits"):
            files.mkdir("/tmp/m4", bad)
    assert not any(files.exists(f"/tmp/m{i}") for i in range(1, 5))


def test_mkdir_gives_its_mode_to_the_last_directory_only(container: Container) -> None:
    """As ``mkdir -p -m``: the parents it makes get 0777 less the user's umask."""
    files = container.files
    files.mkdir("/tmp/pa/pb/pc", 0o700, parents=True)
    assert files.stat("/tmp/pa").permissions == 0o755
    assert files.stat("/tmp/pa/pb").permissions == 0o755
    assert files.stat("/tmp/pa/pb/pc").permissions == 0o700


def test_a_deep_tree_is_removed(container: Container) -> None:
    """Deeper than Python's recursion limit and the default fd limit of 1024."""
    files = container.files
    deep = "/tmp/deep/" + "d/" * 1100
    files.mkdir(deep, parents=True)
    files.write_text(deep + "leaf", "x")
    files.remove("/tmp/deep", recursive=True)
    assert not files.exists("/tmp/deep")


def test_what_is_made_in_a_set_group_id_directory_gets_its_group(container: Container) -> None:
    shared = rootfs(container) / "tmp/shared"
    shared.mkdir()
    os.chown(shared, 0, 2000)
    shared.chmod(0o2775)
    files = container.files
    files.mkdir("/tmp/shared/sub")
    files.write_text("/tmp/shared/file", "x")
    files.symlink("/tmp/shared/link", "file")
    sub = files.stat("/tmp/shared/sub")
    assert sub.gid == 2000 and sub.mode & 0o2000  # (and the bit, as mkdir(2) keeps it)
    assert files.stat("/tmp/shared/file").gid == 2000
    assert files.stat("/tmp/shared/link", follow_symlinks=False).gid == 2000


def test_copies_merge_into_what_is_there(container: Container, tmp_path: Path) -> None:
    """A second copy of the same tree replaces the symlinks it finds, as ``cp -r`` does."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("one")
    (src / "link").symlink_to("file")
    files = container.files
    files.copy_in(src, "/tmp/m")
    (src / "file").write_text("two")
    files.copy_in(src, "/tmp/m")
    assert files.read_text("/tmp/m/link") == "two"
    out = tmp_path / "out"
    files.copy_out("/tmp/m", out)
    files.copy_out("/tmp/m", out)
    assert os.readlink(out / "link") == "file" and (out / "link").read_text() == "two"


def test_a_mount_point_is_not_removed(container: Container, host_dir: Path) -> None:
    """``EBUSY``, as the container's own ``rmdir`` gets: the gofer, in a mount namespace
    of its own, detached the container's bind (and a recursive remove went on into it,
    with the gofer's privileges, deleting host files)."""
    files = container.files
    with pytest.raises(ContainerFileError) as busy:
        files.remove("/data")
    assert busy.value.errno == errno.EBUSY
    with pytest.raises(ContainerFileError) as busy:
        files.remove("/data", recursive=True)
    assert busy.value.errno == errno.EBUSY
    assert (host_dir / "from-host.txt").read_text() == "host side\n"
    assert files.read_text("/data/from-host.txt") == "host side\n"  # (still mounted)
