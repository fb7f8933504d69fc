"""Bad input: invalid ids, malformed specs, missing bundles, wrong states, wrong stdio.

Each refusal raises the documented error and leaves nothing behind: no
record, no lock file, no runtime directory, no process, no open fd.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import (
    BundleFactory,
    children_of_this_process,
    edit_config,
    ended,
    in_python,
    needs_busybox,
    needs_root,
)

from sandboxrt import (
    AmbiguousIDError,
    Config,
    Container,
    ContainerExistsError,
    ContainerNotFoundError,
    CorruptMetadataError,
    FileStore,
    InitError,
    InvalidArgumentError,
    InvalidIDError,
    InvalidStateError,
    MemoryStore,
    MissingFeatureError,
    ProcessNotFoundError,
    SandboxrtError,
    SpecError,
    Status,
    SystemCallError,
    WaitTimeoutError,
)
from sandboxrt._core.protocol import Progress
from sandboxrt._core.spec import dump_spec, load_spec, read_spec_file, write_spec_file
from sandboxrt._core.spec_default import default_spec
from sandboxrt._core.spec_validate import MAX_SPEC_BYTES
from sandboxrt._os import capabilities, cgroups
from sandboxrt._proc.launcher import ForkServerLauncher, default_launcher
from sandboxrt.bundle import make_bundle
from sandboxrt.sandbox import Sandbox

pytestmark = [needs_root, needs_busybox]


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def assert_nothing_left(store: FileStore) -> None:
    """No record, no lock or temp file, no sandbox runtime directory."""
    assert Container.list(store=store) == []
    if store.root.exists():
        assert sorted(os.listdir(store.root)) in ([], [".sandboxes"])
        if (store.root / ".sandboxes").exists():
            assert os.listdir(store.runtime_dir) == []


@pytest.fixture
def fd_check() -> Iterator[None]:
    """Fail when the test leaves an fd open in this process. What lives as long as the
    process is made first: the default fork server's connection, and the mount-table
    watch of the cgroup layout's cache."""
    launcher = default_launcher()
    if isinstance(launcher, ForkServerLauncher):
        launcher.start()
    cgroups.detect()
    before = open_fds()
    yield
    assert open_fds() - before == set(), "file descriptors leaked"


# --- ids ---------------------------------------------------------------------------------------

BAD_IDS: list[Any] = [
    "",
    ".",
    "..",
    "a/b",
    "../escape",
    "-leading-dash",
    ".hidden",
    "with space",
    "nul\0byte",
    "tab\there",
    "ünïcode",
    "x" * 1025,
    "x" * 300,  # valid in general, but too long for a file name in a FileStore
    123,
    None,
]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=lambda v: repr(v)[:20])
def test_invalid_id_on_create(
    bad_id: Any, store: FileStore, bundle: BundleFactory, fd_check: None
) -> None:
    path = bundle()
    with pytest.raises(InvalidIDError) as info:
        Container.create(bad_id, path, store=store)
    assert isinstance(info.value, ValueError)
    assert "invalid container id" in str(info.value)
    assert_nothing_left(store)


@pytest.mark.parametrize(
    "bad_id", [i for i in BAD_IDS if i != "x" * 300], ids=lambda v: repr(v)[:20]
)
def test_invalid_id_on_load(bad_id: Any, store: FileStore) -> None:
    with pytest.raises(InvalidIDError):
        Container.load(bad_id, store=store)
    assert_nothing_left(store)


def test_id_too_long_for_a_file_store_is_never_found(store: FileStore) -> None:
    with pytest.raises(ContainerNotFoundError):
        Container.load("x" * 300, store=store)


def test_load_unknown_and_ambiguous(store: FileStore, bundle: BundleFactory) -> None:
    with pytest.raises(ContainerNotFoundError) as info:
        Container.load("nope", store=store)
    assert isinstance(info.value, LookupError)
    assert str(info.value) == 'container "nope" does not exist'  # (quoted as every error)
    path = bundle(["sleep", "30"])
    first = Container.create("web1", path, store=store)
    second = Container.create("web2", path, store=store)
    try:
        with pytest.raises(AmbiguousIDError) as ambiguous:
            Container.load("web", store=store)
        assert isinstance(ambiguous.value, LookupError)
        assert ambiguous.value.candidates == ["web1", "web2"]
        assert Container.load("web2", store=store).id == "web2"
        with pytest.raises(ContainerNotFoundError):
            Container.load("web3", store=store)
    finally:
        first.destroy()
        second.destroy()
    assert_nothing_left(store)


def test_duplicate_id_leaves_the_first_alone(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "30"])
    first = Container.create("dup", path, store=store)
    try:
        with pytest.raises(ContainerExistsError) as info:
            Container.create("dup", path, store=store)
        assert isinstance(info.value, FileExistsError)
        assert first.status is Status.CREATED
        assert first.sandbox is not None and first.sandbox.is_running()
    finally:
        first.destroy()
    assert_nothing_left(store)


def test_a_runtime_directory_not_sandboxrt_s_is_never_removed(
    bundle: BundleFactory, tmp_path: Path
) -> None:
    """A ``MemoryStore`` given a directory of the caller's: an entry there named as a
    container is refused, untouched (it was taken for a crashed create's and removed);
    so is a live sandbox's (a second store sharing the directory through a link)."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "important.txt").write_text("keep")
    store = MemoryStore(project)
    path = bundle(["sleep", "30"])
    with pytest.raises(ContainerExistsError, match=r"runtime directory .*data is not sandboxrt's"):
        Container.run("data", path, store=store)
    assert (project / "data" / "important.txt").read_text() == "keep"
    first = Container.create("c", path, store=store)
    try:
        (tmp_path / "link").symlink_to(project)
        other = MemoryStore.__new__(MemoryStore)  # (a second store, past the guard)
        MemoryStore.__init__(other, tmp_path / "elsewhere")
        other._runtime_dir = tmp_path / "link"
        with pytest.raises(ContainerExistsError, match="a live sandbox's"):
            Container.create("c", path, store=other)
        assert first.exec_run(["true"]).returncode == 0  # (its directory is whole)
    finally:
        first.destroy()


# --- bundles and specs -------------------------------------------------------------------------


def test_missing_bundle_dir(store: FileStore, tmp_path: Path, fd_check: None) -> None:
    with pytest.raises(SpecError) as info:
        Container.create("x", tmp_path / "no-such-bundle", store=store)
    assert "no-such-bundle/config.json" in str(info.value)
    assert "cannot read" in str(info.value)
    assert_nothing_left(store)


def test_missing_config_json(store: FileStore, bundle: BundleFactory, fd_check: None) -> None:
    path = bundle()
    (path / "config.json").unlink()
    with pytest.raises(SpecError, match=r"config\.json: cannot read"):
        Container.create("x", path, store=store)
    assert_nothing_left(store)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to a spec document: set the value at a dotted path (``[n]`` indexes lists)."""

    def change(doc: dict[str, Any]) -> None:
        target: Any = doc
        keys: list[Any] = []
        for part in path.split("."):
            name, _, index = part.partition("[")
            keys.append(name)
            if index:
                keys.append(int(index.rstrip("]")))
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.pop(key)


def _drop_mount_namespace(doc: dict[str, Any]) -> None:
    namespaces = doc["linux"]["namespaces"]
    doc["linux"]["namespaces"] = [ns for ns in namespaces if ns["type"] != "mount"]


BAD_SPECS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("args-string", _set("process.args", "sh"), "process.args"),
    ("args-number", _set("process.args", [1]), "process.args[0]"),
    ("args-empty", _set("process.args", []), "process.args"),
    ("uid-string", _set("process.user.uid", "root"), "process.user.uid"),
    ("env-dict", _set("process.env", {"A": "1"}), "process.env"),
    ("mount-destination", _set("mounts[0].destination", 3), "mounts[0].destination"),
    ("mounts-object", _set("mounts", {"destination": "/x"}), "mounts"),
    ("root-path", _set("root.path", 5), "root.path"),
    ("namespace-type", _set("linux.namespaces[0].type", "bogus"), "linux.namespaces[0].type"),
    (
        "rlimit-type",
        _set("process.rlimits", [{"type": "RLIMIT_X", "soft": 1, "hard": 1}]),
        "process.rlimits[0].type",
    ),
    ("hook-without-path", _set("hooks", {"prestart": [{"args": []}]}), "hooks.prestart[0].path"),
    ("no-oci-version", _drop("ociVersion"), "ociVersion"),
    ("no-mount-namespace", _drop_mount_namespace, "linux.namespaces"),
]


@pytest.mark.parametrize(
    ("change", "json_path"),
    [(c, p) for _, c, p in BAD_SPECS],
    ids=[name for name, _, _ in BAD_SPECS],
)
def test_malformed_spec_names_the_json_path(
    change: Callable[[dict[str, Any]], None],
    json_path: str,
    store: FileStore,
    bundle: BundleFactory,
    fd_check: None,
) -> None:
    path = bundle()
    doc = json.loads((path / "config.json").read_text())
    change(doc)
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(SpecError) as info:
        Container.create("x", path, store=store)
    assert isinstance(info.value, ValueError)
    assert json_path in [p for p, _ in info.value.problems], info.value.problems
    assert f"{json_path}:" in str(info.value)
    assert_nothing_left(store)


@pytest.mark.parametrize("text", ["{not json", "", "[]", "null", '"spec"', "{}"])
def test_config_json_that_is_not_a_spec(
    text: str, store: FileStore, bundle: BundleFactory, fd_check: None
) -> None:
    path = bundle()
    (path / "config.json").write_text(text)
    with pytest.raises(SpecError) as info:
        Container.create("x", path, store=store)
    assert str(path / "config.json") in str(info.value)
    assert_nothing_left(store)


def test_json_nested_too_deeply_is_a_spec_error(
    store: FileStore, bundle: BundleFactory, fd_check: None
) -> None:
    path = bundle()
    (path / "config.json").write_text('{"annotations": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SpecError, match=r'container "x", .*config\.json: .*nested too deeply'):
        Container.create("x", path, store=store)
    assert_nothing_left(store)


def test_a_spec_made_in_code_is_checked_as_config_json_is(
    store: FileStore, bundle: BundleFactory, fd_check: None
) -> None:
    """``spec=`` skips no check: here a sysctl that would change the host."""
    path = bundle(["true"])
    spec = read_spec_file(path / "config.json")
    assert spec.linux is not None
    bad = attrs.evolve(spec, linux=attrs.evolve(spec.linux, sysctl={"kernel.core_pattern": "x"}))
    with pytest.raises(SpecError, match=r'container "x": .*core_pattern.*not namespaced'):
        Container.create("x", path, store=store, spec=bad)
    assert_nothing_left(store)
    assert Container.run("x", path, store=store, spec=spec) == 0


def test_sysctls_in_a_namespace_of_ours_joined_by_path_are_refused(
    store: FileStore, bundle: BundleFactory, fd_check: None
) -> None:
    """As runc: a spec joining the runtime's own network namespace (by a path to it)
    would set that namespace's sysctls, the host's."""
    path = bundle(["true"])

    def join_ours(doc: dict[str, Any]) -> None:
        for ns in doc["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = f"/proc/{os.getpid()}/ns/net"
        doc["linux"]["sysctl"] = {"net.ipv4.ip_default_ttl": "65"}

    edit_config(path, join_ours)
    match = r'container "x": .*ttl"\]: not allowed in the runtime\'s own network namespace'
    with pytest.raises(SpecError, match=match):
        Container.create("x", path, store=store)
    assert_nothing_left(store)


def test_a_spec_error_found_by_the_plan_names_the_container(
    store: FileStore, bundle: BundleFactory, fd_check: None
) -> None:
    path = bundle(["true"])
    caps = {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}
    edit_config(path, lambda d: d["process"].update(capabilities=caps))
    with pytest.raises(SpecError, match=r'container "x": .*effective\[0\]: CAP_KILL is not in'):
        Container.create("x", path, store=store)
    assert_nothing_left(store)


def test_config_json_that_is_a_directory(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle()
    (path / "config.json").unlink()
    (path / "config.json").mkdir()
    with pytest.raises(SpecError, match="cannot read"):
        Container.create("x", path, store=store)
    assert_nothing_left(store)


def test_bad_config_values() -> None:
    """A bad value is an InvalidArgumentError (a ValueError) naming the option; a value of
    the wrong type altogether a TypeError."""
    bad_values = [
        (
            {"lock_timeout": 0},
            "Config.lock_timeout must be a positive number of seconds under 1e+09, not 0",
        ),
        ({"destroy_timeout": -1.0}, "Config.destroy_timeout must be a positive"),
        ({"create_timeout": math.nan}, "Config.create_timeout must be a positive"),
        ({"create_timeout": math.inf}, "Config.create_timeout must be a positive"),
        ({"lock_timeout": 1e9}, "Config.lock_timeout must be a positive number of seconds under"),
        ({"overlay_size": 5}, "Config.overlay_size must be 65536 to 9223372036854775807 bytes"),
        # (2**64 bytes wrapped to an unbounded layer, 2**64 + 1 MiB to a 1 MiB one)
        ({"overlay_size": 2**64}, "Config.overlay_size must be 65536 to "),
    ]
    # A typo is not taken for the default.
    for network in ("hots", "none", ""):
        bad_values.append(({"network": network}, "Config.network must be one of 'sandbox', "))
    for bad, message in bad_values:
        with pytest.raises(InvalidArgumentError, match=f"^{re.escape(message)}"):
            Config(**bad)  # type: ignore[arg-type]
    # Nor a string for a flag or a number.
    for wrong in ({"overlay": "no"}, {"lazy_gofer": 1}, {"destroy_timeout": "10"}):
        (name,) = wrong
        with pytest.raises(TypeError, match=f"^Config.{name} must be a"):
            Config(**wrong)  # type: ignore[arg-type]
    assert Config(network="host", overlay=True, lazy_gofer=True).network == "host"


# --- wrong state -------------------------------------------------------------------------------


def test_signals_by_number_or_name_and_nothing_else(
    store: FileStore, bundle: BundleFactory
) -> None:
    container = Container.create("sig", bundle(["sleep", "60"]), store=store)
    try:
        container.start()
        process = container.exec(["sleep", "60"])
        for bad in (999, -1, 65, "SIGNOPE", "", 1.5, True):
            with pytest.raises(InvalidArgumentError, match='container "sig": '):
                container.kill(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError, match='container "sig": '):
                process.send_signal(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError, match='container "sig": '):
                container.signal_process(process.pid, bad)  # type: ignore[arg-type]
        assert container.status is Status.RUNNING
        container.signal_process(process.pid, "kill")  # names as runc kill takes them
        assert process.wait(timeout=30) == -signal.SIGKILL
        container.kill("TERM")
        assert container.wait(timeout=30) == -signal.SIGTERM
    finally:
        container.destroy()


def test_operations_in_the_wrong_state(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "30"])
    container = Container.create("x", path, store=store)
    try:
        # created, then stopped before it ever ran
        container.kill(signal.SIGKILL)
        assert container.wait(timeout=10) == -signal.SIGKILL
        assert container.status is Status.STOPPED
        with pytest.raises(InvalidStateError) as info:
            container.start()
        assert str(info.value) == 'cannot start container "x" in state stopped'
        assert isinstance(info.value, RuntimeError)
        assert (info.value.operation, info.value.container_id, info.value.status) == (
            "start",
            "x",
            "stopped",
        )
        with pytest.raises(InvalidStateError, match='cannot kill container "x" in state stopped'):
            container.kill()
        container.kill(signal.SIGKILL, all=True)  # allowed: cleaning up leftovers
        assert container.wait() == -signal.SIGKILL  # any number of times
    finally:
        container.destroy()
    # destroyed: gone, and saying so
    for operation in (container.start, container.kill, container.wait):
        with pytest.raises(ContainerNotFoundError):
            operation()
    with pytest.raises(ContainerNotFoundError):
        _ = container.status
    container.destroy()  # a no-op
    assert_nothing_left(store)


def test_start_while_running_and_after_exit(store: FileStore, bundle: BundleFactory) -> None:
    path = bundle(["sleep", "30"])
    container = Container.create("y", path, store=store)
    try:
        container.start()
        assert container.status is Status.RUNNING
        with pytest.raises(InvalidStateError, match='cannot start container "y" in state running'):
            container.start()
        with pytest.raises(WaitTimeoutError):
            container.wait(timeout=0.1)
        container.kill(signal.SIGKILL)
        assert container.wait(timeout=10) == -signal.SIGKILL
        with pytest.raises(InvalidStateError, match='cannot start container "y" in state stopped'):
            container.start()
        with pytest.raises(InvalidStateError, match='cannot kill container "y" in state stopped'):
            container.kill(signal.SIGTERM)
    finally:
        container.destroy()
    assert_nothing_left(store)


def test_wrong_state_with_a_memory_store(bundle: BundleFactory) -> None:
    store = MemoryStore()
    container = Container.create("m", bundle(["true"]), store=store)
    try:
        container.start()
        assert container.wait(timeout=10) == 0
        with pytest.raises(InvalidStateError, match='cannot start container "m" in state stopped'):
            container.start()
    finally:
        container.destroy()
    assert Container.list(store=store) == []


# --- stdio -------------------------------------------------------------------------------------


class _NoFileno:
    pass


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"stdout": "out.txt"}, TypeError),
        ({"stdout": 1.5}, TypeError),
        ({"stdin": _NoFileno()}, TypeError),
        ({"stderr": b"x"}, TypeError),
        ({"stdout": True}, TypeError),
        ({"stdout": -7}, ValueError),
        ({"stdin": subprocess.STDOUT}, ValueError),
        ({"stdout": subprocess.PIPE, "stderr": "nope"}, TypeError),
    ],
    ids=["str", "float", "no-fileno", "bytes", "bool", "negative", "stdin-STDOUT", "pipe-then-bad"],
)
def test_stdio_of_the_wrong_kind(
    kwargs: dict[str, Any],
    error: type[Exception],
    store: FileStore,
    bundle: BundleFactory,
    fd_check: None,
) -> None:
    with pytest.raises(error):
        Container.create("x", bundle(), store=store, **kwargs)
    assert_nothing_left(store)


@pytest.mark.parametrize("stream", ["stdin", "stdout", "stderr"])
def test_run_refuses_a_pipe_nothing_would_read(
    stream: str, store: FileStore, bundle: BundleFactory, fd_check: None
) -> None:
    """A program writing more than a pipe holds would wait for ever: refused up front."""
    path = bundle(["sh", "-c", "head -c 200000 /dev/zero"])
    with pytest.raises(InvalidArgumentError, match=f'"x".*{stream}=PIPE'):
        Container.run("x", path, store=store, **{stream: subprocess.PIPE})
    assert_nothing_left(store)
    # A file takes it all.
    with open(os.devnull, "wb") as sink:
        assert Container.run("x", path, store=store, stdout=sink) == 0


def test_stdio_fd_that_is_not_open(
    store: FileStore, bundle: BundleFactory, tmp_path: Path, fd_check: None
) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(ValueError, match=f"{w} is not open"):
        Container.create("x", bundle(), store=store, stdout=w)
    closed = (tmp_path / "f").open("wb")
    closed.close()
    with pytest.raises(ValueError, match="closed file"):
        Container.create("x", bundle(), store=store, stdout=closed)
    with pytest.raises(InvalidArgumentError, match='"x": a BytesIO has no file descriptor'):
        Container.run("x", bundle(), store=store, stdout=io.BytesIO())
    assert_nothing_left(store)


@pytest.mark.parametrize("earlier", ["stdin", "stdout"])
def test_a_closed_fd_is_refused_whatever_the_earlier_streams_make(
    store: FileStore, bundle: BundleFactory, fd_check: None, earlier: str
) -> None:
    """A pipe or /dev/null made for an earlier stream took the lowest free number, the
    closed one given for a later stream, which then passed for open: the program wrote
    to the read end of its own stdin pipe."""
    r, w = os.pipe()
    os.close(w)  # the lowest free number now (r holds the one below it)
    later = {"stdin": "stdout", "stdout": "stderr"}[earlier]
    try:
        with pytest.raises(InvalidArgumentError, match=f"descriptor {w} is not open"):
            Container.create("x", bundle(), store=store, **{earlier: subprocess.PIPE, later: w})
    finally:
        os.close(r)
    assert_nothing_left(store)


def test_a_failed_hand_over_of_the_stdio_leaves_nothing(
    store: FileStore, bundle: BundleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipes go to a mapped root once the record is made: a failure there (a chown
    refused) is undone as any later one is, record included."""
    from sandboxrt import _creation

    def refused(*_: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_creation, "give_pipes_to_mapped_root", refused)
    with pytest.raises(OSError, match="not permitted"):
        Container.create("handover", bundle(), store=store, stdout=subprocess.PIPE)
    assert_nothing_left(store)


def test_what_is_missing_for_a_container_names_it_in_container_id(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A missing feature found while working on a container (a spec field sandboxrt does
    not apply) carries the container's id, as every other error about it does."""
    path = edit_config(bundle(), lambda d: d["process"].update(apparmorProfile="x"))
    with pytest.raises(MissingFeatureError, match='container "noarmor"') as info:
        Container.create("noarmor", path, store=store)
    assert info.value.container_id == "noarmor"
    assert_nothing_left(store)


def test_an_error_of_a_container_s_operation_names_it() -> None:
    """What code that knows no container raises in one's operation gets its id: a system
    call's error and a plain one in their message too, and running out of fds becomes a
    ``SystemCallError``; another container's error keeps its id."""
    from sandboxrt.container import _out_of_resources

    bad = OSError(errno.EBADF, "Bad file descriptor")
    with (
        pytest.raises(SystemCallError, match='container "c1": reading: Bad') as info,
        _out_of_resources("op", "c1"),
    ):
        raise SystemCallError("reading", bad)
    assert info.value.container_id == "c1" and info.value.errno == errno.EBADF
    with (
        pytest.raises(
            MissingFeatureError, match=r'^a thing \(container "c1"\) is not supported'
        ) as missing,
        _out_of_resources("op", "c1"),
    ):
        raise MissingFeatureError("a thing", unsupported=True)
    assert missing.value.container_id == "c1" and missing.value.unsupported
    with (
        pytest.raises(SandboxrtError, match=r'^container "c1": the fork server') as plain,
        _out_of_resources("op", "c1"),
    ):
        raise SandboxrtError("the fork server died")
    assert plain.value.container_id == "c1"
    with pytest.raises(ContainerNotFoundError) as other, _out_of_resources("op", "c1"):
        raise ContainerNotFoundError("c2")
    assert other.value.container_id == "c2"
    with (
        pytest.raises(SystemCallError, match='"c1": op: Too many open files') as out,
        _out_of_resources("op", "c1"),
    ):
        raise OSError(errno.EMFILE, "Too many open files")
    assert out.value.container_id == "c1"


def test_bad_arguments_are_errors_of_sandboxrt_naming_the_container(
    store: FileStore, bundle: BundleFactory, fd_check: None
) -> None:
    """A bad value is an :class:`InvalidArgumentError` (a ``ValueError`` too) naming the
    container; what is of the wrong type altogether is a ``TypeError``."""
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(InvalidArgumentError, match=f'"x": stdio file descriptor {w} is not'):
        Container.create("x", bundle(), store=store, stdout=w)
    with pytest.raises(TypeError, match="store must be a MetadataStore"):
        Container.create("x", bundle(), store=str(store.root))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store must be a MetadataStore"):
        Container.load("x", store=str(store.root))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"config must be a sandboxrt\.Config"):
        Container.create("x", bundle(), store=store, config={})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"spec must be a sandboxrt Spec"):
        Container.create("x", bundle(), store=store, spec={})  # type: ignore[arg-type]
    assert_nothing_left(store)
    container = Container.create("x", bundle(["sleep", "10"]), store=store)
    try:
        wrong: list[tuple[Callable[[], object], str]] = [
            (lambda: container.exec(["true"], cwd="tmp"), "cwd must be an absolute path"),
            (lambda: container.exec(["true"], env=["NOEQUALS"]), "malformed environment"),
            (lambda: container.exec([]), "args must be a non-empty"),
            (lambda: container.exec(["true"], user="a:b:c"), "user must be"),
            (lambda: container.exec(["true"], timeout=0), "timeout must be positive"),
            (lambda: container.exec(["true"], stdin=w), f"{w} is not open"),
            (lambda: container.kill(all=True, foreground=True), "exclude each other"),
            (lambda: container.exec_run(["true"], input=b"", stdin=-3), "may not both"),
        ]
        for call, problem in wrong:
            with pytest.raises(InvalidArgumentError, match=problem) as info:
                call()
            assert isinstance(info.value, ValueError)
            assert info.value.container_id == "x"
            assert str(info.value).startswith('container "x": ')
        # A wrong type is a TypeError naming it, as subprocess raises.
        with pytest.raises(TypeError, match=r"must be str, not str: int \('A'\)"):
            container.exec(["true"], env={"A": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="env entries must be str, not bytes"):
            container.exec(["true"], env=[b"A=1"])  # type: ignore[list-item]
        assert container.status is Status.CREATED
    finally:
        container.destroy()
    assert_nothing_left(store)


def test_a_caller_with_closed_stdio_gives_no_fd_of_its_own_to_the_container(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """A daemon's fds 0 and 2 are closed: an inherited stream is then /dev/null, never
    the next fd the library opened there (a mountinfo, a gofer's socket, a lock file)."""
    show = "readlink /proc/self/fd/0; readlink /proc/self/fd/2"
    path = bundle(["sh", "-c", show])
    sleeper = bundle(["sleep", "60"])
    out = tmp_path / "out"
    code = f"""
import os, subprocess
from sandboxrt import Container, FileStore
store = FileStore({str(store.root)!r})
with open({str(out)!r}, "w") as out:
    os.close(0)
    os.close(2)
    for name in ("cold", "warm"):
        assert Container.run(name, {str(path)!r}, store=store, stdout=out) == 0
    with Container.create("x", {str(path)!r}, store=store, stdout=out) as c:
        c.start()
        c.wait()
with Container.create("e", {str(sleeper)!r}, store=store) as c:
    c.start()
    p = c.exec(["sh", "-c", {show!r}], stdout=subprocess.PIPE)
    print(p.communicate(timeout=10)[0].decode(), end="", file=open({str(out)!r}, "a"))
"""
    done = in_python(code)
    assert done.returncode == 0, done.stdout
    assert out.read_text().split() == ["/dev/null"] * 8


def test_fd_0_closed_while_a_thread_waits_reaches_no_container(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """Closed after the library was imported, fd 0 was the number the next library socket
    took (a wait's connection to the supervisor, in another thread): an exec told to
    inherit stdin got it, and could speak to the supervisor."""
    code = f"""
import os, subprocess, threading, time
from sandboxrt import Container, FileStore
store = FileStore({str(store.root)!r})
with Container.create("w", {str(bundle(["sleep", "60"]))!r}, store=store) as c:
    c.start()
    os.close(0)
    threading.Thread(target=c.wait, daemon=True).start()
    time.sleep(0.3)
    p = c.exec(["readlink", "/proc/self/fd/0"], stdout=subprocess.PIPE)
    print(p.communicate(timeout=10)[0].decode().strip())
"""
    done = in_python(code)
    assert (done.returncode, done.stdout.strip()) == (0, "/dev/null"), done.stderr


def test_a_record_altered_on_disk_still_lets_its_container_be_destroyed(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Timeouts that are not numbers and poststop hooks that are not a list (validated at
    creation: written into the record since) gave raw errors, and no destroy worked."""
    container = Container.create("x", bundle(["sleep", "60"]), store=store)
    supervisor = container.state().pid
    record = store.load("x")
    spec = {**record.spec, "hooks": {"poststop": 5}}
    config = {**record.config, "destroy_timeout": "soon", "lock_timeout": -1}
    store.save(attrs.evolve(record, spec=spec, config=config))
    Container.load("x", store=store).destroy()
    assert_nothing_left(store)
    assert supervisor is not None and ended(supervisor)
    container.destroy()  # (idempotent: it is gone)


def _cgroup_dirs(record: dict[str, Any] | None) -> list[str]:
    assert record is not None
    return [os.path.join(p["mountpoint"], p["path"]) for p in record["placements"]]


def test_a_records_runtime_dir_is_never_trusted(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """A destroy removed the directory the record named as the sandbox's runtime
    directory, wherever that was (``/etc``, once): it is made from the store and the id."""
    container = Container.create("x", bundle(["sleep", "60"]), store=store)
    container.start()
    supervisor = container.state().pid
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("me")
    store.save(attrs.evolve(store.load("x"), runtime_dir=str(elsewhere)))
    Container.load("x", store=store).destroy()
    assert (elsewhere / "keep").read_text() == "me"
    assert_nothing_left(store)
    assert supervisor is not None and ended(supervisor)
    # Nor is a sandbox id that is not an id (paths are made of it).
    store.save(rec_of(container))
    document = json.loads((store.root / "x.json").read_text())
    document["container"]["sandbox_id"] = "../.."
    (store.root / "x.json").write_text(json.dumps(document))
    with pytest.raises(CorruptMetadataError, match="sandbox_id"):
        Container.load("x", store=store)
    store.delete("x")


def rec_of(container: Container) -> Any:
    return container._record


def test_an_unreadable_record_still_lets_its_container_be_destroyed(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A record that cannot be read (or whose cgroup cannot) left the sandbox, its
    cgroup and its files for good: the object that read it before destroys with what it
    read, and a cgroup record that cannot be read is looked for where it would be."""
    container = Container.create("x", bundle(["sleep", "60"]), store=store)
    container.start()
    supervisor, dirs = container.state().pid, _cgroup_dirs(rec_of(container).cgroup)
    assert dirs and all(os.path.isdir(d) for d in dirs)
    (store.root / "x.json").write_bytes(b'{"schema": 1, "contai')
    with pytest.raises(CorruptMetadataError):
        Container.load("x", store=store)
    container.destroy()
    assert_nothing_left(store)
    assert supervisor is not None and ended(supervisor)
    assert not any(os.path.exists(d) for d in dirs)
    # A cgroup record without its placements: loaded, and destroyed all the same.
    container = Container.create("y", bundle(["sleep", "60"]), store=store)
    container.start()
    supervisor, dirs = container.state().pid, _cgroup_dirs(rec_of(container).cgroup)
    store.save(attrs.evolve(store.load("y"), cgroup={"driver": "v1", "path": "/x"}))
    Container.load("y", store=store).destroy()
    assert_nothing_left(store)
    assert supervisor is not None and ended(supervisor)
    assert not any(os.path.exists(d) for d in dirs)


def test_a_cgroup_record_naming_what_is_not_its_cgroup_is_never_acted_on(
    store: FileStore, bundle: BundleFactory, tmp_path: Path
) -> None:
    """What a record names as its cgroup is killed and removed: a directory that is no
    cgroup (its tree of plain files was removed) or another container's cgroup (its
    processes were killed) is refused, and the destroy goes on without it."""
    other = Container.create("other", bundle(["sleep", "60"]), store=store)
    other.start()
    other_supervisor, other_dirs = other.state().pid, _cgroup_dirs(rec_of(other).cgroup)
    fake = tmp_path / "tree"
    (fake / "x").mkdir(parents=True)
    (fake / "x" / "cgroup.procs").write_text(f"{other_supervisor}\n")
    placement = {"mountpoint": str(fake), "controllers": [], "path": "x", "created": ["x"]}
    not_a_cgroup = {"driver": "v1", "path": "/x", "placements": [placement]}
    above = json.loads(json.dumps(rec_of(other).cgroup))  # the level that holds its cgroup
    for level in above["placements"]:
        level["path"] = level["path"].rsplit("/", 1)[0]
        level["created"] = [level["path"]]
    for i, cgroup in enumerate([not_a_cgroup, rec_of(other).cgroup, above]):
        container = Container.create(f"x{i}", bundle(["sleep", "60"]), store=store)
        container.start()
        supervisor, dirs = container.state().pid, _cgroup_dirs(rec_of(container).cgroup)
        store.save(attrs.evolve(store.load(f"x{i}"), cgroup=cgroup))
        with pytest.raises(CorruptMetadataError, match="its cgroup record names"):
            Container.load(f"x{i}", store=store).stats()
        Container.load(f"x{i}", store=store).destroy()
        assert supervisor is not None and ended(supervisor)
        assert not any(os.path.exists(d) for d in dirs)  # (its own, found where they are)
    assert (fake / "x" / "cgroup.procs").exists()
    assert other.status is Status.RUNNING and all(os.path.isdir(d) for d in other_dirs)
    other.destroy()
    assert_nothing_left(store)
    assert other_supervisor is not None and ended(other_supervisor)


# --- failures during creation leave nothing behind --------------------------------------------


@pytest.fixture(scope="module")
def warmed_up(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Run one container first: a launcher may keep a connection open for the whole process."""
    from sandboxrt.bundle import make_bundle

    path = tmp_path_factory.mktemp("warm") / "bundle"
    make_bundle(path, ["true"], rootfs="busybox")
    assert Container.run("warm", path, store=MemoryStore()) == 0


@pytest.fixture
def leak_check(warmed_up: None) -> Iterator[None]:
    """No fd and no child process may outlive a failed create."""
    fds, children = open_fds(), children_of_this_process()
    yield
    assert open_fds() - fds == set(), "file descriptors leaked"
    assert children_of_this_process() - children == set(), "child processes left behind"


def _with_hooks(path: Path, **hooks: list[dict[str, Any]]) -> None:
    doc = json.loads((path / "config.json").read_text())
    doc["hooks"] = hooks
    (path / "config.json").write_text(json.dumps(doc))


def _failing_hook(code: int) -> dict[str, Any]:
    return {"path": "/bin/sh", "args": ["sh", "-c", f"echo hook-output; exit {code}"]}


def _missing_rootfs(path: Path) -> None:
    import shutil

    shutil.rmtree(path / "rootfs")


def _bad_mount_source(path: Path) -> None:
    doc = json.loads((path / "config.json").read_text())
    doc["mounts"].append(
        {"destination": "/mnt", "type": "bind", "source": "/no/such/dir", "options": ["rbind"]}
    )
    (path / "config.json").write_text(json.dumps(doc))


CREATE_FAILURES: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    ("missing-rootfs", _missing_rootfs, ["true"], "rootfs"),
    ("bad-mount-source", _bad_mount_source, ["true"], "/no/such/dir"),
    (
        "prestart-hook",
        lambda p: _with_hooks(p, prestart=[_failing_hook(3)]),
        ["true"],
        "prestart hook",
    ),
    (
        "create-runtime-hook",
        lambda p: _with_hooks(p, createRuntime=[_failing_hook(4)]),
        ["true"],
        "createRuntime hook",
    ),
    (
        "create-container-hook",
        lambda p: _with_hooks(p, createContainer=[_failing_hook(5)]),
        ["true"],
        "createContainer hook",
    ),
    ("missing-executable", lambda p: None, ["/no/such/program"], "/no/such/program"),
    ("executable-not-in-path", lambda p: None, ["no-such-program"], "no-such-program"),
]


@pytest.mark.parametrize(
    ("breakage", "args", "message"),
    [c[1:] for c in CREATE_FAILURES],
    ids=[c[0] for c in CREATE_FAILURES],
)
def test_failed_create_leaves_nothing(
    breakage: Callable[[Path], None],
    args: list[str],
    message: str,
    store: FileStore,
    bundle: BundleFactory,
    leak_check: None,
) -> None:
    path = bundle(args)
    breakage(path)
    with pytest.raises(Exception) as info:  # the kind is checked below
        Container.create(
            "x",
            path,
            store=store,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    from sandboxrt import HookError, InitError

    assert isinstance(info.value, HookError | InitError), repr(info.value)
    assert message in str(info.value)
    assert 'container "x"' in str(info.value)
    assert_nothing_left(store)
    # And the id is free again: a good bundle is created under it.
    good = bundle(["true"])
    assert Container.run("x", good, store=store) == 0
    assert_nothing_left(store)


class RaisingLauncher:
    def launch(self, *, bootstrap_fd: int, log_fd: int, warm: bool = False) -> Any:
        raise OSError(5, "the launcher broke")


class MuteLauncher:
    """Launches a program that exits at once without a word (``pass_fd``: it had the socket)."""

    def __init__(self, *, pass_fd: bool) -> None:
        self.pass_fd = pass_fd
        self.launched: list[subprocess.Popen[bytes]] = []

    def launch(self, *, bootstrap_fd: int, log_fd: int, warm: bool = False) -> Any:
        process = subprocess.Popen(
            ["/bin/true"], pass_fds=(bootstrap_fd,) if self.pass_fd else (), stderr=log_fd
        )
        self.launched.append(process)
        return process


def test_launcher_that_raises(store: FileStore, bundle: BundleFactory, leak_check: None) -> None:
    with pytest.raises(OSError, match="the launcher broke"):
        Container.create(
            "x",
            bundle(),
            store=store,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            launcher=RaisingLauncher(),
        )
    assert_nothing_left(store)


@pytest.mark.parametrize("pass_fd", [True, False], ids=["had-socket", "no-socket"])
def test_launched_process_that_exits_without_talking(
    pass_fd: bool, store: FileStore, bundle: BundleFactory, leak_check: None
) -> None:
    from sandboxrt import SandboxDiedError

    launcher = MuteLauncher(pass_fd=pass_fd)
    with pytest.raises(SandboxDiedError, match='container "x"'):
        Container.create(
            "x",
            bundle(),
            store=store,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            launcher=launcher,
        )
    assert [p.returncode for p in launcher.launched] == [0]  # waited for
    assert_nothing_left(store)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("process.args[0]", "sh\0-c"),
        ("process.env[0]", "PATH=/bin\ud800"),
        ("process.cwd", "/tmp\0/x"),
        ("root.path", "rootfs\0x"),
        ("hostname", "host\0name"),
    ],
)
def test_strings_no_c_string_carries_are_spec_errors(
    store: FileStore, bundle: BundleFactory, field: str, value: str, fd_check: None
) -> None:
    """A NUL byte (cut short on its way to the kernel: another path or argument) or a lone
    surrogate is a SpecError naming the field, before anything starts."""

    def change(document: dict[str, Any]) -> None:
        parts = field.replace("[0]", "").split(".")
        target = document
        for part in parts[:-1]:
            target = target[part]
        if field.endswith("[0]"):
            target[parts[-1]][0] = value
        else:
            target[parts[-1]] = value

    path = edit_config(bundle(), change)
    with pytest.raises(SpecError) as info:
        Container.create("x", path, store=store)
    assert f"{field}: " in str(info.value)
    assert 'container "x"' in str(info.value)
    assert_nothing_left(store)


def test_a_spec_too_large_for_a_sandbox_is_a_spec_error(
    store: FileStore, bundle: BundleFactory, fd_check: None
) -> None:
    """What goes to a sandbox fits in one message: a larger spec (a huge annotation) is
    refused up front; it was a raw ValueError, or a container that never started."""
    path = edit_config(bundle(), lambda doc: doc.update(annotations={"big": "x" * (4 << 20)}))
    with pytest.raises(SpecError, match=r'container "x"(, \S+)?: the spec is too large: \d+ bytes'):
        Container.create("x", path, store=store)
    assert_nothing_left(store)


def test_errors_survive_pickling() -> None:
    """As a process pool passes them on: same class, message and attributes."""
    import pickle

    from sandboxrt import (
        ContainerFileNotFoundError,
        ExecError,
        ProcessTimeoutError,
        SandboxDiedError,
    )

    errors: list[Exception] = [
        InvalidStateError("start", "web1", "running"),
        ContainerNotFoundError("web"),
        ExecError("web1", "/bin/nope", "no such file"),
        ProcessTimeoutError("web1", ["sleep", "9"], 1.5, pid=7, output=b"so far", killed=True),
        WaitTimeoutError("web1", 2.0),
        SandboxDiedError("web1", "gone"),
        SystemCallError("mount", OSError(1, "Operation not permitted"), container_id="web1"),
        ContainerFileNotFoundError("web1", "/etc/x", 2, "No such file or directory"),
        InvalidArgumentError("web1", "bad"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__
        if isinstance(error, OSError):
            assert isinstance(copy, OSError)
            assert (copy.errno, copy.filename) == (error.errno, error.filename)
    timed_out = pickle.loads(pickle.dumps(errors[3]))
    assert isinstance(timed_out, subprocess.TimeoutExpired)
    assert (timed_out.output, timed_out.timeout, timed_out.cmd) == (b"so far", 1.5, ["sleep", "9"])


def test_a_fork_server_started_short_of_fds_is_replaced_once_the_limit_is_raised(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Its processes had the limit of the moment it started: every later create failed,
    limit raised or not."""
    code = f"""
import resource
from sandboxrt import Container, FileStore, SandboxrtError
store = FileStore({str(store.root)!r})
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (25, hard))
try:
    print("short:", Container.run("short", {str(bundle(["true"]))!r}, store=store))
except SandboxrtError as exc:
    print("short: typed")
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print("raised:", Container.run("raised", {str(bundle(["true"]))!r}, store=store))
"""
    done = in_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "raised: 0", done.stdout
    assert_nothing_left(store)


def test_exec_and_destroy_out_of_fds_are_typed_errors(
    store: FileStore, bundle: BundleFactory
) -> None:
    """They raised a raw OSError (EMFILE) naming no container."""
    code = f"""
import os, resource
from sandboxrt import Container, FileStore, SandboxrtError
store = FileStore({str(store.root)!r})
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
c = Container.create("x", {str(bundle(["sleep", "60"]))!r}, store=store)
c.start()
c.exec_run(["true"])
for extra in range(12):
    opened = len(os.listdir("/proc/self/fd")) - 1
    for what in ("exec", "destroy"):
        resource.setrlimit(resource.RLIMIT_NOFILE, (opened + extra, hard))
        try:
            c.exec_run(["true"], capture_output=True) if what == "exec" else c.destroy()
            said = "done"
        except SandboxrtError as exc:
            said = "typed" if '"x"' in str(exc) else f"unnamed: {{exc}}"
        except BaseException as exc:
            said = f"raw: {{exc!r}}"
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        print(what, said)
        if what == "destroy" and said == "done":
            raise SystemExit(0)
"""
    done = in_python(code)
    assert done.returncode == 0, done.stderr
    outcomes = {line.split(" ", 1)[1] for line in done.stdout.splitlines()}
    assert outcomes <= {"done", "typed"} and "typed" in outcomes, done.stdout
    for name in Container.list(store=store):
        Container.load(name, store=store).destroy()
    assert_nothing_left(store)


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr (e2fsprogs)")
def test_a_runtime_directory_that_cannot_be_removed_keeps_the_record(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The destroy said nothing, removed the record, and left the runtime files where
    nothing would ever remove them (a read-only store, say)."""
    container = Container.create("x", bundle(["true"]), store=store)
    sandbox, dirs = container.sandbox, _cgroup_dirs(rec_of(container).cgroup)
    assert sandbox is not None
    log = Path(sandbox.runtime_dir) / "supervisor.log"
    if subprocess.run(["chattr", "+i", str(log)], check=False).returncode != 0:
        pytest.skip("the store's filesystem has no immutable files")
    try:
        with pytest.raises(SystemCallError, match=r'container "x": removing .*Operation not'):
            container.destroy()
        assert Container.list(store=store) == ["x"]
        assert Container.load("x", store=store).status is Status.STOPPED
        # All else is gone: it goes last, but for the record.
        assert not any(os.path.exists(d) for d in dirs) and ended(sandbox.pid)
    finally:
        subprocess.run(["chattr", "-i", str(log)], check=True)
    Container.load("x", store=store).destroy()
    assert_nothing_left(store)
    # Nor can one be made: a typed error naming the container, and nothing left.
    subprocess.run(["chattr", "+i", str(store.runtime_dir)], check=True)
    try:
        with pytest.raises(SystemCallError, match='container "y": making the runtime dir'):
            Container.create("y", bundle(["true"]), store=store)
    finally:
        subprocess.run(["chattr", "-i", str(store.runtime_dir)], check=True)
    assert_nothing_left(store)


def test_a_create_out_of_fds_is_a_typed_error(
    store: FileStore, bundle: BundleFactory, leak_check: None
) -> None:
    # Each step of a creation opens fds; out of them (a low soft RLIMIT_NOFILE), some
    # step raised a raw OSError. Run in a process of its own, where the limit is lowered.
    code = f"""
import os, resource
from sandboxrt import Container, FileStore, SandboxrtError
store = FileStore({str(store.root)!r})
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
Container.run("warmup", {str(bundle(["true"]))!r}, store=store)
for extra in range(64):
    opened = len(os.listdir("/proc/self/fd")) - 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (opened + extra, hard))
    try:
        Container.create(f"c{{extra}}", {str(bundle(["true"]))!r}, store=store)
        said = "created"
    except SandboxrtError as exc:
        said = "typed" if "Too many open files" in str(exc) else f"other: {{exc!r}}"
    except BaseException as exc:
        said = f"raw: {{exc!r}}"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if said != "created" and len(os.listdir("/proc/self/fd")) - 1 != opened:
        said = "leaked fds"
    print(extra, said)
    if said == "created":
        break
for name in Container.list(store=store):  # (a create failing to clean up logs it)
    Container.load(name, store=store).destroy()
"""
    done = in_python(code)
    assert done.returncode == 0, done.stderr
    said = [line.split(" ", 1)[1] for line in done.stdout.splitlines()]
    # Typed errors, no fd left open, until there were fds enough.
    assert said[:-1] == ["typed"] * (len(said) - 1) and said[-1] == "created", said
    assert_nothing_left(store)


# -- what a fuzzing review found (session 15) ---------------------------------------------------


def test_an_unknown_key_nested_deep_is_a_spec_error(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Deeper than the spec's copy recurses, shallower than JSON parses: a RecursionError."""
    deep: dict[str, Any] = {}
    for _ in range(700):
        deep = {"a": deep}

    def nest(document: dict[str, Any]) -> None:
        document["xVendor"] = deep

    path = edit_config(bundle(), nest)
    with pytest.raises(SpecError, match="nested too deeply"):
        Container.create("deep", path, store=store)
    with pytest.raises(SpecError, match="nested too deeply"):
        load_spec({**json.loads((path / "config.json").read_text()), "xVendor": deep})
    assert_nothing_left(store)


@pytest.mark.parametrize(
    ("edit", "refused"),
    [
        (lambda d: d.update(hostname="a\udcff"), None),
        (lambda d: d["linux"]["seccomp"]["syscalls"][0]["names"].append("read\udcff"), None),
        (
            lambda d: d["linux"].setdefault("resources", {}).update(cpu={"cpus": "0\udcff"}),
            "to cpuset.cpus: Invalid argument",  # (the kernel's answer, typed)
        ),
    ],
    ids=["hostname", "seccomp-name", "cpuset"],
)
def test_undecodable_bytes_in_a_spec_never_raise_a_unicode_error(
    store: FileStore,
    bundle: BundleFactory,
    edit: Callable[[dict[str, Any]], None],
    refused: str | None,
) -> None:
    """``\\udcff`` is a byte (``surrogateescape``), which the document check accepts: three
    places encoded it strictly (a raw UnicodeEncodeError, then an InitError)."""
    path = edit_config(bundle(), edit)
    if refused is None:
        Container.create("undecodable", path, store=store).destroy()
    else:
        with pytest.raises(SystemCallError, match=f'"undecodable": .*{refused}'):
            Container.create("undecodable", path, store=store)
    assert_nothing_left(store)


def test_a_bundle_path_no_c_string_carries_is_a_bad_argument(store: FileStore) -> None:
    for path in ("/tmp/bundle\0x", "/tmp/bundle\ud800"):
        with pytest.raises(InvalidArgumentError, match='"bp": the bundle path'):
            Container.create("bp", path, store=store)
    assert_nothing_left(store)


def test_a_config_json_that_is_no_regular_file_or_too_large_is_refused(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A FIFO was waited on for ever (create_timeout does not cover reading it), and a
    huge or endless file (a link to /dev/zero) read whole."""
    path = bundle()
    config = path / "config.json"
    config.unlink()
    os.mkfifo(config)
    with pytest.raises(SpecError, match="not a regular file"):
        Container.create("odd", path, store=store)
    config.unlink()
    config.symlink_to("/dev/zero")
    with pytest.raises(SpecError, match="not a regular file"):
        Container.create("odd", path, store=store)
    config.unlink()
    with config.open("wb") as f:
        f.truncate(2**32)  # (sparse)
    with pytest.raises(SpecError, match="too large"):
        Container.create("odd", path, store=store)
    assert_nothing_left(store)


def test_console_size_is_range_checked(store: FileStore, bundle: BundleFactory) -> None:
    def size(document: dict[str, Any]) -> None:
        document["process"]["terminal"] = True
        document["process"]["consoleSize"] = {"height": 70000, "width": 80}

    with pytest.raises(SpecError, match=r"process\.consoleSize\.height: must be in \[0, 65535\]"):
        Container.create("tty", edit_config(bundle(), size), store=store)
    assert_nothing_left(store)


def test_odd_arguments_of_a_living_container_are_typed(
    store: FileStore, bundle: BundleFactory
) -> None:
    container = Container.create("odd", bundle(["sleep", "100"]), store=store)
    try:
        container.start()
        for sig in ("²", "9" * 5000):  # (digits to str.isdigit, not to int)
            with pytest.raises(InvalidArgumentError, match="unknown signal"):
                container.kill(sig)
        with pytest.raises(WaitTimeoutError):  # (not an OverflowError)
            container.wait(timeout=-(10**400))
        with pytest.raises(ProcessNotFoundError):  # (was an InitError from the supervisor)
            container.signal_process(2**31, signal.SIGCONT)
        with pytest.raises(InvalidArgumentError, match="args must be"):  # (an IndexError)
            container.exec_run(iter(["true"]))  # type: ignore[arg-type]
        assert container.status is Status.RUNNING
    finally:
        container.destroy()


def test_a_hostname_of_undecodable_bytes_counts_one_byte_each() -> None:
    """``surrogateescape``'s characters are a byte each on their way to the kernel: 60
    bytes were counted 100 and refused."""
    document = dump_spec(default_spec(["true"]))
    document["hostname"] = "a" * 40 + "\udcff" * 20
    assert load_spec(document).hostname == document["hostname"]
    document["hostname"] = "a" * 50 + "\udcff" * 20
    with pytest.raises(SpecError, match="hostname: at most 64 bytes, got 70"):
        load_spec(document)


def test_an_indented_config_json_a_sandbox_takes_is_read(tmp_path: Path) -> None:
    """The sandbox's bound is on the JSON it gets, without spaces: a config.json that
    write_spec_file indents past it was refused by its size on disk."""
    spec = default_spec(["true"])
    spec = attrs.evolve(spec, annotations={f"key{i:06d}": "v" * 8 for i in range(110_000)})
    path = tmp_path / "config.json"
    write_spec_file(path, spec)
    assert path.stat().st_size > MAX_SPEC_BYTES
    assert read_spec_file(path).annotations == spec.annotations


@pytest.mark.parametrize("where", ["file", "document", "plan"])
def test_a_spec_error_of_a_create_names_its_container(
    store: FileStore, bundle: BundleFactory, where: str
) -> None:
    """Its message named the container; its ``container_id`` was empty."""
    path = bundle()
    if where == "file":
        (path / "config.json").unlink()
    elif where == "document":
        edit_config(path, lambda d: d.update(hostname="a" * 100))
    else:  # (found as the plan is made: a capability set no kernel has)
        edit_config(path, lambda d: d["process"]["capabilities"].update(ambient=["CAP_KILL"]))
    with pytest.raises(SpecError) as info:
        Container.create("named", path, store=store)
    assert info.value.container_id == "named"
    assert str(info.value).startswith('container "named"')
    assert_nothing_left(store)


@pytest.mark.parametrize("field", ["hostname", "domainname"])
def test_undecodable_bytes_of_a_name_are_set_as_such(
    store: FileStore, bundle: BundleFactory, field: str
) -> None:
    """Accepted by the check as the bytes they stand for: the domain name was encoded
    strictly on its way to the kernel, and every such create failed (InitError)."""
    path = edit_config(
        bundle(["cat", f"/proc/sys/kernel/{field}"]), lambda d: d.update({field: "ab\udcff"})
    )
    container = Container.create("names", path, store=store, stdout=subprocess.PIPE)
    try:
        container.start()
        assert container.stdout is not None
        assert container.stdout.read() == b"ab\xff\n"
        assert container.wait(timeout=10) == 0
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()


def test_a_sysctl_value_of_undecodable_bytes_is_written_as_such(
    store: FileStore, bundle: BundleFactory
) -> None:
    """Accepted by the check as the bytes they stand for, then encoded strictly in the
    init: the create failed on a codec error, not on what the kernel says of the value."""
    path = edit_config(
        bundle(), lambda d: d["linux"].update(sysctl={"net.ipv4.ping_group_range": "0\udcff"})
    )
    with pytest.raises(InitError) as info:
        Container.create("sysctl", path, store=store)
    assert "codec" not in str(info.value)
    assert "setting sysctl net.ipv4.ping_group_range" in str(info.value)
    assert_nothing_left(store)


@pytest.mark.parametrize("args", ["echo hi", b"true", [], ["true", 1]], ids=repr)
def test_make_bundle_refuses_args_that_are_no_list_of_strings(tmp_path: Path, args: Any) -> None:
    """A string was split into its characters (``e``, ``c``, ``h``...), as no program is."""
    with pytest.raises(InvalidArgumentError, match="args must be a non-empty sequence of strings"):
        make_bundle(tmp_path / "b", args)
    with pytest.raises(ValueError, match="args must be a non-empty sequence of strings"):
        default_spec(args)
    assert not (tmp_path / "b").exists()  # refused before anything is written


def test_make_bundle_refuses_a_rootfs_kind_it_does_not_make(tmp_path: Path) -> None:
    """Anything but "host_usr" was taken for "busybox"."""
    with pytest.raises(InvalidArgumentError, match='rootfs must be "host_usr" or "busybox"'):
        make_bundle(tmp_path / "b", ["true"], rootfs="alpine")  # type: ignore[arg-type]
    assert not (tmp_path / "b").exists()


def test_a_bundle_path_that_names_its_config_json_says_so(
    store: FileStore, bundle: BundleFactory
) -> None:
    """It read ``.../config.json/config.json: Not a directory``."""
    config = bundle() / "config.json"
    with pytest.raises(InvalidArgumentError, match="is no directory: a bundle is the directory"):
        Container.create("cfg", config, store=store)
    assert_nothing_left(store)


def test_a_caller_without_cap_sys_admin_is_told_what_is_missing(
    bundle: BundleFactory, tmp_path: Path
) -> None:
    """Not root (here: root without ``CAP_SYS_ADMIN``, which is what a user lacks): the
    error names the privilege missing, not only the ``unshare`` the sandbox failed at."""
    store = tmp_path / "store"
    script = (
        "import sys\n"
        "from sandboxrt import Container, FileStore, MissingFeatureError\n"
        "try:\n"
        f"    Container.run('np', {str(bundle(['true']))!r}, store=FileStore({str(store)!r}))\n"
        "except MissingFeatureError as exc:\n"
        "    print(exc)\n"
    )
    without_sys_admin = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"]
    done = in_python(script, under=without_sys_admin)
    assert done.returncode == 0, done.stderr
    assert "CAP_SYS_ADMIN" in done.stdout and 'container "np"' in done.stdout, done.stdout
    assert FileStore(store).list_ids() == []
    assert list((store / ".sandboxes").iterdir()) == []


@pytest.mark.parametrize("privileged", [True, False], ids=["no-userns", "userns"])
def test_only_a_privileged_first_step_refused_for_want_of_cap_sys_admin_says_so(
    monkeypatch: pytest.MonkeyPatch, privileged: bool
) -> None:
    """A sandbox with a user namespace of its own is made without ``CAP_SYS_ADMIN``: a
    ``PermissionError`` there (a cwd it may not enter) is the init's, as it says."""
    monkeypatch.setattr(capabilities, "has_effective", lambda cap: False)
    step = Progress("error", "[Errno 13] chdir: Permission denied", "PermissionError")
    error = Sandbox._failure("c1", step, privileged=privileged)
    assert isinstance(error, MissingFeatureError) is privileged, error
    assert 'container "c1"' in str(error) and "chdir" in str(error)
    monkeypatch.setattr(capabilities, "has_effective", lambda cap: True)
    assert not isinstance(Sandbox._failure("c1", step, privileged=True), MissingFeatureError)


def test_a_relative_bundle_under_a_removed_cwd_is_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made absolute for its record, a relative bundle path cannot be once the working
    directory is removed: an error naming the container, not a bare FileNotFoundError."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    store = MemoryStore()
    with pytest.raises(InvalidArgumentError, match='container "c1": the bundle path'):
        Container.create("c1", "relative", store=store)
    assert store.list_ids() == []
