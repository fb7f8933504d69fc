"""OCI hooks around a real container's lifecycle: order, the state they see, failures."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, BundleFactory, edit_config, needs_busybox, needs_root, supervisor_pids

from sandboxrt import Container, FileStore, ForkServerLauncher, Pod, Status
from sandboxrt._os import cgroups
from sandboxrt.errors import HookError

pytestmark = [needs_root, needs_busybox]

# Shell builtins only: the hook gets an empty environment (no PATH), and the
# startContainer hook runs with the container's busybox sh.
LOGGING_HOOK = """#!/bin/sh
IFS= read -r state
printf '%s %s\\n' "$1" "$state" >> "$2"
"""
FAILING_HOOK = """#!/bin/sh
echo "boom from $1"
exit 3
"""

CREATE_PHASES = ("prestart", "createRuntime", "createContainer")
ALL_PHASES = (*CREATE_PHASES, "startContainer", "poststart", "poststop")


class Setup:
    """A busybox bundle whose every hook phase logs to one host file."""

    def __init__(self, tmp_path: Path, bundle: BundleFactory) -> None:
        self.log_dir = tmp_path / "logs"
        self.log_dir.mkdir()
        self.log = self.log_dir / "hooks.log"
        self.host_hook = tmp_path / "hook.sh"
        self.failing_hook = tmp_path / "fail.sh"
        for path, text in ((self.host_hook, LOGGING_HOOK), (self.failing_hook, FAILING_HOOK)):
            path.write_text(text)
            path.chmod(0o755)
        self.path = bundle(["sh", "-c", "echo ran"])
        rootfs = self.path / "rootfs"
        (rootfs / "hooks").mkdir()
        for name, text in (("hook.sh", LOGGING_HOOK), ("fail.sh", FAILING_HOOK)):
            (rootfs / "hooks" / name).write_text(text)
            (rootfs / "hooks" / name).chmod(0o755)

    def hook(self, phase: str, tag: str | None = None, *, fail: bool = False) -> dict[str, Any]:
        tag = tag or phase
        if phase == "startContainer":  # runs in the container: paths in its rootfs
            path = "/hooks/fail.sh" if fail else "/hooks/hook.sh"
            return {"path": path, "args": [path, tag, "/log/hooks.log"]}
        path = str(self.failing_hook if fail else self.host_hook)
        return {"path": path, "args": [path, tag, str(self.log)], "timeout": 10}

    def write(self, hooks: dict[str, list[dict[str, Any]]]) -> None:
        config = self.path / "config.json"
        document = json.loads(config.read_text())
        document["hooks"] = hooks
        document["mounts"].append(
            {
                "destination": "/log",
                "type": "bind",
                "source": str(self.log_dir),
                "options": ["bind"],
            }
        )
        config.write_text(json.dumps(document))

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.log.exists():
            return []
        found = []
        for line in self.log.read_text().splitlines():
            tag, _, state = line.partition(" ")
            found.append((tag, json.loads(state)))
        return found

    def tags(self) -> list[str]:
        return [tag for tag, _ in self.entries()]

    def run_in_pod(self, pod: Pod, container_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Every hook phase on a subcontainer of ``pod`` made, run (its program prints
        ``ran``) and destroyed; the log's entries."""
        self.write({phase: [self.hook(phase)] for phase in ALL_PHASES})
        container = pod.add_container(container_id, self.path, stdout=subprocess.PIPE)
        try:
            container.start()
            assert container.stdout is not None
            assert container.stdout.read() == b"ran\n"
            assert container.wait(timeout=10) == 0
        finally:
            if container.stdout is not None:
                container.stdout.close()
            container.destroy()
        return self.entries()


@pytest.fixture
def setup(tmp_path: Path, bundle: BundleFactory) -> Setup:
    return Setup(tmp_path, bundle)


def assert_nothing_left(store: FileStore, before: set[int]) -> None:
    assert Container.list(store=store) == []
    runtime = Path(store.runtime_dir)
    assert not runtime.exists() or list(runtime.iterdir()) == []
    assert supervisor_pids() == before


def test_every_phase_in_order_with_its_state(store: FileStore, setup: Setup) -> None:
    setup.write(
        {
            "prestart": [
                setup.hook("prestart", "prestart-1"),
                setup.hook("prestart", "prestart-2"),
            ],
            "createRuntime": [setup.hook("createRuntime")],
            "createContainer": [setup.hook("createContainer")],
            "startContainer": [setup.hook("startContainer")],
            "poststart": [setup.hook("poststart")],
            "poststop": [setup.hook("poststop")],
        }
    )
    container = Container.create("hooked", setup.path, store=store, stdout=subprocess.PIPE)
    try:
        supervisor = container.state().pid
        assert supervisor is not None
        assert setup.tags() == ["prestart-1", "prestart-2", "createRuntime", "createContainer"]
        container.start()
        assert container.stdout is not None
        assert container.stdout.read() == b"ran\n"
        assert container.wait(timeout=10) == 0
        assert setup.tags()[4:] == ["startContainer", "poststart"]
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()
    container.destroy()  # poststop runs once, not again
    entries = setup.entries()
    assert [tag for tag, _ in entries] == [
        "prestart-1",
        "prestart-2",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ]
    expected_status = ["creating"] * 4 + ["created", "running", "stopped"]
    for (tag, state), status in zip(entries, expected_status, strict=True):
        assert state["status"] == status, tag
        assert state["id"] == "hooked", tag
        assert state["bundle"] == str(setup.path), tag
        assert state["ociVersion"] == "1.2.0", tag
        if status == "stopped":
            assert "pid" not in state, tag
        else:
            assert state["pid"] == supervisor, tag


@pytest.mark.parametrize("phase", CREATE_PHASES)
def test_failing_creation_hook(store: FileStore, setup: Setup, phase: str) -> None:
    hooks = {p: [setup.hook(p)] for p in CREATE_PHASES}
    hooks[phase] = [setup.hook(phase, fail=True), setup.hook(phase, "after-failure")]
    setup.write(hooks)
    before = supervisor_pids()
    with pytest.raises(HookError) as info:
        Container.create("failing", setup.path, store=store)
    message = str(info.value)
    assert str(setup.failing_hook) in message
    assert "exited with status 3" in message
    assert f"boom from {phase}" in message
    assert phase in message
    assert info.value.returncode == 3
    assert info.value.phase == phase
    assert_nothing_left(store, before)
    ran = setup.tags()
    assert "after-failure" not in ran
    assert ran == list(CREATE_PHASES[: CREATE_PHASES.index(phase)])


#: A hook that notes whether the file ``$3`` exists (its state on stdin is left unread).
SEEING_HOOK = """#!/bin/sh
if [ -e "$3" ]; then echo "$1 seen" >> "$2"; else echo "$1 absent" >> "$2"; fi
"""


@pytest.mark.parametrize("failing", [None, *CREATE_PHASES])
def test_the_pid_file_comes_after_every_creation_hook(
    store: FileStore, setup: Setup, tmp_path: Path, failing: str | None
) -> None:
    """As the OCI spec and runc have it, the pid file is the create's very last step: no
    creation hook sees it, and a create that a hook fails leaves none."""
    seeing = tmp_path / "seeing.sh"
    seeing.write_text(SEEING_HOOK)
    seeing.chmod(0o755)
    pid_file = tmp_path / "sandbox.pid"
    hooks: dict[str, list[dict[str, Any]]] = {
        phase: [{"path": str(seeing), "args": [str(seeing), phase, str(setup.log), str(pid_file)]}]
        for phase in CREATE_PHASES
    }
    if failing is not None:
        hooks[failing].append(setup.hook(failing, fail=True))
    setup.write(hooks)
    if failing is not None:
        with pytest.raises(HookError):
            Container.create("pidfile", setup.path, store=store, pid_file=pid_file)
        assert not pid_file.exists()
    else:
        container = Container.create("pidfile", setup.path, store=store, pid_file=pid_file)
        try:
            assert pid_file.read_text() == str(container.state().pid)
        finally:
            container.destroy()
    ran = CREATE_PHASES if failing is None else CREATE_PHASES[: CREATE_PHASES.index(failing) + 1]
    assert setup.log.read_text().splitlines() == [f"{phase} absent" for phase in ran]


#: A poststop hook that notes each path of the list in ``$1`` that still exists.
LEFT_HOOK = """#!/bin/sh
while IFS= read -r path; do
    if [ -e "$path" ]; then echo "left $path" >> "$2"; fi
done < "$1"
echo ran >> "$2"
"""


def test_poststop_hooks_run_once_everything_else_is_gone(
    store: FileStore, setup: Setup, tmp_path: Path
) -> None:
    """The OCI spec runs poststop hooks after the container is deleted: by then its
    supervisor, gofer, cgroup, runtime directory and record are gone."""
    hook = tmp_path / "left.sh"
    hook.write_text(LEFT_HOOK)
    hook.chmod(0o755)
    paths, out = tmp_path / "paths", tmp_path / "left.log"
    setup.write({"poststop": [{"path": str(hook), "args": [str(hook), str(paths), str(out)]}]})
    edit_config(setup.path, lambda d: d["process"].update(args=["sleep", "1000"]))
    container = Container.create("gone", setup.path, store=store)
    try:
        container.start()
        sandbox, gofer = container.sandbox, container.gofer
        assert sandbox is not None and gofer is not None
        cgroup = store.load("gone").cgroup
        assert cgroup is not None
        made = [
            f"/proc/{sandbox.pid}",
            f"/proc/{gofer.pid}",
            sandbox.runtime_dir,
            str(store.root / "gone.json"),
            *cgroups.load(cgroup, container_id="gone").directories,
        ]
        assert all(os.path.exists(path) for path in made), made
        paths.write_text("".join(f"{path}\n" for path in made))
    finally:
        container.destroy()
    assert out.read_text() == "ran\n"


def test_failing_start_container_hook(store: FileStore, setup: Setup) -> None:
    setup.write(
        {
            "startContainer": [setup.hook("startContainer", fail=True)],
            "poststart": [setup.hook("poststart")],
        }
    )
    container = Container.create("failstart", setup.path, store=store, stdout=subprocess.PIPE)
    try:
        with pytest.raises(HookError) as info:
            container.start()
        assert "/hooks/fail.sh" in str(info.value)
        assert "boom from startContainer" in str(info.value)
        assert info.value.returncode == 3
        assert container.stdout is not None
        assert container.stdout.read() == b""  # the program never ran
        assert container.status is Status.STOPPED
        assert container.wait(timeout=10) == 127  # the init's exit when it cannot run the program
        supervisor = container.sandbox
        assert supervisor is not None
        deadline = time.monotonic() + 10
        while supervisor.is_running():  # it exits on its own, like after any init exit
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "poststart" not in setup.tags()
    finally:
        if container.stdout is not None:
            container.stdout.close()
        container.destroy()
    assert Container.list(store=store) == []


def test_a_start_container_hook_that_times_out_says_so_once(store: FileStore, setup: Setup) -> None:
    hook = {"path": "/bin/sh", "args": ["sh", "-c", "sleep 30"], "timeout": 1}
    setup.write({"startContainer": [hook]})
    container = Container.create("hookto", setup.path, store=store)
    try:
        with pytest.raises(HookError) as info:
            container.start()
        message = str(info.value)
        assert message.count("failed") == 1, message
        assert message == 'startContainer hook /bin/sh of container "hookto" failed: ' + (
            info.value.reason
        )
        assert "timed out after 1s" in info.value.reason
    finally:
        container.destroy()


def test_failing_poststart_hook(
    store: FileStore, setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.write({"poststart": [setup.hook("poststart", fail=True), setup.hook("poststart")]})
    container = Container.create("failpost", setup.path, store=store, stdout=subprocess.DEVNULL)
    try:
        with caplog.at_level(logging.WARNING, logger="sandboxrt"):
            container.start()
        assert container.wait(timeout=10) == 0
        assert any("boom from poststart" in r.getMessage() for r in caplog.records)
        assert setup.tags() == ["poststart"]  # the next hook still ran
    finally:
        container.destroy()


def test_failing_poststop_hook_runs_once(
    store: FileStore, setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.write({"poststop": [setup.hook("poststop", fail=True), setup.hook("poststop")]})
    container = Container.create("failstop", setup.path, store=store, stdout=subprocess.DEVNULL)
    container.start()
    assert container.wait(timeout=10) == 0
    with caplog.at_level(logging.WARNING, logger="sandboxrt"):
        container.destroy()
    assert Container.list(store=store) == []
    assert sum("boom from poststop" in r.getMessage() for r in caplog.records) == 1
    container.destroy()
    assert setup.tags() == ["poststop"]


def test_a_poststart_hook_may_use_its_container(
    store: FileStore, setup: Setup, tmp_path: Path
) -> None:
    """As with runc: a poststart hook that execs into its container (it waited for the
    container's lock, which start held, and failed at the lock's timeout)."""
    out = tmp_path / "exec.out"
    code = (
        "from sandboxrt import Container, FileStore; "
        f"c = Container.load('uses', store=FileStore({str(store.root)!r})); "
        "print(c.exec_run(['echo', 'from-hook'], capture_output=True).stdout.decode(), end='')"
    )
    hook = tmp_path / "uses.sh"
    hook.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} {sys.executable} -c "{code}" > {out}\n')
    hook.chmod(0o755)
    setup.write({"poststart": [{"path": str(hook), "timeout": 20}]})
    edit_config(setup.path, lambda d: d["process"].update(args=["sleep", "100"]))
    container = Container.create("uses", setup.path, store=store, stdout=subprocess.DEVNULL)
    try:
        container.start()
        assert out.read_text() == "from-hook\n"
    finally:
        container.destroy()


def test_poststop_once_across_objects(store: FileStore, setup: Setup) -> None:
    setup.write({"poststop": [setup.hook("poststop")]})
    first = Container.create("once", setup.path, store=store, stdout=subprocess.DEVNULL)
    second = Container.load("once", store=store)
    first.start()
    first.destroy()
    second.destroy()
    first.destroy()
    assert setup.tags() == ["poststop"]


def test_where_hooks_run(store: FileStore, setup: Setup, tmp_path: Path) -> None:
    """prestart/createRuntime: the host's mount namespace; createContainer: the container's,
    before pivot_root (host paths work, the container's /proc is mounted in its rootfs),
    in the bundle's rootfs as its working directory, as runc's; the others in the bundle,
    where ``runc run`` runs them all."""
    probe = tmp_path / "probe.sh"
    probe.write_text(
        "#!/bin/sh\n"
        'echo "$1 $(readlink /proc/self/ns/mnt) $(pwd)'
        ' $(test -e "$3/proc/self/status" && echo proc)" >> "$2"\n'
    )
    probe.chmod(0o755)
    out = tmp_path / "where.log"
    rootfs = setup.path / "rootfs"

    def hook(phase: str) -> dict[str, Any]:
        return {
            "path": str(probe),
            "args": [str(probe), phase, str(out), str(rootfs)],
            "env": ["PATH=/usr/bin:/bin"],
        }

    setup.write({phase: [hook(phase)] for phase in (*CREATE_PHASES, "poststart", "poststop")})
    container = Container.create("where", setup.path, store=store)
    container.start()
    assert container.wait(timeout=10) == 0
    container.destroy()
    host_ns = os.readlink("/proc/self/ns/mnt")
    seen = {line.split()[0]: line.split()[1:] for line in out.read_text().splitlines()}
    bundle = os.path.realpath(setup.path)
    for phase in ("prestart", "createRuntime", "poststart", "poststop"):
        assert seen[phase] == [host_ns, bundle], phase
    ns, cwd, *proc = seen["createContainer"]
    assert ns != host_ns
    assert cwd == os.path.realpath(rootfs)
    assert proc == ["proc"]


def test_a_poststop_hook_of_a_moved_bundle_runs_in_the_root(
    store: FileStore, setup: Setup, tmp_path: Path, bundle: BundleFactory
) -> None:
    """A bundle moved away before the destroy (its container's rootfs is mounted already)
    does not keep the poststop hook from running: it runs in ``/``."""
    out = tmp_path / "cwd.log"
    probe = tmp_path / "cwd.sh"
    probe.write_text(f'#!/bin/sh\npwd > "{out}"\n')
    probe.chmod(0o755)
    path = bundle(["true"])
    edit_config(path, lambda doc: doc.update(hooks={"poststop": [{"path": str(probe)}]}))
    container = Container.create("gone", path, store=store)
    container.start()
    assert container.wait(timeout=10) == 0
    moved = tmp_path / "moved"
    path.rename(moved)
    container.destroy()
    assert out.read_text() == "/\n"


def test_a_start_container_hook_runs_as_the_container_s_process(
    store: FileStore, setup: Setup
) -> None:
    """It is a file of the container's (its processes may rewrite it): it ran as the host's
    root, with every capability, before the user, capabilities and no_new_privs were
    applied; runc runs it as the process runs, in its cwd."""
    who = (
        'grep -E "^(Uid|Gid|CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp)" /proc/self/status > "$1";'
        ' pwd >> "$1"'
    )
    hook_path = setup.path / "rootfs" / "hooks" / "who.sh"
    hook_path.write_text(f"#!/bin/sh\n{who}\n")
    hook_path.chmod(0o755)
    setup.log_dir.chmod(0o777)
    setup.write(
        {
            "startContainer": [
                {"path": "/hooks/who.sh", "args": ["who.sh", "/log/hook"], "env": ["PATH=/bin"]}
            ]
        }
    )
    config = setup.path / "config.json"
    document = json.loads(config.read_text())
    document["process"]["user"] = {"uid": 1000, "gid": 1000}
    document["process"]["cwd"] = "/tmp"
    document["process"]["args"] = ["sh", "-c", who, "sh", "/log/program"]
    config.write_text(json.dumps(document))
    container = Container.create("hookwho", setup.path, store=store)
    try:
        container.start()
        assert container.wait(timeout=10) == 0
    finally:
        container.destroy()
    seen = (setup.log_dir / "hook").read_text()
    assert "Uid:\t1000" in seen and "/tmp\n" in seen
    assert "Seccomp:\t2" in seen  # (the profile, loaded last for the program, first for it)
    assert seen == (setup.log_dir / "program").read_text()


def test_a_start_container_hook_runs_after_a_run_of_the_same_bundle(
    store: FileStore, setup: Setup
) -> None:
    # The run leaves a warm sandbox building this bundle's root ahead; the next plan, with
    # a startContainer hook, must not get that init (it runs hooks from the container's
    # root, so it imports their runner before: a root built ahead never serves it).
    setup.write({})
    launcher = ForkServerLauncher(build_ahead=True)
    try:
        for name in ("warmup-1", "warmup-2"):  # the second one's launch hints the bundle
            code = Container.run(
                name, setup.path, store=store, stdout=subprocess.DEVNULL, launcher=launcher
            )
            assert code == 0
        config = setup.path / "config.json"
        document = json.loads(config.read_text())  # the same root, and now a hook
        document["hooks"] = {"startContainer": [setup.hook("startContainer")]}
        config.write_text(json.dumps(document))
        container = Container.create(
            "hooked-late", setup.path, store=store, stdout=subprocess.PIPE, launcher=launcher
        )
        try:
            container.start()
            assert container.wait(timeout=10) == 0
            assert setup.tags() == ["startContainer"]
        finally:
            if container.stdout is not None:
                container.stdout.close()
            container.destroy()
    finally:
        launcher.close()
