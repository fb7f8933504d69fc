"""Escape probes, run INSIDE a container by tests/test_escape.py (``python3 -I escape_probes.py``).

Prints one JSON line per probe: {"probe": name} plus {"errno": N}, {"ok": value} or
{"skip": why}.
Every probe is harmless if isolation failed: values written are the ones just
read, magic numbers are invalid, module images are empty, and files opened
for writing are closed without a byte written. Standard library only.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import platform
import resource
import socket
import stat
import sys
from collections.abc import Callable
from typing import Any

libc = ctypes.CDLL(None, use_errno=True)
ARCH = platform.machine()
#: Syscall numbers with no glibc wrapper (x86_64, aarch64); the new mount API is the same on both.
NR: dict[str, int] = {
    "x86_64": {
        "pivot_root": 155,
        "reboot": 169,
        "kexec_load": 246,
        "kexec_file_load": 320,
        "add_key": 248,
        "finit_module": 313,
        "perf_event_open": 298,
        "bpf": 321,
        "userfaultfd": 323,
        "settimeofday": 164,
    },
    "aarch64": {
        "pivot_root": 41,
        "reboot": 142,
        "kexec_load": 104,
        "kexec_file_load": 294,
        "add_key": 217,
        "finit_module": 273,
        "perf_event_open": 241,
        "bpf": 280,
        "userfaultfd": 282,
        "settimeofday": 170,
    },
}.get(ARCH, {})
NR.update(open_tree=428, fsopen=430)

Result = dict[str, Any]
PROBES: dict[str, Callable[[], Result]] = {}


def probe(name: str) -> Callable[[Callable[[], Result]], Callable[[], Result]]:
    def register(fn: Callable[[], Result]) -> Callable[[], Result]:
        PROBES[name] = fn
        return fn

    return register


def rc(result: int) -> Result:
    """A libc call's outcome."""
    return {"errno": ctypes.get_errno()} if result == -1 else {"ok": result}


def syscall(name: str, *args: Any) -> Result:
    if name not in NR:
        return {"skip": f"no syscall number for {name} on {ARCH}"}
    return rc(libc.syscall(ctypes.c_long(NR[name]), *args))


def oserror(fn: Callable[[], Any]) -> Result:
    """A Python call's outcome: the errno it raised, or what it returned."""
    try:
        return {"ok": fn()}
    except OSError as exc:
        return {"errno": exc.errno}


def open_for_write(path: str) -> Result:
    """Open ``path`` for writing and close it without writing: the open is the probe."""

    def opened() -> str:
        os.close(os.open(path, os.O_WRONLY))
        return "opened"

    return oserror(opened)


def masked(path: str) -> Result:
    """What the container sees at a masked path: kind, size read, entries."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return {"errno": exc.errno}
    if stat.S_ISDIR(st.st_mode):
        return {"ok": {"dir": sorted(os.listdir(path))}}
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError as exc:
        return {"errno": exc.errno}
    kind = "null" if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3) else "file"
    return {"ok": {"kind": kind, "bytes": len(data)}}


# -- mounts and namespaces ---------------------------------------------------------------


@probe("mount_tmpfs")
def _() -> Result:
    return rc(libc.mount(b"none", b"/tmp", b"tmpfs", ctypes.c_ulong(0), None))


@probe("umount_proc")
def _() -> Result:
    return rc(libc.umount2(b"/proc", 0))


@probe("remount_root_rw")
def _() -> Result:
    ms_remount_bind = 0x20 | 0x1000
    return rc(libc.mount(None, b"/", None, ctypes.c_ulong(ms_remount_bind), None))


@probe("pivot_root")
def _() -> Result:
    return syscall("pivot_root", b".", b".")


@probe("fsopen")
def _() -> Result:
    return syscall("fsopen", b"tmpfs", 0)


@probe("open_tree")
def _() -> Result:
    return syscall("open_tree", -100, b"/", 1)  # OPEN_TREE_CLONE


for _flag, _ns in [
    (0x10000000, "user"),
    (0x00020000, "mount"),
    (0x40000000, "net"),
    (0x20000000, "pid"),
    (0x08000000, "ipc"),
    (0x04000000, "uts"),
    (0x02000000, "cgroup"),
]:
    PROBES[f"unshare_{_ns}"] = functools.partial(lambda flag: rc(libc.unshare(flag)), _flag)


@probe("setns_pid1_mnt")
def _() -> Result:
    def join() -> int:
        fd = os.open("/proc/1/ns/mnt", os.O_RDONLY)
        try:
            if libc.setns(fd, 0) == -1:
                raise OSError(ctypes.get_errno(), "setns")
            return 0
        finally:
            os.close(fd)

    return oserror(join)


@probe("setns_own_net")
def _() -> Result:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)  # our own: opening is allowed
    try:
        return rc(libc.setns(fd, 0))
    finally:
        os.close(fd)


@probe("chroot")
def _() -> Result:
    return oserror(lambda: os.chroot("/tmp"))


# -- /proc and /sys -----------------------------------------------------------------------


@probe("write_sysctl_hostname")
def _() -> Result:
    return open_for_write("/proc/sys/kernel/hostname")


@probe("write_sysctl_core_pattern")
def _() -> Result:
    return open_for_write("/proc/sys/kernel/core_pattern")


@probe("write_sysctl_modprobe")
def _() -> Result:
    return open_for_write("/proc/sys/kernel/modprobe")


@probe("write_proc_irq")
def _() -> Result:
    return open_for_write("/proc/irq/default_smp_affinity")


@probe("write_sysrq_trigger")
def _() -> Result:
    return open_for_write("/proc/sysrq-trigger")


#: The masked paths probed (tests/test_escape.py imports this list).
MASKED = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/interrupts",
    "/proc/latency_stats",
    "/proc/acpi",
    "/proc/scsi",
    "/sys/firmware",
)

for _path in MASKED:
    PROBES[f"masked:{_path}"] = functools.partial(masked, _path)


@probe("mkdir_sys")
def _() -> Result:
    return oserror(lambda: os.mkdir("/sys/sandboxrt-probe"))


@probe("mkdir_sys_fs_cgroup")
def _() -> Result:
    return oserror(lambda: os.mkdir("/sys/fs/cgroup/sandboxrt-probe"))


@probe("proc1_root")
def _() -> Result:
    return oserror(lambda: os.listdir("/proc/1/root/"))


@probe("proc1_cwd")
def _() -> Result:
    return oserror(lambda: os.listdir("/proc/1/cwd/"))


@probe("proc1_exe")
def _() -> Result:
    return oserror(lambda: os.close(os.open("/proc/1/exe", os.O_RDONLY)))


@probe("proc1_environ")
def _() -> Result:
    return oserror(lambda: len(open("/proc/1/environ", "rb").read()))


@probe("write_own_exe")
def _() -> Result:
    return open_for_write("/proc/self/exe")


# -- kernel, modules, time, host identity ------------------------------------------------


@probe("init_module")
def _() -> Result:
    return rc(libc.init_module(None, ctypes.c_ulong(0), b""))


@probe("finit_module")
def _() -> Result:
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        return syscall("finit_module", fd, b"", 0)
    finally:
        os.close(fd)


@probe("delete_module")
def _() -> Result:
    return rc(libc.delete_module(b"sandboxrt_no_such_module", os.O_NONBLOCK))


@probe("kexec_load")
def _() -> Result:
    return syscall("kexec_load", ctypes.c_ulong(0), ctypes.c_ulong(0), None, ctypes.c_ulong(0))


@probe("kexec_file_load")
def _() -> Result:
    return syscall("kexec_file_load", -1, -1, ctypes.c_ulong(0), None, ctypes.c_ulong(0))


@probe("reboot_invalid_magic")
def _() -> Result:
    # Wrong magic: EINVAL even where reboot(2) is allowed; the cap check comes first.
    return syscall("reboot", 0x12345678, 0x12345678, 0, None)


@probe("settime_current")
def _() -> Result:
    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    now = Timespec()
    libc.clock_gettime(0, ctypes.byref(now))  # CLOCK_REALTIME, set straight back
    return rc(libc.clock_settime(0, ctypes.byref(now)))


@probe("settimeofday_null")
def _() -> Result:
    return syscall("settimeofday", None, None)  # sets nothing even where allowed


@probe("sethostname_current")
def _() -> Result:
    name = socket.gethostname().encode()
    return rc(libc.sethostname(name, len(name)))


@probe("setdomainname_current")
def _() -> Result:
    name = os.uname().nodename.encode()  # any value: it fails before it is used
    return rc(libc.setdomainname(name, len(name)))


@probe("iopl")
def _() -> Result:
    if ARCH != "x86_64":
        return {"skip": "x86 only"}
    return rc(libc.iopl(3))


@probe("ioperm")
def _() -> Result:
    if ARCH != "x86_64":
        return {"skip": "x86 only"}
    return rc(libc.ioperm(ctypes.c_ulong(0x80), ctypes.c_ulong(1), 1))


@probe("swapon")
def _() -> Result:
    return rc(libc.swapon(b"/sandboxrt-no-such-swap", 0))


@probe("acct")
def _() -> Result:
    return rc(libc.acct(b"/sandboxrt-no-such-file"))


@probe("syslog_read")
def _() -> Result:
    buf = ctypes.create_string_buffer(256)
    return rc(libc.klogctl(3, buf, 256))  # SYSLOG_ACTION_READ_ALL


@probe("vhangup")
def _() -> Result:
    return rc(libc.vhangup())


@probe("open_by_handle_at")
def _() -> Result:
    handle = ctypes.create_string_buffer(128)  # handle_bytes = 0, handle_type = 0
    return rc(libc.open_by_handle_at(-100, handle, os.O_RDONLY))


@probe("keyctl_add_key")
def _() -> Result:
    return syscall("add_key", b"user", b"sandboxrt-probe", b"x", 1, -2)  # process keyring


@probe("bpf")
def _() -> Result:
    return syscall("bpf", 0, None, 0)  # BPF_MAP_CREATE with no attributes


@probe("perf_event_open")
def _() -> Result:
    return syscall("perf_event_open", None, 0, -1, -1, ctypes.c_ulong(0))


@probe("userfaultfd")
def _() -> Result:
    return syscall("userfaultfd", os.O_CLOEXEC)


# -- privileges --------------------------------------------------------------------------


@probe("raw_socket")
def _() -> Result:
    return oserror(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1).close())


@probe("mknod_char_device")
def _() -> Result:
    return oserror(lambda: os.mknod("/tmp/probe-null", stat.S_IFCHR | 0o600, os.makedev(1, 3)))


@probe("chown_other_uid")
def _() -> Result:
    with open("/tmp/probe-file", "w"):
        pass
    return oserror(lambda: os.chown("/tmp/probe-file", 1234, 1234))


@probe("ptrace_attach_pid1")
def _() -> Result:
    return rc(libc.ptrace(16, 1, None, None))  # PTRACE_ATTACH


@probe("prlimit_pid1")
def _() -> Result:
    # Only reads PID 1's limit: the kernel checks permission to read as to set (same uids
    # and gids, or CAP_SYS_RESOURCE), and a container that may read them may lower them.
    return oserror(lambda: resource.prlimit(1, resource.RLIMIT_CORE))


@probe("raise_ambient_sys_admin")
def _() -> Result:
    return rc(libc.prctl(47, 2, 21, 0, 0))  # PR_CAP_AMBIENT, RAISE, CAP_SYS_ADMIN


@probe("clear_no_new_privs")
def _() -> Result:
    return rc(libc.prctl(38, 0, 0, 0, 0))  # PR_SET_NO_NEW_PRIVS 0: EINVAL, never allowed


# -- what the container can see ----------------------------------------------------------


@probe("processes")
def _() -> Result:
    return {"ok": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}


@probe("pid1_comm")
def _() -> Result:
    return {"ok": open("/proc/1/comm").read().strip()}


@probe("host_pid_visible")
def _() -> Result:
    return {"ok": os.path.exists(f"/proc/{HOST_PID}")}


@probe("kill_host_pid")
def _() -> Result:
    return oserror(lambda: os.kill(HOST_PID, 0))


@probe("interfaces")
def _() -> Result:
    return {"ok": sorted(name for _, name in socket.if_nameindex())}


@probe("dev_entries")
def _() -> Result:
    return {"ok": sorted(os.listdir("/dev"))}


@probe("hostname")
def _() -> Result:
    return {"ok": socket.gethostname()}


if __name__ == "__main__":
    HOST_PID = int(sys.argv[1])
    for name, fn in PROBES.items():  # one line each: a crash loses only what follows
        try:
            result = fn()
        except Exception as exc:  # report it, never stop the run
            result = {"exception": repr(exc)}
        print(json.dumps({"probe": name, **result}), flush=True)
