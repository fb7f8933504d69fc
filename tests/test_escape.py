"""Escape attempts from a container with the DEFAULT spec, each expected to fail safely.

One container (host_usr rootfs, ``make_bundle``'s default spec: capabilities
AUDIT_WRITE/KILL/NET_BIND_SERVICE, no_new_privs, the default seccomp profile,
masked and read-only paths) runs ``escape_probes.py``, which tries every probe
and prints one JSON line each; every probe is then its own test below. The
probes are harmless even if isolation failed (see escape_probes.py). The host
is checked around the run: mount table, hostname, no sandbox left, and a host
process the container tried to signal is still alive.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import BundleFactory, host_mounts, needs_busybox, needs_root, supervisor_pids
from escape_probes import MASKED

from sandboxrt import Container, FileStore
from sandboxrt._core.spec_default import DEFAULT_HOSTNAME, DEFAULT_MASKED_PATHS
from sandboxrt._proc.children import SUPERVISOR_NAME
from sandboxrt.bundle import make_bundle
from sandboxrt.errors import ExecError, InitError

pytestmark = needs_root

PROBE_SCRIPT = Path(__file__).with_name("escape_probes.py")

EPERM = (
    # mounts and namespaces (CAP_SYS_ADMIN, and the seccomp profile)
    "mount_tmpfs",
    "umount_proc",
    "remount_root_rw",
    "pivot_root",
    "fsopen",
    "open_tree",
    "unshare_user",
    "unshare_mount",
    "unshare_net",
    "unshare_pid",
    "unshare_ipc",
    "unshare_uts",
    "unshare_cgroup",
    "setns_own_net",
    "chroot",
    # the kernel itself
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot_invalid_magic",
    "settime_current",
    "settimeofday_null",
    "sethostname_current",
    "setdomainname_current",
    "iopl",
    "ioperm",
    "swapon",
    "acct",
    "syslog_read",
    "vhangup",
    "open_by_handle_at",
    "keyctl_add_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    # capabilities the default set lacks
    "raw_socket",
    "mknod_char_device",
    "chown_other_uid",
    "ptrace_attach_pid1",
    "prlimit_pid1",  # (its uids are the container root's: its saved gid is not)
    "raise_ambient_sys_admin",
)
#: PID 1 is the supervisor, with every capability: ptrace access to it is denied.
EACCES = ("setns_pid1_mnt", "proc1_root", "proc1_cwd", "proc1_exe", "proc1_environ")
#: readonlyPaths (/proc/sys, /proc/sysrq-trigger) and the read-only /sys, /sys/fs/cgroup.
EROFS = ("write_sysctl_hostname", "write_sysctl_core_pattern", "mkdir_sys", "mkdir_sys_fs_cgroup")
#: Read-only where the kernel has them (ENOENT where it does not).
EROFS_IF_PRESENT = {
    "write_sysrq_trigger": "/proc/sysrq-trigger",
    "write_sysctl_modprobe": "/proc/sys/kernel/modprobe",
    "write_proc_irq": "/proc/irq/default_smp_affinity",
}
DEV_ENTRIES = {
    *("fd", "stdin", "stdout", "stderr", "ptmx", "pts", "shm", "mqueue"),
    *("null", "zero", "full", "random", "urandom", "tty"),
}


def run_probes(root: Path, host_pid: int) -> dict[str, dict[str, Any]]:
    bundle = root / "bundle"
    make_bundle(bundle, ["python3", "-I", "/probes.py", str(host_pid)], rootfs="host_usr")
    shutil.copy(PROBE_SCRIPT, bundle / "rootfs" / "probes.py")
    container = Container.create(
        "escape",
        bundle,
        store=FileStore(root / "store"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        container.start()
        assert container.stdout is not None and container.stderr is not None
        out, err = container.stdout.read().decode(), container.stderr.read().decode()
        code = container.wait(timeout=30)
    finally:
        for stream in (container.stdout, container.stderr):
            if stream is not None:
                stream.close()
        container.destroy()
    assert code == 0, (code, out, err)
    results = {}
    for line in out.splitlines():
        result = json.loads(line)
        results[result.pop("probe")] = result
    return results


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every probe in one container; the results and what the host looked like."""
    hostname = socket.gethostname()
    mounts = host_mounts()
    sandboxes = supervisor_pids()
    victim = subprocess.Popen(["sleep", "60"])
    try:
        results = run_probes(tmp_path_factory.mktemp("escape"), victim.pid)
        victim_alive = victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
    return {
        "results": results,
        "host_checks": {
            "hostname": socket.gethostname() == hostname,
            "mount table": host_mounts() == mounts,
            "no sandbox left": supervisor_pids() == sandboxes,
            "signalled host process alive": victim_alive,
        },
    }


def outcome(probes: dict[str, Any], name: str) -> dict[str, Any]:
    result: dict[str, Any] = probes["results"].get(name)
    assert result is not None, f"probe {name} did not report (the probe process died?)"
    assert "exception" not in result, result
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


def errno_name(result: dict[str, Any]) -> str:
    if "errno" in result:
        return errno.errorcode.get(result["errno"], str(result["errno"]))
    return f"SUCCEEDED: {result.get('ok')!r}"


@pytest.mark.parametrize("name", EPERM)
def test_denied_with_eperm(probes: dict[str, Any], name: str) -> None:
    assert errno_name(outcome(probes, name)) == "EPERM"


@pytest.mark.parametrize("name", EACCES)
def test_supervisor_is_off_limits(probes: dict[str, Any], name: str) -> None:
    assert errno_name(outcome(probes, name)) == "EACCES"


@pytest.mark.parametrize("name", EROFS)
def test_read_only(probes: dict[str, Any], name: str) -> None:
    assert errno_name(outcome(probes, name)) == "EROFS"


@pytest.mark.parametrize("name", sorted(EROFS_IF_PRESENT))
def test_read_only_where_present(probes: dict[str, Any], name: str) -> None:
    expected = "EROFS" if os.path.exists(EROFS_IF_PRESENT[name]) else "ENOENT"
    assert errno_name(outcome(probes, name)) == expected


def test_the_probed_masked_paths_are_the_default_specs() -> None:
    assert set(MASKED) <= set(DEFAULT_MASKED_PATHS)


@pytest.mark.parametrize("path", MASKED)
def test_masked(probes: dict[str, Any], path: str) -> None:
    result = outcome(probes, f"masked:{path}")
    if not os.path.exists(path):
        assert errno_name(result) == "ENOENT"
    elif os.path.isdir(path):
        assert result == {"ok": {"dir": []}}
    else:
        assert result == {"ok": {"kind": "null", "bytes": 0}}


def test_own_executable_cannot_be_overwritten(probes: dict[str, Any]) -> None:
    """CVE-2019-5736's first step: /proc/self/exe opened for writing."""
    assert errno_name(outcome(probes, "write_own_exe")) in ("ETXTBSY", "EROFS")


@needs_busybox
@pytest.mark.parametrize("target", ["/proc/self/exe", "/proc/1/exe"])
def test_a_program_linked_to_a_runtime_executable_never_runs(
    store: FileStore, bundle: BundleFactory, target: str
) -> None:
    """CVE-2019-5736's way in: a program that is a symlink to ``/proc/self/exe`` would run
    the runtime's own executable (here the host's Python) in the container, which could
    then reopen it for writing. A program is resolved beneath the root with no magic link
    followed, for the init and for ``exec`` alike, so that link names no program. (Hence a
    symlinked program runs as its target: a busybox applet's ``comm`` is ``busybox``.)"""
    path = bundle(["/bin/linked"])
    os.symlink(target, path / "rootfs" / "bin" / "linked")
    with pytest.raises(InitError, match="'/bin/linked' does not exist or is not executable"):
        Container.run("linked", path, store=store)
    running = bundle(["sleep", "1000"])
    os.symlink(target, running / "rootfs" / "bin" / "linked")
    with Container.create("linked-exec", running, store=store) as container:
        container.start()
        with pytest.raises(ExecError, match="/bin/linked"):
            container.exec(["/bin/linked"])
        assert container.exec_run(["/bin/true"]).returncode == 0  # (exec itself works)


def test_no_new_privs_cannot_be_cleared(probes: dict[str, Any]) -> None:
    assert errno_name(outcome(probes, "clear_no_new_privs")) == "EINVAL"


def test_only_the_sandbox_processes_are_visible(probes: dict[str, Any]) -> None:
    pids = outcome(probes, "processes")["ok"]
    assert pids[0] == 1
    assert len(pids) == 2, pids  # the supervisor and the probe
    assert outcome(probes, "pid1_comm") == {"ok": SUPERVISOR_NAME}  # not the host's init


def test_host_processes_cannot_be_seen_or_signalled(probes: dict[str, Any]) -> None:
    assert outcome(probes, "host_pid_visible") == {"ok": False}
    assert errno_name(outcome(probes, "kill_host_pid")) == "ESRCH"


def test_only_loopback(probes: dict[str, Any]) -> None:
    assert outcome(probes, "interfaces") == {"ok": ["lo"]}


def test_no_host_devices(probes: dict[str, Any]) -> None:
    assert set(outcome(probes, "dev_entries")["ok"]) <= DEV_ENTRIES


def test_hostname_is_the_containers(probes: dict[str, Any]) -> None:
    assert outcome(probes, "hostname") == {"ok": DEFAULT_HOSTNAME}


@pytest.mark.parametrize(
    "check", ["hostname", "mount table", "no sandbox left", "signalled host process alive"]
)
def test_host_unchanged(probes: dict[str, Any], check: str) -> None:
    assert probes["host_checks"][check]


@pytest.mark.parametrize("nnp", [True, False], ids=["no_new_privs", "control"])
def test_setuid_binary_gains_nothing_under_no_new_privs(
    store: FileStore, bundle: BundleFactory, nnp: bool
) -> None:
    """A setuid-root ``id`` run by uid 1000: with no_new_privs its euid stays 1000."""
    path = bundle(["/suid-id"], rootfs="host_usr")
    suid = path / "rootfs" / "suid-id"
    shutil.copy("/usr/bin/id", suid)
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    config = path / "config.json"
    document = json.loads(config.read_text())
    document["process"]["user"] = {"uid": 1000, "gid": 1000}
    document["process"]["noNewPrivileges"] = nnp
    config.write_text(json.dumps(document))
    container = Container.create("suid", path, store=store, stdout=subprocess.PIPE)
    try:
        container.start()
        assert container.stdout is not None
        out = container.stdout.read().decode()
        assert container.wait(timeout=30) == 0, out
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()
    assert out.startswith("uid=1000 gid=1000"), out
    assert ("euid=0" in out) is not nnp, out  # the control shows the bit works at all
