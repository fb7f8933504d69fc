"""The built-in seccomp profile: close in effect to Docker's default. Pure data.

Everything not listed fails with ``EPERM``. Allowed: the system calls of
ordinary programs (files, memory, signals, time reading, sockets, IPC,
scheduling, process control). Left out, so denied: mounting and the mount
API, namespaces (``unshare``, ``setns``, ``clone`` with ``CLONE_NEW*``
flags), kernel modules, ``kexec``, reboot, swap, the kernel keyring, ``bpf``,
``perf_event_open``, ``userfaultfd``, file handles, ``io_uring``, port I/O,
accounting, setting the clock or the host/domain name, ``quotactl``,
``syslog``, NUMA memory policy and the obsolete ``uselib``/``nfsservctl``/
``_sysctl`` family.

Special cases: ``clone`` only without namespace flags; ``clone3`` fails with
``ENOSYS`` (its flags live in memory a filter cannot read; libc falls back
to ``clone``); ``personality`` only for the harmless domains Docker allows;
``socket`` for every family but ``AF_VSOCK`` (as in Docker's, not through the
32-bit ``socketcall``, whose arguments are in memory a filter cannot read: a
32-bit program may still make one). ``ptrace`` is allowed (the
kernel's own checks hold since 4.8) but the default bounding set has no
``CAP_SYS_PTRACE``. Unlike Docker, the profile does not widen with the
process's capabilities.
"""

from __future__ import annotations

import errno
from typing import Any

from sandboxrt._core import abi

__all__ = [
    "ALLOWED_SYSCALLS",
    "ARCHITECTURES",
    "CLONE_NAMESPACE_MASK",
    "PERSONALITY_DOMAINS",
    "default_profile",
]

#: ``platform.machine()`` → the architectures a filter covers there (native first).
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}

#: Every ``CLONE_NEW*`` flag ``clone`` takes (``CLONE_NEWTIME`` is clone3/unshare only).
CLONE_NAMESPACE_MASK = (
    abi.CLONE_NEWNS
    | abi.CLONE_NEWCGROUP
    | abi.CLONE_NEWUTS
    | abi.CLONE_NEWIPC
    | abi.CLONE_NEWUSER
    | abi.CLONE_NEWPID
    | abi.CLONE_NEWNET
)

#: ``personality`` arguments allowed: PER_LINUX, PER_LINUX32, UNAME26 variants, query.
PERSONALITY_DOMAINS = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

_AF_VSOCK = 40

ALLOWED_SYSCALLS: tuple[str, ...] = (
    # files and directories
    "access", "chdir", "chmod", "chown", "chown32", "chroot", "close", "close_range",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32",
    "fchownat", "fcntl", "fcntl64", "fdatasync", "flock", "fstat", "fstat64", "fstatat64",
    "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents",
    "getdents64", "lchown", "lchown32", "link", "linkat", "_llseek", "lseek", "lstat", "lstat64",
    "mkdir", "mkdirat", "mknod", "mknodat", "newfstatat", "open", "openat", "openat2", "pipe",
    "pipe2", "read", "readahead", "readlink", "readlinkat", "readv", "pread64", "preadv", "preadv2",
    "pwrite64", "pwritev", "pwritev2", "rename", "renameat", "renameat2", "rmdir", "sendfile",
    "sendfile64", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat",
    "sync", "sync_file_range", "sync_file_range2", "syncfs", "tee", "truncate", "truncate64",
    "umask", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vmsplice",
    "write", "writev", "cachestat", "arm_fadvise64_64", "arm_sync_file_range", "riscv_flush_icache",
    "riscv_hwprobe",
    # extended attributes
    "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "getxattr", "lgetxattr", "listxattr",
    "llistxattr", "lremovexattr", "lsetxattr", "removexattr", "setxattr", "getxattrat",
    "listxattrat", "removexattrat", "setxattrat",
    # polling, events, notification
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "fanotify_mark", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "_newselect", "pause", "poll", "ppoll",
    "ppoll_time64", "pselect6", "pselect6_time64", "select", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64",
    # asynchronous I/O (not io_uring)
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup",
    "io_submit", "ioprio_get", "ioprio_set",
    # memory
    "brk", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mremap", "mseal", "msync",
    "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "remap_file_pages",
    # processes and threads
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork",
    "get_robust_list", "get_thread_area", "getcpu", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getrlimit", "getrusage", "getsid", "gettid", "kill", "pidfd_getfd",
    "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease", "process_vm_readv",
    "process_vm_writev", "ptrace", "restart_syscall", "rseq", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "set_robust_list", "set_thread_area", "set_tid_address", "set_tls", "setpgid",
    "setpriority", "setrlimit", "setsid", "tgkill", "tkill", "ugetrlimit", "vfork", "wait4",
    "waitid", "waitpid", "breakpoint", "cacheflush", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self",
    # users and groups
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
    "getgroups32", "getresgid", "getresgid32", "getresuid", "getresuid32", "getuid", "getuid32",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32",
    "setreuid", "setreuid32", "setuid", "setuid32",
    # signals
    "alarm", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sigaltstack", "sigprocmask", "sigreturn",
    # time (reading it, timers, sleeping)
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "getitimer", "gettimeofday", "nanosleep", "setitimer", "time",
    "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64", "times",
    # futexes
    "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake",
    # sockets (socket itself has a rule of its own)
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen",
    "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg",
    "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
    # System V and POSIX IPC
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt",
    "shmget",
    # devices and system information
    "getrandom", "ioctl", "sysinfo", "uname",
)  # fmt: skip


def default_profile(machine: str) -> dict[str, Any]:
    """The profile as an OCI ``linux.seccomp`` object, for a host of ``platform.machine()``."""
    clone_flags = 1 if machine.startswith("s390") else 0  # s390 swaps clone's first two args
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": list(ARCHITECTURES.get(machine, ())),
        "syscalls": [
            {"names": sorted(ALLOWED_SYSCALLS), "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {
                        "index": clone_flags,
                        "value": CLONE_NAMESPACE_MASK,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            },
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": _AF_VSOCK, "op": "SCMP_CMP_NE"}],
            },
            *(
                {
                    "names": ["personality"],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": domain, "op": "SCMP_CMP_EQ"}],
                }
                for domain in PERSONALITY_DOMAINS
            ),
        ],
    }
