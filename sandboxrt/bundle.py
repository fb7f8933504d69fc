"""Making small OCI bundles without downloads: from the host's /usr, or from busybox.

``host_usr`` bundles have an almost empty rootfs and bind-mount the host's
``/usr`` read-only into the container (inside the container's own mount
namespace: the host's mount table is untouched), so they have Python and the
usual tools. ``busybox`` bundles copy a static busybox (Debian's
``busybox-static``) and need nothing from the host at run time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs

from sandboxrt._core.spec import Mount, Spec, write_spec_file
from sandboxrt._core.spec_default import default_spec
from sandboxrt.errors import MissingFeatureError

__all__ = ["BUSYBOX", "make_bundle"]

#: Where Debian's busybox-static installs its binary.
BUSYBOX = "/bin/busybox"

_ETC_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
_ETC_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _link(path: Path, target: str) -> None:
    """``path`` as a symlink to ``target``, also where a bundle is made again."""
    if path.is_symlink():
        if os.readlink(path) == target:
            return
        path.unlink()
    path.symlink_to(target)


def _skeleton(rootfs: Path) -> None:
    for name in ("proc", "sys", "dev", "tmp", "etc", "root", "run"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "etc" / "passwd").write_text(_ETC_PASSWD)
    (rootfs / "etc" / "group").write_text(_ETC_GROUP)
    (rootfs / "etc" / "hostname").write_text("sandboxrt\n")


def _host_usr_rootfs(rootfs: Path) -> list[Mount]:
    _skeleton(rootfs)
    (rootfs / "usr").mkdir(exist_ok=True)
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink() and os.readlink(host).lstrip("/").startswith("usr/"):
            _link(rootfs / name, os.readlink(host).lstrip("/"))
        elif host.is_dir() and name in ("bin", "sbin", "lib", "lib64"):
            raise MissingFeatureError(
                "a merged /usr (/bin, /lib as symlinks into /usr)",
                "host_usr bundles need it; use rootfs='busybox'",
            )
    return [Mount(destination="/usr", type="bind", source="/usr", options=["rbind", "ro"])]


def _busybox_applets() -> list[str]:
    listing = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    return [name for name in listing.stdout.split() if name and name != "busybox"]


def _busybox_rootfs(rootfs: Path) -> list[Mount]:
    if not os.access(BUSYBOX, os.X_OK):
        raise MissingFeatureError(
            "busybox", f"{BUSYBOX} is missing: apt-get install busybox-static"
        )
    _skeleton(rootfs)
    bin_dir = rootfs / "bin"
    bin_dir.mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, bin_dir / "busybox")
    for applet in _busybox_applets():
        _link(bin_dir / applet, "busybox")
    _link(rootfs / "sbin", "bin")
    (rootfs / "usr").mkdir(exist_ok=True)
    _link(rootfs / "usr" / "bin", "../bin")
    return []


def make_bundle(
    path: str | os.PathLike[str],
    args: Sequence[str] = ("sh",),
    *,
    rootfs: Literal["host_usr", "busybox"] = "host_usr",
    readonly: bool = False,
    terminal: bool = False,
) -> Spec:
    """Write a runnable bundle (config.json + rootfs/) at ``path``; returns its spec."""
    bundle = Path(path)
    root = bundle / "rootfs"
    root.mkdir(parents=True, exist_ok=True)
    extra = _host_usr_rootfs(root) if rootfs == "host_usr" else _busybox_rootfs(root)
    spec = default_spec(list(args), terminal=terminal)
    assert spec.root is not None
    spec = attrs.evolve(
        spec,
        root=attrs.evolve(spec.root, readonly=readonly),
        mounts=[*(spec.mounts or []), *extra],
    )
    write_spec_file(bundle / "config.json", spec)
    return spec
