"""The sandbox's processes as the host sees them: the supervisor reaps orphans, the
namespaces made or joined, the control socket, the init's root and what create leaves
unrun."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BundleFactory, edit_config, needs_busybox, needs_root, wait_until

from sandboxrt import Container, FileStore, Status
from sandboxrt._os import procfs
from sandboxrt._proc.init import PROCESS_NAME as INIT_NAME

pytestmark = [needs_root, needs_busybox]

#: The namespaces a default spec makes, as /proc/PID/ns names them.
FRESH_NAMESPACES = ("pid", "mnt", "uts", "ipc", "net", "cgroup")
#: The devices the kernel makes in every new network namespace once their tunnel module is
#: loaded (``net.core.fb_tunnels_only_for_init_net`` 0): nothing a runtime made.
FALLBACK_TUNNELS = {
    name.encode()
    for name in (
        "sit0", "tunl0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip_vti0", "ip6_vti0",
        "ip6gre0",
    )
}  # fmt: skip
#: ``IFF_UP`` in /sys/class/net/<dev>/flags.
IFF_UP = 0x1
#: ``__SO_ACCEPTCON`` in the flags column of /proc/net/unix: a listening socket.
SO_ACCEPTCON = 0x10000


# -- helpers ---------------------------------------------------------------------------------


def ns_links(pid: int | str, kinds: tuple[str, ...] = FRESH_NAMESPACES) -> dict[str, str]:
    """The namespaces of process ``pid`` (``"self"`` for this one): ``{kind: 'uts:[...]'}``."""
    return {kind: os.readlink(f"/proc/{pid}/ns/{kind}") for kind in kinds}


def init_pid(container: Container) -> int:
    """The host pid of ``container``'s init: its process whose parent is the supervisor
    (pid 1 of the sandbox), asked before it makes any orphan (which the supervisor
    adopts)."""
    inits = [info.host_pid for info in container.processes() if info.ppid == 1]
    assert len(inits) == 1, container.processes()
    return inits[0]


def supervisor_pid(container: Container) -> int:
    sandbox = container.sandbox
    assert sandbox is not None
    return sandbox.pid


def tree_below(root: int) -> dict[int, procfs.StatInfo]:
    """Every process below ``root`` on the host, zombies included (their ``cmdline`` is
    empty, so they are found through the state and ppid of ``/proc/PID/stat``)."""
    stats: dict[int, procfs.StatInfo] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = procfs.read_stat(int(name))
            if info is not None:
                stats[int(name)] = info
    children: dict[int, list[int]] = {}
    for pid, info in stats.items():
        children.setdefault(info.ppid, []).append(pid)
    found: dict[int, procfs.StatInfo] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = stats[child]
            todo.append(child)
    return found


def zombies_below(root: int) -> list[int]:
    return sorted(pid for pid, info in tree_below(root).items() if info.state == "Z")


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def gone(pid: int, start_ticks: int) -> bool:
    """Whether process ``pid`` (started at ``start_ticks``) has been reaped: no entry in
    /proc, or one of another process that reused the pid."""
    info = procfs.read_stat(pid)
    return info is None or info.start_ticks != start_ticks


def unix_sockets(net_file: str) -> dict[int, tuple[int, str]]:
    """The Unix sockets of ``/proc/.../net/unix``: ``{inode: (flags, path)}`` (path ``""``
    for an unnamed socket, ``"@..."`` for an abstract one)."""
    sockets: dict[int, tuple[int, str]] = {}
    with open(net_file) as f:
        next(f)  # the header
        for line in f:
            fields = line.split(maxsplit=7)
            # Num RefCount Protocol Flags Type St Inode [Path]
            sockets[int(fields[6])] = (
                int(fields[3], 16),
                fields[7].rstrip("\n") if len(fields) > 7 else "",
            )
    return sockets


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds (its ``socket:[N]`` fds)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[len("socket:[") : -1]))
    return found


def mountinfo(text: str) -> list[dict[str, str]]:
    """The lines of a mountinfo file: mount id, parent id, device, root, mount point."""
    lines = []
    for line in text.splitlines():
        fields = line.split()
        lines.append(
            {
                "id": fields[0],
                "parent": fields[1],
                "dev": fields[2],
                "root": fields[3],
                "point": fields[4],
                "fstype": line.split(" - ", 1)[1].split()[0],
            }
        )
    return lines


def path_in_its_filesystem(path: Path) -> tuple[str, str]:
    """``(major:minor, root)`` as a mountinfo line of a bind of ``path`` shows them: the
    host mount holding it (the longest mount point above it), and the path within that
    mount's filesystem."""
    resolved = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        mounts = mountinfo(f.read())
    best = max(
        (
            m
            for m in mounts
            if resolved == m["point"] or resolved.startswith(m["point"].rstrip("/") + "/")
        ),
        key=lambda m: len(m["point"]),
    )
    below = os.path.relpath(resolved, best["point"])
    root = os.path.normpath(os.path.join(best["root"], below))
    st = os.stat(resolved)
    assert best["dev"] == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    return best["dev"], root


def under(path: str, prefixes: set[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


@pytest.fixture
def holder() -> Iterator[int]:
    """A process of this test in new UTS, IPC and network namespaces (a holder to join
    by path), killed by pid after the test."""
    process = subprocess.Popen(["unshare", "--uts", "--ipc", "--net", "sleep", "1000"])
    try:
        ours = ns_links("self", ("uts", "ipc", "net"))
        # unshare execs sleep in the same process once it has unshared.
        wait_until(
            lambda: all(
                link != ours[kind]
                for kind, link in ns_links(process.pid, ("uts", "ipc", "net")).items()
            )
        )
        yield process.pid
    finally:
        process.kill()
        process.wait()


# -- 1. the supervisor reaps orphans ---------------------------------------------------------


def test_the_supervisor_reaps_the_orphans_it_adopts(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Orphans of the container's processes are reparented to the supervisor (PID 1 of
    the sandbox, a child subreaper), which reaps them when they die: none is left a
    zombie, neither those killed nor those that exit on their own. Zombies are looked
    for through the state field of /proc/PID/stat (a zombie has no cmdline)."""
    script = (
        # Five long orphans: each subshell exits at once, leaving its sleep behind.
        "for i in 1 2 3 4 5; do (sleep 1000 &); done; echo spawned; read go; "
        "killall sleep; "
        # Five short ones, which print their pid (in the sandbox) and exit on their own.
        "for i in 1 2 3 4 5; do (sleep 0.05 & echo $!); done; echo done; exec sleep 1000"
    )
    path = bundle(["sh", "-c", script])
    with Container.create(
        "orphans", path, store=store, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as container:
        init = init_pid(container)
        container.start()
        assert container.stdin is not None and container.stdout is not None
        assert container.stdout.readline() == b"spawned\n"
        supervisor = supervisor_pid(container)

        def long_orphans() -> dict[int, int]:
            return {
                pid: info.start_ticks
                for pid, info in tree_below(supervisor).items()
                if info.ppid == supervisor and cmdline(pid) == b"sleep\x001000\x00"
            }

        # They exist, and their parent is the supervisor (not the init, not the host's).
        wait_until(lambda: len(long_orphans()) == 5)
        orphans = long_orphans()
        assert init not in orphans and cmdline(init).startswith(b"sh\x00-c\x00")

        container.stdin.write(b"go\n")
        container.stdin.flush()
        short = [container.stdout.readline() for _ in range(5)]
        assert container.stdout.readline() == b"done\n"
        short_pids = [int(line) for line in short]
        assert len(set(short_pids)) == 5 and 1 not in short_pids

        # Killed or exited, each is reaped: gone from /proc (a zombie stays there), on
        # the host and in the sandbox's own procfs (as the container sees its pids).
        sandbox_proc = f"/proc/{init}/root/proc"
        assert os.path.isdir(f"{sandbox_proc}/1")
        wait_until(lambda: all(gone(pid, ticks) for pid, ticks in orphans.items()))
        wait_until(lambda: not any(os.path.exists(f"{sandbox_proc}/{p}") for p in short_pids))
        wait_until(lambda: not zombies_below(supervisor))
        # The sandbox lives on, its init untouched.
        assert container.status == Status.RUNNING
        assert cmdline(init) == b"sleep\x001000\x00"


# -- 2. fresh namespaces, loopback up --------------------------------------------------------


def test_a_default_spec_gets_fresh_namespaces_and_loopback_up(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The init of a default-spec container is in PID, mount, UTS, IPC, network and
    cgroup namespaces other than this process's, shares the sandbox's (the supervisor's)
    PID, UTS, IPC and network namespaces, and sees only ``lo``, with ``IFF_UP`` set (and
    the fallback devices a loaded tunnel module gives every network namespace)."""
    path = bundle(
        ["sh", "-c", "echo $(ls /sys/class/net); cat /sys/class/net/lo/flags; exec sleep 1000"]
    )
    with Container.create("fresh", path, store=store, stdout=subprocess.PIPE) as container:
        init = init_pid(container)
        container.start()
        assert container.stdout is not None
        interfaces = container.stdout.readline().split()
        flags = int(container.stdout.readline(), 16)
        theirs = ns_links(init)
        supervisor = ns_links(supervisor_pid(container), ("pid", "uts", "ipc", "net"))
    ours = ns_links("self")
    for kind in FRESH_NAMESPACES:
        assert theirs[kind] != ours[kind], kind
    assert {kind: theirs[kind] for kind in supervisor} == supervisor
    assert b"lo" in interfaces
    assert set(interfaces) - FALLBACK_TUNNELS == {b"lo"}, interfaces
    assert flags & IFF_UP, hex(flags)


# -- 3. namespaces joined by path ------------------------------------------------------------


def test_namespaces_named_by_path_are_joined(
    store: FileStore, bundle: BundleFactory, holder: int
) -> None:
    """UTS, IPC and network namespaces the spec names by path (those of a holder this
    test made) are the ones the init (and the supervisor, whose sandbox they are) is in:
    the very namespaces, not a copy that looks alike. The PID and mount namespaces,
    named by no path, are still new. (No hostname: none is set anywhere.)"""
    joined = ("uts", "ipc", "net")
    spec_type = {"uts": "uts", "ipc": "ipc", "net": "network"}

    def join(document: dict[str, Any]) -> None:
        for ns in document["linux"]["namespaces"]:
            for kind in joined:
                if ns["type"] == spec_type[kind]:
                    ns["path"] = f"/proc/{holder}/ns/{kind}"
        document.pop("hostname", None)
        document.pop("domainname", None)

    path = edit_config(bundle(["sleep", "1000"]), join)
    expected = ns_links(holder, joined)
    ours = ns_links("self")
    with Container.create("joiner", path, store=store) as container:
        init = init_pid(container)
        container.start()
        theirs = ns_links(init)
        supervisor = ns_links(supervisor_pid(container), joined)
    assert {kind: theirs[kind] for kind in joined} == expected
    assert supervisor == expected
    for kind in ("pid", "mnt"):
        assert theirs[kind] != ours[kind], kind
    # The holder kept its own: joining changed nothing of it.
    assert ns_links(holder, joined) == expected


# -- 4. the control socket -------------------------------------------------------------------


def test_the_control_socket_is_a_private_file_socket_and_no_abstract_one_is_held(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The supervisor's control socket is a socket file of mode 0600 owned by root, in
    the sandbox's runtime directory under the store's root; and of the Unix sockets the
    supervisor holds (its fds, looked up in the host's and the sandbox's /proc/net/unix)
    none is abstract, which any process of the network namespace could connect to."""
    with Container.create("ctl", bundle(["sleep", "1000"]), store=store) as container:
        container.start()
        sandbox = container.sandbox
        assert sandbox is not None
        control = Path(sandbox.control_socket)
        info = os.stat(control, follow_symlinks=False)
        supervisor = sandbox.pid
        held = socket_inodes(supervisor)
        tables = {
            **unix_sockets("/proc/self/net/unix"),
            **unix_sockets(f"/proc/{supervisor}/net/unix"),
        }
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == 0
    assert control.parent.parent == Path(store.runtime_dir)
    assert control.is_relative_to(store.root)
    unix = {inode: tables[inode] for inode in held if inode in tables}
    # Found: at least the listening control socket, bound to a path in the file system.
    listening = [path for flags, path in unix.values() if flags & SO_ACCEPTCON]
    assert listening and all(path.startswith("/") for path in listening), unix
    abstract = [path for _, path in unix.values() if path.startswith("@")]
    assert not abstract, abstract


# -- 5. pivot_root, not chroot ---------------------------------------------------------------

#: Lists the root, escapes a chroot the classic way (chroot into a subdirectory, then
#: climb from a working directory left outside it) and lists the root reached; then
#: prints the mount table and waits. Safe: listings, in the container's own namespace.
ESCAPE = """
import os, sys, time
print(sorted(os.listdir("/")))
os.makedirs("/tmp/jail", exist_ok=True)
os.chroot("/tmp/jail")
for _ in range(64):
    os.chdir("..")
os.chroot(".")
print(sorted(os.listdir("/")))
print(open("/proc/self/mountinfo").read(), end="")
print("END", flush=True)
time.sleep(1000)
"""

#: Run by a helper process of the test (argv[1]: the init's host pid): joins the init's
#: mount namespace (its root becomes the init's) and, with statx's unique mount id,
#: statmount and listmount (Linux 6.8), prints how far the root mount is from the
#: namespace's root mount and how many mounts the namespace holds, hidden ones too
#: (mountinfo shows only those beneath the root). Reads only. "unsupported" on older
#: kernels.
COUNT_MOUNTS = """
import ctypes, errno, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_STATX, SYS_STATMOUNT, SYS_LISTMOUNT = 332, 457, 458
STATX_MNT_ID_UNIQUE, STATMOUNT_MNT_BASIC, CLONE_NEWNS = 0x4000, 0x2, 0x20000
def check(result, what):
    if result < 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL):
            print("unsupported", what)
            sys.exit(0)
        raise OSError(code, what)
    return result
def request(mount_id, param=0):
    return ctypes.c_char_p(struct.pack("IIQQQ", 32, 0, mount_id, param, 0))
if os.uname().machine != "x86_64":  # (the system call numbers below are x86-64's)
    print("unsupported", os.uname().machine)
    sys.exit(0)
ns = os.open(f"/proc/{sys.argv[1]}/ns/mnt", os.O_RDONLY)
check(libc.setns(ns, CLONE_NEWNS), "setns")
statx = ctypes.create_string_buffer(256)
check(libc.syscall(SYS_STATX, -100, b"/", 0, STATX_MNT_ID_UNIQUE, statx), "statx")
if not struct.unpack_from("I", statx.raw, 0)[0] & STATX_MNT_ID_UNIQUE:
    print("unsupported statx")
    sys.exit(0)
chain = [struct.unpack_from("Q", statx.raw, 144)[0]]
while len(chain) < 64:
    out = ctypes.create_string_buffer(512)
    asked = request(chain[-1], STATMOUNT_MNT_BASIC)
    check(libc.syscall(SYS_STATMOUNT, asked, out, 512, 0), "statmount")
    mount_id, parent = struct.unpack_from("QQ", out.raw, 40)
    if parent == mount_id:
        break
    chain.append(parent)
ids = (ctypes.c_uint64 * 65536)()
count = check(libc.syscall(SYS_LISTMOUNT, request(chain[-1]), ids, 65536, 0), "listmount")
print(len(chain), count)
"""


def test_the_init_runs_on_its_rootfs_through_pivot_root(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The init's root is the bundle's rootfs, made the root of its mount namespace by
    ``pivot_root`` with the old root detached. Its mount table has ``/`` as a mount of
    the rootfs itself (device and path within its file system) and no host mount but
    those the spec asks for; climbing out of a chroot comes back to that same root;
    and its mount namespace holds no mount the init cannot see: its root mount sits on
    the namespace's root mount, and the namespace has as many mounts as its mountinfo
    lists. (A chroot, even into the rootfs attached over ``/``, passes the first checks
    but leaves the host's mounts in the namespace, beneath the root, where mountinfo
    does not show them.)"""
    path = bundle(["python3", "-c", ESCAPE], rootfs="host_usr")

    def allow_chroot(document: dict[str, Any]) -> None:
        caps = document["process"]["capabilities"]
        for kind in ("bounding", "effective", "permitted"):
            caps[kind] = [*caps[kind], "CAP_SYS_CHROOT"]

    edit_config(path, allow_chroot)
    rootfs = path / "rootfs"
    with Container.create("pivot", path, store=store, stdout=subprocess.PIPE) as container:
        init = init_pid(container)
        # Created: the init is already on its root (the rootfs, by device and inode).
        seen, real = os.stat(f"/proc/{init}/root"), os.stat(rootfs)
        assert (seen.st_dev, seen.st_ino) == (real.st_dev, real.st_ino)
        container.start()
        assert container.stdout is not None
        lines = []
        while (line := container.stdout.readline().decode()) not in ("END\n", ""):
            lines.append(line)
        assert line == "END\n", lines
        counted = subprocess.run(
            [sys.executable, "-c", COUNT_MOUNTS, str(init)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        spec = container.spec
    before, after, *table = lines
    assert before == after, "the chroot escape reached another root"
    assert "'usr'" in before and "'tmp'" in before
    mounts = mountinfo("".join(table))
    roots = [m for m in mounts if m["point"] == "/"]
    assert len(roots) == 1, table
    assert (roots[0]["dev"], roots[0]["root"]) == path_in_its_filesystem(rootfs)
    assert spec.linux is not None
    asked = {m.destination for m in spec.mounts or []}
    asked |= set(spec.linux.masked_paths or []) | set(spec.linux.readonly_paths or [])
    points = {m["point"] for m in mounts}
    assert all(under(point, asked) for point in points - {"/"}), points
    with open("/proc/self/mountinfo") as f:
        host_points = {m["point"] for m in mountinfo(f.read())}
    host_only = {p for p in host_points if p != "/" and not under(p, asked)}
    assert host_only, "the host has no mount of its own to look for"
    assert not points & host_only
    if counted[0] == "unsupported":
        pytest.skip(f"no {counted[1]} with unique mount ids here (Linux 6.8)")
    depth, total = (int(n) for n in counted)
    assert depth == 2, "the root is not mounted right on the namespace's root mount"
    assert total == len(mounts), "the mount namespace holds mounts the init cannot see"


# -- 6. create runs nothing of the program --------------------------------------------------


def test_create_leaves_the_program_unrun_until_start(
    store: FileStore, bundle: BundleFactory
) -> None:
    """After ``create`` the init waits on its rootfs without having exec'd the program:
    the file the program makes is absent (seen through the host's view of the rootfs and
    through the init's root), the init is still the runtime's process. After ``start``
    the program runs and the file appears."""
    path = bundle(["sh", "-c", "touch /tmp/ran; exec sleep 1000"])
    marker = path / "rootfs" / "tmp" / "ran"
    with Container.create("unrun", path, store=store) as container:
        init = init_pid(container)
        through_init = Path(f"/proc/{init}/root/tmp/ran")
        for _ in range(2):  # right away, and a moment later
            assert container.status == Status.CREATED
            assert not marker.exists() and not through_init.exists()
            assert comm(init) == INIT_NAME
            assert not cmdline(init).startswith(b"sh\x00")
            time.sleep(0.2)
        container.start()
        wait_until(marker.exists)
        assert through_init.exists()
        wait_until(lambda: cmdline(init) == b"sleep\x001000\x00")
        assert container.status == Status.RUNNING
