"""Making small OCI bundles without downloads: from the host's /usr, or from busybox.

``host_usr`` bundles have an almost empty rootfs and bind-mount the host's
``/usr`` read-only into the container (inside the container's own mount
namespace: the host's mount table is untouched), so they have Python and the
usual tools. ``busybox`` bundles copy a static busybox (Debian's
``busybox-static``) and need nothing from the host at run time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs

from sandboxrt._core.spec import Mount, Spec, write_spec_file
from sandboxrt._core.spec_default import check_args, default_spec
from sandboxrt.errors import InvalidArgumentError, MissingFeatureError, arguments_of

__all__ = ["BUSYBOX", "make_bundle"]

#: Where Debian's busybox-static installs its binary.
BUSYBOX = "/bin/busybox"

_ETC_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
_ETC_GROUP = "root:x:0:\nnogroup:x:65534:\n"


#: A temporary name beside what is replaced (a dot: no applet is named so; a random part:
#: nothing a container left there is in the way).
_NEW = f".sandboxrt-new-{secrets.token_hex(8)}"


def _directory(parent: int, name: str, mode: int = 0o755) -> int:
    """An fd of directory ``name`` of ``parent``, made if missing. Whatever else is there
    (a symlink a container left in its rootfs, pointing at the host) is replaced: a bundle
    made again never writes through it."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(name, dir_fd=parent)
    os.mkdir(name, mode, dir_fd=parent)
    return os.open(name, flags, dir_fd=parent)


def _write(parent: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """File ``name`` of ``parent`` holding ``data``: written under a new name and renamed
    over what was there, so that a symlink there is replaced, never followed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_NEW, dir_fd=parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(_NEW, flags, mode, dir_fd=parent)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)  # (not the umask's)
    finally:
        os.close(fd)
    os.rename(_NEW, name, src_dir_fd=parent, dst_dir_fd=parent)


def _link(parent: int, name: str, target: str) -> None:
    """``name`` of ``parent`` as a symlink to ``target``, also where a bundle is made
    again (what was there is replaced, never followed)."""
    with contextlib.suppress(OSError):
        if os.readlink(name, dir_fd=parent) == target:
            return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_NEW, dir_fd=parent)
    os.symlink(target, _NEW, dir_fd=parent)
    os.rename(_NEW, name, src_dir_fd=parent, dst_dir_fd=parent)


def _skeleton(rootfs: int) -> None:
    for name in ("proc", "sys", "dev", "tmp", "etc", "root", "run"):
        os.close(_directory(rootfs, name))
    tmp = _directory(rootfs, "tmp")
    try:
        os.fchmod(tmp, 0o1777)
    finally:
        os.close(tmp)
    etc = _directory(rootfs, "etc")
    try:
        _write(etc, "passwd", _ETC_PASSWD.encode())
        _write(etc, "group", _ETC_GROUP.encode())
        _write(etc, "hostname", b"sandboxrt\n")
    finally:
        os.close(etc)


def _host_usr_rootfs(rootfs: int) -> list[Mount]:
    _skeleton(rootfs)
    os.close(_directory(rootfs, "usr"))
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink() and os.readlink(host).lstrip("/").startswith("usr/"):
            _link(rootfs, name, os.readlink(host).lstrip("/"))
        elif host.is_dir() and name in ("bin", "sbin", "lib", "lib64"):
            raise MissingFeatureError(
                "a merged /usr (/bin, /lib as symlinks into /usr)",
                "host_usr bundles need it; use rootfs='busybox'",
            )
    return [Mount(destination="/usr", type="bind", source="/usr", options=["rbind", "ro"])]


def _busybox_applets() -> list[str]:
    listing = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    return [name for name in listing.stdout.split() if name and name != "busybox"]


def _busybox_rootfs(rootfs: int) -> list[Mount]:
    if not os.access(BUSYBOX, os.X_OK):
        raise MissingFeatureError(
            "busybox", f"{BUSYBOX} is missing: apt-get install busybox-static"
        )
    _skeleton(rootfs)
    bin_dir = _directory(rootfs, "bin")
    try:
        _write(bin_dir, "busybox", Path(BUSYBOX).read_bytes(), 0o755)
        for applet in _busybox_applets():
            _link(bin_dir, applet, "busybox")
    finally:
        os.close(bin_dir)
    _link(rootfs, "sbin", "bin")
    usr = _directory(rootfs, "usr")
    try:
        _link(usr, "bin", "../bin")
    finally:
        os.close(usr)
    return []


def make_bundle(
    path: str | os.PathLike[str],
    args: Sequence[str] = ("sh",),
    *,
    rootfs: Literal["host_usr", "busybox"] = "host_usr",
    readonly: bool = False,
    terminal: bool = False,
) -> Spec:
    """Write a runnable bundle (config.json + rootfs/) at ``path``; returns its spec.

    ``args``: the program and its arguments, a non-empty sequence of strings (a string
    is an :class:`InvalidArgumentError`, as :meth:`Container.exec` makes it).
    ``rootfs``: ``"host_usr"`` (the host's ``/usr``, bound read-only) or ``"busybox"``
    (a static busybox copied in: needs the ``busybox-static`` package).
    """
    if rootfs not in ("host_usr", "busybox"):
        raise InvalidArgumentError("", f'rootfs must be "host_usr" or "busybox", not {rootfs!r}')
    with arguments_of(""):
        check_args(args)
    bundle = Path(path)
    root = bundle / "rootfs"
    root.mkdir(parents=True, exist_ok=True)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        make = _host_usr_rootfs if rootfs == "host_usr" else _busybox_rootfs
        extra = make(root_fd)
    finally:
        os.close(root_fd)
    spec = default_spec(list(args), terminal=terminal)
    assert spec.root is not None
    spec = attrs.evolve(
        spec,
        root=attrs.evolve(spec.root, readonly=readonly),
        mounts=[*(spec.mounts or []), *extra],
    )
    write_spec_file(bundle / "config.json", spec)
    return spec
