"""New user namespaces: the container's root is an unprivileged host uid.

Real sandboxes map container ids 0-65535 to host ids 100000-165535 (``MAPPED``).
The escape probes only read, or write into the test's own directory: if
isolation failed they would do no harm.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REOPEN_STDIO,
    BundleFactory,
    edit_config,
    has_sys_resource,
    needs_busybox,
    needs_root,
    reopened_stdio,
    run_output,
)
from test_overlay import overlay, read_layer, running, sh

from sandboxrt import (
    Container,
    ExecError,
    FileStore,
    InitError,
    Pod,
    ProtocolError,
    SpecError,
    default_spec,
    write_spec_file,
)
from sandboxrt._core import idmap
from sandboxrt._core.protocol import Reply, Request
from sandboxrt._os import cgroups, procfs

HOST_BASE = 100000
MAPPED = [{"containerID": 0, "hostID": HOST_BASE, "size": 65536}]

pytestmark = [needs_root, needs_busybox]


def with_userns(document: dict[str, Any], mappings: list[dict[str, int]] = MAPPED) -> None:
    """An ``edit_config`` change: a new user namespace mapped by ``mappings``."""
    document["linux"]["namespaces"].append({"type": "user"})
    document["linux"]["uidMappings"] = mappings
    document["linux"]["gidMappings"] = mappings


def test_create_refuses_an_unmapped_root_naming_the_container(
    store: FileStore, bundle: BundleFactory
) -> None:
    path = edit_config(
        bundle(), lambda d: with_userns(d, [{"containerID": 1, "hostID": HOST_BASE, "size": 9}])
    )
    with pytest.raises(SpecError, match=r'(?s)container "u1".*must map uid 0'):
        Container.create("u1", path, store=store)
    assert Container.list(store=store) == []


# -- real sandboxes --------------------------------------------------------------------------


def proc_status(pid: int | str) -> dict[str, str]:
    """The fields of ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


def host_ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of host process ``pid``."""
    fields = proc_status(pid)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def gofer_status(container: Container) -> dict[str, str]:
    """:func:`proc_status` of the container's gofer, once it has its start."""
    container.files.exists("/")
    gofer = container._store.load(container.id).gofer
    assert gofer is not None
    return proc_status(gofer.pid)


def test_the_containers_root_is_an_unprivileged_host_uid(
    store: FileStore, bundle: BundleFactory
) -> None:
    script = "id -u; id -g; cat /proc/self/uid_map; cat /proc/self/gid_map; hostname"
    path = edit_config(bundle(["sh", "-c", script]), with_userns)
    code, out = run_output(store, path)
    assert code == 0, out
    lines = out.split()
    assert lines[:2] == ["0", "0"]
    assert lines[2:5] == ["0", str(HOST_BASE), "65536"]
    assert lines[5:8] == ["0", str(HOST_BASE), "65536"]
    assert lines[8] == "sandboxrt"


def test_a_device_missing_on_the_host_is_named(store: FileStore, bundle: BundleFactory) -> None:
    """A user namespace binds device nodes from the host's (as runc): one the host lacks
    failed with "No such file or directory: 'dev/nonexist'", a relative path of nothing."""

    def change(document: dict[str, Any]) -> None:
        with_userns(document)
        node = {"path": "/dev/sbrt-nonexist", "type": "c", "major": 1, "minor": 3}
        document["linux"]["devices"] = [node]

    with pytest.raises(InitError, match=r"device /dev/sbrt-nonexist of linux\.devices") as info:
        Container.create("nodev", edit_config(bundle(["true"]), change), store=store)
    assert "the host's /dev/sbrt-nonexist" in str(info.value)
    assert Container.list(store=store) == []


def test_the_supervisor_and_init_run_as_the_mapped_root_and_join_the_cgroup(
    store: FileStore, bundle: BundleFactory
) -> None:
    container = Container.create(
        "u1", edit_config(bundle(["sleep", "100"]), with_userns), store=store
    )
    try:
        supervisor = container.state().pid
        assert host_ids(supervisor) == (HOST_BASE, HOST_BASE)
        container.start()
        record = store.load("u1").cgroup
        assert record is not None
        pids = cgroups.load(record, container_id="u1").pids()
        assert pids, "the container's init is not in its cgroup"
        for pid in pids:
            assert host_ids(pid) == (HOST_BASE, HOST_BASE)
            info = procfs.read_process(pid)
            assert info is not None and "sleep" in " ".join(info.cmdline)
        container.kill(all=True, sig=9)
        assert container.wait(timeout=10) == -9
    finally:
        container.destroy()


def test_the_containers_root_cannot_read_or_write_the_hosts_files(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """A host directory bound in: its root-only file is unreadable, and the directory
    (the host root's, 0755) takes no new file. Without a user namespace the same
    container reads the file (the probe's control)."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    secret = shared / "secret"
    secret.write_text("host only\n")
    secret.chmod(0o600)
    script = "cat /shared/secret; echo probe > /shared/new; echo done"

    def bind_shared(document: dict[str, Any]) -> None:
        document["mounts"].append(
            {"destination": "/shared", "type": "bind", "source": str(shared), "options": ["rbind"]}
        )

    plain = edit_config(bundle(["sh", "-c", script]), bind_shared)
    (plain / "rootfs" / "shared").mkdir()  # (a mount point the mapped root may not make)
    _, out = run_output(store, plain, "plain")
    assert "host only" in out, out

    path = edit_config(bundle(["sh", "-c", script]), lambda d: (bind_shared(d), with_userns(d)))
    (path / "rootfs" / "shared").mkdir()
    _, out = run_output(store, path, "mapped")
    assert "host only" not in out
    assert out.count("Permission denied") == 2, out
    assert not (shared / "new").exists() or (shared / "new").stat().st_uid == 0  # plain's
    assert sorted(p.name for p in shared.iterdir()) == ["new", "secret"]
    assert (shared / "new").stat().st_uid == 0  # written by the plain container only


def test_a_mount_point_the_mapped_root_may_not_make_is_named(
    store: FileStore, bundle: BundleFactory
) -> None:
    def mapped_with_tmpfs(document: dict[str, Any]) -> None:
        with_userns(document)
        document["mounts"].append({"destination": "/data", "type": "tmpfs", "source": "tmpfs"})

    path = edit_config(bundle(), mapped_with_tmpfs)
    with pytest.raises(InitError, match="making the mount point /data: Permission denied"):
        Container.create("u1", path, store=store)
    assert Container.list(store=store) == []


def test_exec_before_start_and_as_another_user_in_the_namespace(
    store: FileStore, bundle: BundleFactory
) -> None:
    container = Container.create(
        "u1", edit_config(bundle(["sleep", "100"]), with_userns), store=store
    )
    try:
        # Created: the init has not exec'd yet (not dumpable, its memory the host
        # namespace's): the exec joins it through the fds it handed its supervisor.
        process = container.exec(
            ["sh", "-c", "id -u; cat /proc/self/uid_map"], stdout=subprocess.PIPE
        )
        out, _ = process.communicate(timeout=20)
        assert process.returncode == 0
        assert out.decode().split() == ["0", "0", str(HOST_BASE), "65536"]
        container.start()
        process = container.exec(["id"], user="1000:1000", stdout=subprocess.PIPE)
        out, _ = process.communicate(timeout=20)
        assert out.decode().strip() == "uid=1000 gid=1000"
        assert process.pid > 0
    finally:
        container.destroy()


def test_a_user_in_the_namespace_may_reopen_its_stdio(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: the pipes go to the mapped root on the host's side, then to the user
    inside (the host's root is not mapped there: even root could not reopen them)."""
    path = edit_config(bundle(["sh", "-c", f"{REOPEN_STDIO}; exec sleep 60"]), with_userns)
    edit_config(path, lambda d: d["process"].update(user={"uid": 1000, "gid": 1000}))
    with reopened_stdio(store, path, "u-stdio", (None, 0)):
        pass
    # The caller's own pipe keeps its owner (as runc, which gives only the pipes it makes).
    r, w = os.pipe()
    try:
        own = edit_config(bundle(["true"]), with_userns)
        assert Container.run("u-own", own, store=store, stdout=w) == 0
        assert (os.fstat(w).st_uid, os.fstat(w).st_gid) == (0, 0)
    finally:
        os.close(r)
        os.close(w)


def test_files_the_file_api_makes_belong_to_the_containers_user(
    store: FileStore, bundle: BundleFactory
) -> None:
    def mapped_with_tmpfs(document: dict[str, Any]) -> None:
        with_userns(document)
        document["process"]["user"] = {"uid": 1000, "gid": 1000}
        document["mounts"].append(
            {"destination": "/work", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}
        )

    path = edit_config(bundle(["sleep", "100"]), mapped_with_tmpfs)
    (path / "rootfs" / "work").mkdir()
    container = Container.create("u1", path, store=store)
    try:
        container.start()
        container.files.write_text("/work/f", "made by the library\n")
        found = container.files.stat("/work/f")
        assert (found.uid, found.gid) == (1000, 1000)  # as the container sees it
        process = container.exec(
            ["sh", "-c", "stat -c '%u %g' /work/f; echo more >> /work/f && echo ok"],
            stdout=subprocess.PIPE,
        )
        out, _ = process.communicate(timeout=20)
        assert out.decode().split() == ["1000", "1000", "ok"]
        root = container.files.stat("/")
        assert (root.uid, root.gid) == (idmap.OVERFLOW_ID, idmap.OVERFLOW_ID)  # the host's root
    finally:
        container.destroy()


def test_a_pod_shares_its_roots_user_namespace(store: FileStore, bundle: BundleFactory) -> None:
    pod = Pod.create("pod", edit_config(bundle(["sleep", "100"]), with_userns), store=store)
    try:
        pod.root.start()
        member = pod.add_container(
            "member", bundle(["sh", "-c", "id -u; cat /proc/self/uid_map"]), stdout=subprocess.PIPE
        )
        member.start()
        assert member.wait(timeout=20) == 0
        assert member.stdout is not None
        assert member.stdout.read().decode().split() == ["0", "0", str(HOST_BASE), "65536"]
    finally:
        pod.destroy()


def test_runc_spec_rootless_runs(store: FileStore, bundle: BundleFactory) -> None:
    """``default_spec(rootless=True)`` (``runc spec --rootless``), mapped to a host uid."""
    args = ["sh", "-c", "id -u; cat /proc/self/uid_map"]
    path = bundle(args)
    spec = default_spec(args, rootless=True, host_uid=HOST_BASE, host_gid=HOST_BASE)
    write_spec_file(path / "config.json", spec)
    code, out = run_output(store, path)
    assert code == 0, out
    assert out.split() == ["0", "0", str(HOST_BASE), "1"]


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """``chown -hR``: what makes a rootfs the mapped root's."""
    for directory, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)
    os.chown(top, uid, gid)


def test_an_overlay_root_of_a_rootfs_the_mapped_root_owns_exports_its_ids(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """Overlayfs in the container's user namespace (``userxattr``): its whiteouts and
    opaque directories, and its owners as the container sees them."""
    path = edit_config(bundle(["sleep", "100"]), with_userns)
    rootfs = path / "rootfs"
    (rootfs / "data").mkdir()
    (rootfs / "data" / "gone.txt").write_text("lower\n")
    (rootfs / "opq").mkdir()
    (rootfs / "opq" / "old.txt").write_text("old\n")
    chown_tree(rootfs, HOST_BASE, HOST_BASE)
    script = "set -e; echo added > /data/new.txt; rm /data/gone.txt; rm -r /opq; mkdir /opq"
    with running(store, path, "exp", overlay()) as container:
        done = sh(container, script)
        assert done.returncode == 0, done.stderr
        owned = container.exec_run(["sh", "-c", "echo mine > /tmp/owned"], user="123:456")
        assert owned.returncode == 0, owned
        layer = io.BytesIO()
        container.export_changes(layer)
    members = read_layer(layer.getvalue())
    new = members["data/new.txt"][0]
    assert (new.uid, new.gid, members["data/new.txt"][1]) == (0, 0, b"added\n")
    assert (members["tmp/owned"][0].uid, members["tmp/owned"][0].gid) == (123, 456)
    assert members["data/.wh.gone.txt"][0].size == 0
    assert members["opq/.wh..wh..opq"][0].isreg()
    assert not any("overlay" in key for info, _ in members.values() for key in info.pax_headers)
    assert (rootfs / "data" / "gone.txt").exists()  # the bundle is untouched


def test_a_raised_hard_rlimit_and_a_lowered_oom_score_reach_the_mapped_init(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The kernel grants both only to the host's user namespace: granted before the
    sandbox leaves it, as runc does from outside."""
    if not has_sys_resource():
        pytest.skip("needs CAP_SYS_RESOURCE, which this host's root lacks")
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("RLIMIT_MEMLOCK has no hard limit to raise here")
    wanted = hard + 4096

    def limits(document: dict[str, Any]) -> None:
        with_userns(document)
        document["process"]["rlimits"] = [
            {"type": "RLIMIT_MEMLOCK", "soft": wanted, "hard": wanted}
        ]
        document["process"]["oomScoreAdj"] = -17

    script = "ulimit -H -l; cat /proc/self/oom_score_adj"
    code, out = run_output(store, edit_config(bundle(["sh", "-c", script]), limits))
    assert code == 0, out
    assert out.split() == [str(wanted // 1024), "-17"]


def test_an_rlimit_the_kernel_refuses_is_named(store: FileStore, bundle: BundleFactory) -> None:
    """RLIMIT_NOFILE past ``fs.nr_open``: refused whatever the capabilities."""
    wanted = int(Path("/proc/sys/fs/nr_open").read_text()) + 1

    def limits(document: dict[str, Any]) -> None:
        with_userns(document)
        document["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": wanted, "hard": wanted}]

    path = edit_config(bundle(), limits)
    with pytest.raises(InitError, match=f"setting RLIMIT_NOFILE to {wanted}/{wanted}"):
        Container.run("u1", path, store=store)
    assert Container.list(store=store) == []


def test_an_exec_held_before_execve_does_not_stall_the_sandbox(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Exec here takes the slow way (no agent), whose process joins the container's
    cgroup first: with that cgroup frozen behind the library's back, it waits there,
    before ``execve``, while the supervisor answers other requests; once thawed it runs."""
    import threading

    path = edit_config(bundle(["sleep", "100"]), with_userns)
    container = Container.create("u1", path, store=store)
    try:
        container.start()
        record = store.load("u1").cgroup
        assert record is not None
        cgroup = cgroups.load(record, container_id="u1")
        results: list[Any] = []
        cgroup.freeze(timeout=10)
        try:
            late = threading.Thread(
                target=lambda: results.append(
                    container.exec_run(["echo", "ran"], capture_output=True, timeout=60)
                )
            )
            late.start()
            time.sleep(0.3)  # (its process is frozen on its way)
            assert late.is_alive()
            # (Not through the container, whose lock the exec holds: the supervisor.)
            sandbox = container.sandbox
            assert sandbox is not None
            reply = sandbox.request("u1", Request("ping"), timeout=10)
            assert reply.ok
        finally:
            cgroup.thaw()
        late.join(timeout=30)
        assert not late.is_alive()
        assert results[0].returncode == 0 and results[0].stdout == b"ran\n"
    finally:
        container.destroy()


@pytest.mark.parametrize("mapped", [True, False], ids=["userns", "no-userns"])
def test_nothing_is_left_beneath_an_overlay_root(
    store: FileStore, bundle: BundleFactory, mapped: bool
) -> None:
    """``..`` of the container's root is the root: no host tree stacked under it (the
    rootfs tree an overlay in a user namespace is made from is detached again)."""
    script = "stat -c '%d %i' / /.. /bin/..; ls /bin/.. | tr '\\n' ' '; echo; ls / | tr '\\n' ' '"
    path = bundle(["sh", "-c", script])
    if mapped:
        edit_config(path, with_userns)
    container = Container.create("ov", path, store=store, config=overlay(), stdout=subprocess.PIPE)
    try:
        container.start()
        assert container.wait(timeout=20) == 0
        assert container.stdout is not None
        lines = container.stdout.read().decode().splitlines()
    finally:
        container.destroy()
    assert lines[0] == lines[1] == lines[2], lines
    assert lines[3] == lines[4], lines


def test_the_mapped_root_owns_only_where_exit_statuses_go(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The runtime directory and what the library makes there stay the host root's (the
    library trusts them); the supervisor writes exit statuses in ``exits`` alone, which
    the library reads without following a link or waiting on a FIFO."""
    path = edit_config(bundle(["sleep", "100"]), with_userns)
    container = Container.create("u1", path, store=store)
    try:
        container.start()
        sandbox = container.sandbox
        assert sandbox is not None
        runtime = Path(sandbox.runtime_dir)
        owners = {p.name: p.lstat().st_uid for p in runtime.iterdir()}
        assert owners.pop("exits") == HOST_BASE
        assert set(owners.values()) == {0}, owners
        assert runtime.stat().st_uid == 0
        os.mkfifo(sandbox.exit_file, 0o600)  # (what a forger could leave)
        try:
            with pytest.raises(ProtocolError, match="not a file"):
                sandbox.exit_record()
        finally:
            os.unlink(sandbox.exit_file)
        container.kill(9)
        assert container.wait(timeout=20) == -9
        assert Path(sandbox.exit_file).stat().st_uid == HOST_BASE
    finally:
        container.destroy()


def test_the_gofer_takes_a_root_only_from_the_supervisor(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """Whatever else listens at the control socket's path (swapped in before the gofer's
    first request) gets no request and gives no root: the file call fails, and the
    directory it offered is untouched."""
    import socket as socketlib

    from sandboxrt._os import channel
    from sandboxrt.errors import ContainerPermissionError

    decoy = tmp_path / "decoy"
    decoy.mkdir()
    container = Container.create(
        "u1", edit_config(bundle(["sleep", "100"]), with_userns), store=store
    )
    try:
        container.start()
        sandbox = container.sandbox
        assert sandbox is not None
        ctl = Path(sandbox.control_socket)
        ctl.rename(ctl.with_name("ctl.real"))
        asked: list[Any] = []
        try:
            with channel.bind_listener(str(ctl)) as fake:
                fake.settimeout(10)

                def answer() -> None:
                    try:
                        conn, _ = fake.accept()
                    except OSError:
                        return
                    with conn:
                        conn.settimeout(2)
                        try:
                            asked.append(channel.receive(conn, Request))
                        except (OSError, ValueError):
                            return
                        fd = os.open(decoy, os.O_PATH | os.O_DIRECTORY)
                        try:
                            channel.send(conn, Reply(True), [fd, fd])
                        finally:
                            os.close(fd)

                import threading

                server = threading.Thread(target=answer)
                server.start()
                with pytest.raises(
                    ContainerPermissionError, match="the control socket is not the supervisor's"
                ):
                    container.files.write_text("/planted", "x")
                fake.shutdown(socketlib.SHUT_RDWR)
                server.join(timeout=15)
        finally:
            ctl.unlink(missing_ok=True)
            ctl.with_name("ctl.real").rename(ctl)
        assert asked == []
        assert list(decoy.iterdir()) == []
    finally:
        container.destroy()


@pytest.mark.parametrize("mapped", [True, False], ids=["userns", "no-userns"])
def test_the_gofer_keeps_the_users_ids_only_for_a_user_namespace(
    store: FileStore, bundle: BundleFactory, mapped: bool
) -> None:
    """Its saved uid lets it create as the container's user where a user namespace owns
    the filesystem; it also lets that uid signal it, so only there (where that uid's
    processes are the sandbox's, outside the gofer's PID namespace)."""

    def user_1000(document: dict[str, Any]) -> None:
        if mapped:
            with_userns(document)
        document["process"]["user"] = {"uid": 1000, "gid": 1000}

    path = edit_config(bundle(["sleep", "100"]), user_1000)
    container = Container.create("u1", path, store=store)
    try:
        container.start()
        fields = gofer_status(container)
        saved = int(fields["Uid"].split()[2]), int(fields["Gid"].split()[2])
        assert saved == ((HOST_BASE + 1000, HOST_BASE + 1000) if mapped else (0, 0))
        assert int(fields["CapEff"], 16) == 0x1B  # CHOWN, DAC_OVERRIDE, FOWNER, FSETID
    finally:
        container.destroy()


def test_oom_score_and_container_hooks_work_in_the_namespace(
    store: FileStore, bundle: BundleFactory
) -> None:
    """An init forked in the namespace may not write its ``oom_score_adj`` (the host
    root's file until it execs) nor import the hooks' runner from the host's files: both
    are seen to before (the root's) or from outside (a pod member's)."""

    def scored(value: int) -> Any:
        def change(document: dict[str, Any]) -> None:
            with_userns(document)
            document["process"]["oomScoreAdj"] = value
            # (Not createContainer: its hooks see the root at the bundle's path, which the
            # namespace's root may not reach beneath pytest's 0700 directories.)
            document["hooks"] = {"startContainer": [{"path": "/bin/true"}]}

        return change

    script = ["sh", "-c", "cat /proc/self/oom_score_adj; exec sleep 100"]
    pod = Pod.create(
        "pod", edit_config(bundle(script), scored(100)), store=store, stdout=subprocess.PIPE
    )
    try:
        pod.root.start()
        assert pod.root.stdout is not None
        assert pod.root.stdout.readline() == b"100\n"
        member = pod.add_container(
            "member",
            edit_config(bundle(["cat", "/proc/self/oom_score_adj"]), scored(200)),
            stdout=subprocess.PIPE,
        )
        member.start()
        assert member.wait(timeout=20) == 0
        assert member.stdout is not None
        assert member.stdout.read() == b"200\n"
    finally:
        pod.destroy()


def test_a_pod_member_may_not_ask_for_another_user_namespace(
    store: FileStore, bundle: BundleFactory
) -> None:
    other = [{"containerID": 0, "hostID": 300000, "size": 65536}]
    pod = Pod.create("pod", bundle(["sleep", "100"]), store=store)  # (no user namespace)
    try:
        pod.root.start()
        with pytest.raises(SpecError, match=r'(?s)container "m1".*has no user namespace'):
            pod.add_container("m1", edit_config(bundle(), with_userns))
    finally:
        pod.destroy()
    pod = Pod.create("pod2", edit_config(bundle(["sleep", "100"]), with_userns), store=store)
    try:
        pod.root.start()
        with pytest.raises(SpecError, match="mapped otherwise"):
            pod.add_container("m2", edit_config(bundle(), lambda d: with_userns(d, other)))
        same = pod.add_container("m3", edit_config(bundle(["id", "-u"]), with_userns))
        same.start()
        assert same.wait(timeout=20) == 0
    finally:
        pod.destroy()
    # More than five extents: the kernel keeps them sorted, the spec's order is another.
    several = [
        {"containerID": inside, "hostID": HOST_BASE + inside, "size": 1000}
        for inside in (0, 5000, 4000, 3000, 2000, 1000)
    ]
    rootfs_owned = edit_config(bundle(["sleep", "100"]), lambda d: with_userns(d, several))
    chown_tree(rootfs_owned / "rootfs", HOST_BASE, HOST_BASE)
    pod = Pod.create("pod3", rootfs_owned, store=store)
    try:
        pod.root.start()
        member = pod.add_container(
            "m4", edit_config(bundle(["true"]), lambda d: with_userns(d, several))
        )
        member.start()
        assert member.wait(timeout=20) == 0
        # An id the namespace does not map, named as such.
        with pytest.raises(ExecError, match="not mapped in the sandbox's user namespace"):
            pod.root.exec_run(["true"], user="70000")
    finally:
        pod.destroy()
    assert Container.list(store=store) == []


def test_without_a_pid_namespace_the_gofer_keeps_no_users_ids(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Sharing the host's PID namespace, the container's processes see the gofer: its
    saved ids stay the host root's, so that the container user's uid cannot signal it."""

    def no_pid_namespace(document: dict[str, Any]) -> None:
        with_userns(document)
        linux = document["linux"]
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "pid"]
        for mount in document["mounts"]:
            if mount["destination"] == "/proc":  # (no proc of its own: the host's, bound)
                mount.update(type="bind", source="/proc", options=["rbind", "nosuid"])

    container = Container.create(
        "u1", edit_config(bundle(["sleep", "100"]), no_pid_namespace), store=store
    )
    try:
        container.start()
        assert gofer_status(container)["Uid"].split()[:3] == ["0", "0", "0"]
    finally:
        container.destroy()


def test_a_pod_member_whose_id_ends_like_a_temporary_file_keeps_its_status(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Temporary files (exit statuses, member notes) start with a dot, which no id does:
    ``web.tmp`` is never ``web``'s temporary file."""
    pod = Pod.create("pod", bundle(["sleep", "100"]), store=store)
    try:
        pod.root.start()
        first = pod.add_container("web.tmp", bundle(["sh", "-c", "exit 7"]))
        first.start()
        assert first.wait(timeout=20) == 7
        second = pod.add_container("web", bundle(["sh", "-c", "exit 3"]))
        second.start()
        assert second.wait(timeout=20) == 3
        assert Container.load("web.tmp", store=store).wait(timeout=5) == 7
        assert sorted(c.id for c in pod.containers()) == ["pod", "web", "web.tmp"]
    finally:
        pod.destroy()
    assert Container.list(store=store) == []


JOINED_BASE = 200000
_HOLDER = """
import ctypes, sys
if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:  # CLONE_NEWUSER
    raise SystemExit("unshare failed")
print("ready", flush=True)
sys.stdin.read()  # until the test closes it
"""


@contextlib.contextmanager
def held_user_namespace(base: int) -> Iterator[int]:
    """A process in a user namespace of its own mapping ids 0-65535 to ``base``...: its
    pid (a fresh interpreter, never a fork of the test's)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{holder.pid}/{name}").write_text(f"0 {base} 65536\n")
        yield holder.pid
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


def joining(pid: int, base: int) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        others = [ns for ns in document["linux"]["namespaces"] if ns["type"] != "user"]
        document["linux"]["namespaces"] = [
            *others,
            {"type": "user", "path": f"/proc/{pid}/ns/user"},
        ]
        mappings = [{"containerID": 0, "hostID": base, "size": 65536}]
        document["linux"]["uidMappings"] = document["linux"]["gidMappings"] = mappings

    return change


def test_a_user_namespace_joined_by_path_is_the_container_s(
    store: FileStore, bundle: BundleFactory
) -> None:
    """As runc: the sandbox becomes the joined namespace's root (it stayed the host's
    root, which that namespace does not map: every create failed), and what the file API
    makes there is owned by the mapped ids."""
    path = bundle(["sh", "-c", "id -u; cat /proc/self/uid_map | tr -s ' '; sleep 100"])
    chown_tree(path / "rootfs", JOINED_BASE, JOINED_BASE)
    with held_user_namespace(JOINED_BASE) as holder:
        edit_config(path, joining(holder, JOINED_BASE))
        edit_config(path, lambda d: d["process"]["user"].update(uid=1000, gid=1000))
        container = Container.create("joined", path, store=store, stdout=subprocess.PIPE)
        try:
            container.start()
            assert container.stdout is not None
            assert container.stdout.readline() == b"1000\n"
            assert container.stdout.readline().split() == [
                b"0",
                str(JOINED_BASE).encode(),
                b"65536",
            ]
            assert os.readlink(f"/proc/{container.state().pid}/ns/user") == os.readlink(
                f"/proc/{holder}/ns/user"
            )
            container.files.write_text("/tmp/made", "x")
            made = (path / "rootfs" / "tmp" / "made").stat()
            assert (made.st_uid, made.st_gid) == (JOINED_BASE + 1000, JOINED_BASE + 1000)
            assert container.files.stat("/tmp/made").uid == 1000
        finally:
            container.destroy()
        # Mapped otherwise than the spec says: refused, naming why.
        edit_config(path, joining(holder, JOINED_BASE + 1))
        with pytest.raises(InitError, match=r'"joined2": .*mapped otherwise than the spec says'):
            Container.create("joined2", path, store=store)
    assert Container.list(store=store) == []


def test_an_overlay_root_is_not_nobody_s_in_a_user_namespace(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A rootfs the host's root owns reads as owned by the overflow id (65534) in the
    container's namespace: the overlay's root was given to that id, a user of the
    container's own, who could then replace /root and plant what root runs."""
    path = edit_config(bundle(["sleep", "100"]), with_userns)  # (the rootfs: the host root's)
    with running(store, path, "nobody", overlay()) as container:
        done = container.exec_run(["sh", "-c", "touch /planted"], user="65534:65534")
        assert done.returncode != 0
        owner = container.exec_run(["stat", "-c", "%u:%g", "/"], capture_output=True)
        assert owner.stdout == b"0:0\n"
        assert container.exec_run(["touch", "/by-root"]).returncode == 0  # (its root may)
