"""From an OCI spec to the plan a sandbox and its init carry out. Pure."""

from __future__ import annotations

import hashlib
import os.path
from collections.abc import Mapping
from typing import Any

from sandboxrt._core.mount_options import PROPAGATION, parse_mount_options
from sandboxrt._core.protocol import DevicePlan, InitPlan, MountPlan, SandboxPlan
from sandboxrt.errors import MissingFeatureError, SpecError

__all__ = ["build_plan", "sandbox_paths"]


def sandbox_paths(runtime_root: str, sandbox_id: str) -> tuple[str, str, str]:
    """``(runtime_dir, control_socket, exit_file)`` of a sandbox under ``runtime_root``."""
    name = sandbox_id
    if len(sandbox_id) > 40:
        name = sandbox_id[:24] + "-" + hashlib.sha256(sandbox_id.encode()).hexdigest()[:15]
    runtime_dir = os.path.join(runtime_root, name)
    return runtime_dir, os.path.join(runtime_dir, "ctl"), os.path.join(runtime_dir, "exit")


def _mount_plan(mount: Mapping[str, Any], bundle: str) -> MountPlan:
    kind = mount.get("type") or ""
    options = parse_mount_options(mount.get("options") or [], kind)
    source = mount.get("source") or ""
    if options.is_bind and source and not source.startswith("/"):
        source = os.path.join(bundle, source)
    return MountPlan(
        destination=mount["destination"],
        type="bind" if options.is_bind else kind,
        source=source,
        flags=options.flags,
        data=options.data,
        propagation=list(options.propagation),
        bind=options.is_bind,
    )


def _init_plan(container_id: str, spec: Mapping[str, Any], bundle: str) -> InitPlan:
    process = spec.get("process") or {}
    user = process.get("user") or {}
    linux = spec.get("linux") or {}
    hooks = spec.get("hooks") or {}
    root = spec.get("root") or {}
    rootfs = root.get("path", "rootfs")
    if not rootfs.startswith("/"):
        rootfs = os.path.join(bundle, rootfs)
    if not process.get("args"):
        raise SpecError([("process.args", "expected a non-empty list of strings")])
    propagation = linux.get("rootfsPropagation")
    return InitPlan(
        container_id=container_id,
        rootfs=os.path.normpath(rootfs),
        args=list(process["args"]),
        env=list(process.get("env") or []),
        cwd=process.get("cwd") or "/",
        uid=int(user.get("uid", 0)),
        gid=int(user.get("gid", 0)),
        additional_gids=[int(g) for g in user.get("additionalGids") or []],
        umask=user.get("umask"),
        rlimits=[[r["type"], r["soft"], r["hard"]] for r in process.get("rlimits") or []],
        oom_score_adj=process.get("oomScoreAdj"),
        no_new_privileges=bool(process.get("noNewPrivileges", False)),
        terminal=bool(process.get("terminal", False)),
        readonly_root=bool(root.get("readonly", False)),
        mounts=[_mount_plan(m, bundle) for m in spec.get("mounts") or []],
        devices=[
            DevicePlan(
                path=d["path"],
                type=d["type"],
                major=d.get("major", 0),
                minor=d.get("minor", 0),
                mode=d.get("fileMode", 0o666),
                uid=d.get("uid", 0),
                gid=d.get("gid", 0),
            )
            for d in linux.get("devices") or []
        ],
        sysctl=dict(linux.get("sysctl") or {}),
        masked_paths=list(linux.get("maskedPaths") or []),
        readonly_paths=list(linux.get("readonlyPaths") or []),
        rootfs_propagation=PROPAGATION[propagation] if propagation else 0,
        pause_for_hooks=any(hooks.get(k) for k in ("prestart", "createRuntime", "createContainer")),
        create_container_hooks=list(hooks.get("createContainer") or []),
        start_container_hooks=list(hooks.get("startContainer") or []),
    )


def build_plan(
    *, container_id: str, sandbox_id: str, spec: Mapping[str, Any], bundle: str, runtime_root: str
) -> SandboxPlan:
    """The plan of a new sandbox whose root container is ``container_id``."""
    linux = spec.get("linux") or {}
    namespaces = [[ns["type"], ns.get("path") or ""] for ns in linux.get("namespaces") or []]
    kinds = dict(namespaces)
    if "mount" not in kinds:
        raise SpecError([("linux.namespaces", "a mount namespace is required")])
    if "user" in kinds and not kinds["user"]:
        raise MissingFeatureError(
            "new user namespaces", "sandboxrt does not map users yet; join one by path instead"
        )
    runtime_dir, control_socket, exit_file = sandbox_paths(runtime_root, sandbox_id)
    new_uts = "uts" in kinds and not kinds["uts"]
    return SandboxPlan(
        sandbox_id=sandbox_id,
        runtime_dir=runtime_dir,
        control_socket=control_socket,
        exit_file=exit_file,
        namespaces=namespaces,
        init=_init_plan(container_id, spec, bundle),
        hostname=spec.get("hostname") if new_uts else None,
        domainname=spec.get("domainname") if new_uts else None,
    )
