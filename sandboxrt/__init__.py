"""sandboxrt: create, run and manage OCI containers in real Linux sandboxes.

Public names are imported lazily, so that the sandbox supervisor (which runs
in its own fresh interpreter) can import sandboxrt's stdlib-only modules
without paying for attrs, cattrs or psutil.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from subprocess import DEVNULL, PIPE, STDOUT

    from sandboxrt._core.records import ContainerRecord
    from sandboxrt._core.spec import Spec, dump_spec, load_spec, read_spec_file, write_spec_file
    from sandboxrt._core.spec_default import default_spec
    from sandboxrt._core.status import Operation, Status
    from sandboxrt._proc.launcher import (
        ForkServerLauncher,
        LaunchedProcess,
        Launcher,
        SubprocessLauncher,
    )
    from sandboxrt._signals import SignalForwarder
    from sandboxrt.config import Config
    from sandboxrt.container import Container, CreateOptions, ExecRunOptions, OCIState, Stats
    from sandboxrt.errors import (
        AmbiguousIDError,
        ContainerExistsError,
        ContainerFileError,
        ContainerFileExistsError,
        ContainerFileNotFoundError,
        ContainerIsADirectoryError,
        ContainerNotADirectoryError,
        ContainerNotFoundError,
        ContainerPermissionError,
        CorruptMetadataError,
        CreateTimeoutError,
        ExecError,
        GoferError,
        HookError,
        InitError,
        InvalidArgumentError,
        InvalidIDError,
        InvalidStateError,
        LockTimeoutError,
        MissingFeatureError,
        NoOverlayError,
        ProcessError,
        ProcessNotFoundError,
        ProcessTimeoutError,
        ProtocolError,
        SandboxDiedError,
        SandboxrtError,
        SpecError,
        SystemCallError,
        WaitTimeoutError,
    )
    from sandboxrt.files import ContainerFiles, FileStat, WalkEntry
    from sandboxrt.gofer import Gofer
    from sandboxrt.pod import Pod
    from sandboxrt.process import Process, ProcessInfo
    from sandboxrt.sandbox import Sandbox
    from sandboxrt.stores import FileStore, MemoryStore, MetadataStore, default_root

    __version__: str

__all__ = [
    "DEVNULL",
    "PIPE",
    "STDOUT",
    "AmbiguousIDError",
    "Config",
    "Container",
    "ContainerExistsError",
    "ContainerFileError",
    "ContainerFileExistsError",
    "ContainerFileNotFoundError",
    "ContainerFiles",
    "ContainerIsADirectoryError",
    "ContainerNotADirectoryError",
    "ContainerNotFoundError",
    "ContainerPermissionError",
    "ContainerRecord",
    "CorruptMetadataError",
    "CreateOptions",
    "CreateTimeoutError",
    "ExecError",
    "ExecRunOptions",
    "FileStat",
    "FileStore",
    "ForkServerLauncher",
    "Gofer",
    "GoferError",
    "HookError",
    "InitError",
    "InvalidArgumentError",
    "InvalidIDError",
    "InvalidStateError",
    "LaunchedProcess",
    "Launcher",
    "LockTimeoutError",
    "MemoryStore",
    "MetadataStore",
    "MissingFeatureError",
    "NoOverlayError",
    "OCIState",
    "Operation",
    "Pod",
    "Process",
    "ProcessError",
    "ProcessInfo",
    "ProcessNotFoundError",
    "ProcessTimeoutError",
    "ProtocolError",
    "Sandbox",
    "SandboxDiedError",
    "SandboxrtError",
    "SignalForwarder",
    "Spec",
    "SpecError",
    "Stats",
    "Status",
    "SubprocessLauncher",
    "SystemCallError",
    "WaitTimeoutError",
    "WalkEntry",
    "__version__",
    "default_root",
    "default_spec",
    "dump_spec",
    "load_spec",
    "read_spec_file",
    "write_spec_file",
]

_HOMES = {
    "DEVNULL": "subprocess",
    "PIPE": "subprocess",
    "STDOUT": "subprocess",
    "ContainerRecord": "sandboxrt._core.records",
    "Spec": "sandboxrt._core.spec",
    "dump_spec": "sandboxrt._core.spec",
    "load_spec": "sandboxrt._core.spec",
    "read_spec_file": "sandboxrt._core.spec",
    "write_spec_file": "sandboxrt._core.spec",
    "default_spec": "sandboxrt._core.spec_default",
    "Operation": "sandboxrt._core.status",
    "Status": "sandboxrt._core.status",
    "ForkServerLauncher": "sandboxrt._proc.launcher",
    "Launcher": "sandboxrt._proc.launcher",
    "LaunchedProcess": "sandboxrt._proc.launcher",
    "SignalForwarder": "sandboxrt._signals",
    "SubprocessLauncher": "sandboxrt._proc.launcher",
    "Config": "sandboxrt.config",
    "Container": "sandboxrt.container",
    "CreateOptions": "sandboxrt.container",
    "ExecRunOptions": "sandboxrt.container",
    "OCIState": "sandboxrt.container",
    "Stats": "sandboxrt.container",
    "ContainerFiles": "sandboxrt.files",
    "FileStat": "sandboxrt.files",
    "WalkEntry": "sandboxrt.files",
    "Gofer": "sandboxrt.gofer",
    "Pod": "sandboxrt.pod",
    "Process": "sandboxrt.process",
    "ProcessInfo": "sandboxrt.process",
    "Sandbox": "sandboxrt.sandbox",
    "FileStore": "sandboxrt.stores",
    "MemoryStore": "sandboxrt.stores",
    "MetadataStore": "sandboxrt.stores",
    "default_root": "sandboxrt.stores",
}


if not TYPE_CHECKING:  # (a checker sees the names above: a misspelt one is an error)

    def __getattr__(name: str) -> Any:
        return _lazy(name)


def _lazy(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("sandboxrt")
        except PackageNotFoundError:
            return "0+unknown"
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    if name in __all__:
        return getattr(importlib.import_module("sandboxrt.errors"), name)
    raise AttributeError(f"module 'sandboxrt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
