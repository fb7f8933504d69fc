"""The default spec: what ``runc spec`` (and ``runc spec --rootless``) writes.

Differences from runc: the hostname is ``sandboxrt``, ``terminal`` defaults to
false, the cgroup namespace is always added, ``maskedPaths`` also has
Docker's wider list, and ``linux.seccomp`` is the built-in profile of
:mod:`sandboxrt._core.seccomp_default` (Docker's default in effect).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence

import attrs

from sandboxrt._core.seccomp_default import default_profile
from sandboxrt._core.spec import (
    Capabilities,
    DeviceCgroup,
    IDMapping,
    Linux,
    Mount,
    Namespace,
    Process,
    Resources,
    Rlimit,
    Root,
    Seccomp,
    Spec,
    User,
    converter,
)

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_ENV",
    "DEFAULT_HOSTNAME",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_OCI_VERSION",
    "DEFAULT_READONLY_PATHS",
    "check_args",
    "default_spec",
]

DEFAULT_OCI_VERSION = "1.2.0"
DEFAULT_HOSTNAME = "sandboxrt"
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm")
DEFAULT_CAPABILITIES = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
DEFAULT_MASKED_PATHS = (
    # runc spec
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    "/sys/devices/virtual/powercap",
    # Docker's additions
    "/proc/interrupts",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_NOSUID_NOEXEC_NODEV = ("nosuid", "noexec", "nodev")
_MOUNTS = (
    ("/proc", "proc", "proc", ()),
    ("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
    ),
    ("/dev/shm", "tmpfs", "shm", (*_NOSUID_NOEXEC_NODEV, "mode=1777", "size=65536k")),
    ("/dev/mqueue", "mqueue", "mqueue", _NOSUID_NOEXEC_NODEV),
    ("/sys", "sysfs", "sysfs", (*_NOSUID_NOEXEC_NODEV, "ro")),
    ("/sys/fs/cgroup", "cgroup", "cgroup", (*_NOSUID_NOEXEC_NODEV, "relatime", "ro")),
)
_NAMESPACES = ("pid", "network", "ipc", "uts", "mount", "cgroup")


def default_spec(
    args: Sequence[str] = ("sh",),
    *,
    rootless: bool = False,
    terminal: bool = False,
    host_uid: int | None = None,
    host_gid: int | None = None,
) -> Spec:
    """Return the spec ``runc spec`` writes, running ``args`` (a non-empty sequence of
    strings, else ``ValueError``: see :func:`check_args`).

    With ``rootless`` it is ``runc spec --rootless``: no network namespace but a
    user namespace mapping container root to ``host_uid``/``host_gid`` (default:
    the effective ids of this process), ``/sys`` bind-mounted instead of a new
    sysfs, no ``uid=``/``gid=`` mount options and no cgroup resources.
    """
    check_args(args)
    mounts = [
        Mount(destination=dest, type=fstype, source=source, options=list(options) or None)
        for dest, fstype, source, options in _MOUNTS
    ]
    namespaces = list(_NAMESPACES)
    resources: Resources | None = Resources(devices=[DeviceCgroup(allow=False, access="rwm")])
    uid_mappings = gid_mappings = None
    if rootless:
        mounts = [_rootless_mount(mount) for mount in mounts]
        namespaces = [ns for ns in namespaces if ns != "network"] + ["user"]
        resources = None
        uid = os.geteuid() if host_uid is None else host_uid
        gid = os.getegid() if host_gid is None else host_gid
        uid_mappings = [IDMapping(container_id=0, host_id=uid, size=1)]
        gid_mappings = [IDMapping(container_id=0, host_id=gid, size=1)]
    caps = list(DEFAULT_CAPABILITIES)
    return Spec(
        oci_version=DEFAULT_OCI_VERSION,
        process=Process(
            terminal=terminal,
            user=User(uid=0, gid=0),
            args=list(args),
            env=list(DEFAULT_ENV),
            cwd="/",
            capabilities=Capabilities(bounding=caps, effective=list(caps), permitted=list(caps)),
            rlimits=[Rlimit(type="RLIMIT_NOFILE", hard=1024, soft=1024)],
            no_new_privileges=True,
        ),
        root=Root(path="rootfs", readonly=True),
        hostname=DEFAULT_HOSTNAME,
        mounts=mounts,
        linux=Linux(
            uid_mappings=uid_mappings,
            gid_mappings=gid_mappings,
            resources=resources,
            namespaces=[Namespace(type=ns) for ns in namespaces],
            masked_paths=list(DEFAULT_MASKED_PATHS),
            readonly_paths=list(DEFAULT_READONLY_PATHS),
            seccomp=converter.structure(default_profile(platform.machine()), Seccomp),
        ),
    )


def _rootless_mount(mount: Mount) -> Mount:
    """Adapt one default mount as runc's ``ToRootless`` does."""
    if mount.destination == "/sys":
        return Mount(
            destination="/sys",
            type="none",
            source="/sys",
            options=["rbind", *_NOSUID_NOEXEC_NODEV, "ro"],
        )
    if mount.options is None:
        return mount
    options = [opt for opt in mount.options if not opt.startswith(("uid=", "gid="))]
    return attrs.evolve(mount, options=options)


def check_args(args: Sequence[str]) -> None:
    """``ValueError`` unless ``args`` is a non-empty sequence of strings, as a program's
    argument list is (a string's characters would be taken for the arguments)."""
    if (
        isinstance(args, str | bytes)
        or not isinstance(args, Sequence)  # (an iterator: the check below would use it up)
        or not args
        or not all(isinstance(a, str) for a in args)
    ):
        raise ValueError("args must be a non-empty sequence of strings")
