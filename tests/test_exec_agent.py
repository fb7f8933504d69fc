"""The exec agent (decision 31): execs spawned by a process of the container made ahead,
and the slow way (a fork of the supervisor) for what the agent does not serve.

Real sandboxes. Which way an exec went shows in its parent: the agent (a child
of the supervisor outside the container's cgroup), or the supervisor itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BundleFactory, needs_busybox, needs_root
from test_process_control import eventually
from test_security import edit_config, set_seccomp

from sandboxrt import (
    Container,
    ExecError,
    FileStore,
    InvalidStateError,
    Pod,
    Process,
    ProcessNotFoundError,
)
from sandboxrt._core.plan import exec_plan
from sandboxrt._os import procfs
from sandboxrt._os.seccomp import compile_bpf
from sandboxrt._proc.children import SUPERVISOR_NAME
from sandboxrt._proc.init import AGENT_PROCESS_NAME

pytestmark = [needs_root, needs_busybox]


def agents(container: Container) -> list[int]:
    """Host pids of the live exec agents of the container's sandbox."""
    sandbox = container.sandbox
    assert sandbox is not None
    found = []
    for pid in procfs.descendants(sandbox.pid):
        entry = procfs.read_process(pid)
        if entry is not None and entry.name == AGENT_PROCESS_NAME and entry.state not in "ZX":
            assert entry.ppid == sandbox.pid, "an agent is the supervisor's child"
            found.append(pid)
    return found


def host_pid(container: Container, process: Process) -> int:
    return next(i.host_pid for i in container.processes() if i.pid == process.pid)


def parent(container: Container, process: Process) -> tuple[int, str]:
    """The host pid and name of ``process``'s parent."""
    entry = procfs.read_process(host_pid(container, process))
    assert entry is not None
    above = procfs.read_process(entry.ppid)
    assert above is not None
    return entry.ppid, above.name


def test_execs_are_spawned_by_the_container_s_agent(running: Container) -> None:
    first = running.exec(["sleep", "401"])
    agent, name = parent(running, first)
    assert name == AGENT_PROCESS_NAME
    assert agents(running) == [agent]
    # Outside the container's cgroup: not one of its processes.
    assert agent not in [info.host_pid for info in running.processes()]
    # The process leads a session and process group of its own, as an exec'd one does.
    pid = host_pid(running, first)
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid
    second = running.exec(["sleep", "402"])
    assert parent(running, second) == (agent, AGENT_PROCESS_NAME)  # the same agent, reused
    done = running.exec_run(["sh", "-c", "echo out; echo err >&2; exit 3"], capture_output=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    first.kill()
    second.terminate()
    assert (first.wait(), second.wait()) == (-signal.SIGKILL, -signal.SIGTERM)
    # Only its stdin, stdout and stderr reach the program; its env and cwd are its own.
    done = running.exec_run(
        ["sh", "-c", "ls /proc/self/fd; pwd; echo $X"],
        env={"X": "y", "PATH": "/bin"},
        cwd="/tmp",
        capture_output=True,
        check=True,
    )
    assert done.stdout.split() == [b"0", b"1", b"2", b"3", b"/tmp", b"y"]  # 3: ls's own


def test_other_users_and_terminals_go_the_slow_way(running: Container) -> None:
    running.exec_run(["true"], check=True)  # the agent exists now
    (agent,) = agents(running)
    slow = [
        running.exec(["sleep", "403"], user=(1000, 1000)),
        running.exec(["sleep", "404"], user="nobody"),
        running.exec(["sleep", "405"], tty=True),
    ]
    for process in slow:
        assert parent(running, process)[1] == SUPERVISOR_NAME
    ids = running.exec_run(["sh", "-c", "id -u; id -g"], user=(1000, 1000), capture_output=True)
    assert ids.stdout.split() == [b"1000", b"1000"]
    fast = running.exec(["sleep", "406"])
    assert parent(running, fast) == (agent, AGENT_PROCESS_NAME)
    for process in [*slow, fast]:
        process.kill()
        assert process.wait() == -signal.SIGKILL
        if process.console is not None:
            process.console.close()


def test_a_killed_agent_is_replaced_and_what_it_spawned_still_reported(
    running: Container,
) -> None:
    process = running.exec(["sh", "-c", "read x; exit 7"], stdin=subprocess.PIPE)
    (agent,) = agents(running)
    os.kill(agent, signal.SIGKILL)
    eventually(lambda: not agents(running), "the agent was reaped")
    # Orphaned, the process is the supervisor's child now: its exit is still reported.
    assert parent(running, process)[1] == SUPERVISOR_NAME
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    process.stdin.close()
    assert process.wait() == 7
    assert running.wait_pid(process.pid) == 7
    later = running.exec(["sleep", "407"])
    (new_agent,) = agents(running)
    assert new_agent != agent and parent(running, later) == (new_agent, AGENT_PROCESS_NAME)
    later.kill()
    assert later.wait() == -signal.SIGKILL


def test_pause_leaves_the_agent_alone_and_refuses_exec(running: Container) -> None:
    running.exec_run(["true"], check=True)
    (agent,) = agents(running)
    running.pause()
    try:
        assert agent not in [info.host_pid for info in running.processes()]
        info = procfs.read_stat(agent)
        assert info is not None and info.state == "S"  # waiting, not frozen in the cgroup
        with pytest.raises(InvalidStateError):
            running.exec(["true"])
    finally:
        running.resume()
    process = running.exec(["sleep", "408"])
    assert parent(running, process) == (agent, AGENT_PROCESS_NAME)
    process.kill()
    assert process.wait() == -signal.SIGKILL


def no_forks(document: dict[str, Any]) -> None:
    """A seccomp profile under which no process of the container may fork."""
    set_seccomp(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["fork", "vfork", "clone", "clone3"], "action": "SCMP_ACT_ERRNO"}
            ],
        }
    )(document)


def test_an_agent_its_seccomp_profile_stops_hands_over_to_the_slow_way(
    store: FileStore, bundle: BundleFactory
) -> None:
    path: Path = edit_config(bundle(["sleep", "1000"]), no_forks)
    container = Container.create("ag5", path, store=store)
    try:
        container.start()
        # The agent cannot spawn here; the exec runs all the same, the slow way.
        done = container.exec_run(["echo", "hi"], capture_output=True, check=True)
        assert done.stdout == b"hi\n"
        eventually(lambda: not agents(container), "the unfit agent ended")
        process = container.exec(["sleep", "409"])
        assert parent(container, process)[1] == SUPERVISOR_NAME  # no agent tried again
        assert not agents(container)
        process.kill()
        assert process.wait() == -signal.SIGKILL
    finally:
        container.destroy()


def test_a_profile_that_pretends_takes_the_slow_way(
    store: FileStore, bundle: BundleFactory
) -> None:
    """chdir answered with success, unrun (SCMP_ACT_ERRNO, errnoRet 0): the agent, which
    spawns under the profile, ran the program in / for cwd=/tmp; the slow way (as runc)
    changes directory before the profile goes in."""
    pretending = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["chdir", "fchdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0}],
    }
    path: Path = edit_config(bundle(["sleep", "1000"]), set_seccomp(pretending))
    container = Container.create("ag6", path, store=store)
    try:
        container.start()
        for _ in range(2):
            done = container.exec_run(["pwd"], cwd="/tmp", capture_output=True, check=True)
            assert done.stdout == b"/tmp\n"
        assert not agents(container)
    finally:
        container.destroy()


def test_a_subcontainer_s_agent_ends_with_it(pod: Pod, bundle: BundleFactory) -> None:
    sub = pod.add_container("sub", bundle(["sleep", "1000"]))
    sub.start()
    pod.root.exec_run(["true"], check=True)
    (root_agent,) = agents(pod.root)
    process = sub.exec(["sleep", "410"])
    sub_agent, name = parent(sub, process)
    assert name == AGENT_PROCESS_NAME and sorted(agents(sub)) == sorted([root_agent, sub_agent])
    sub.destroy()
    eventually(lambda: agents(pod.root) == [root_agent], "the subcontainer's agent ended")
    assert pod.root.exec_run(["true"]).returncode == 0


@pytest.fixture
def pod(store: FileStore, bundle: BundleFactory) -> Iterator[Pod]:
    pod = Pod.create("pod", bundle(["sleep", "1000"]), store=store)
    try:
        pod.root.start()
        yield pod
    finally:
        pod.destroy()


def test_an_exec_plan_from_a_base_is_the_plan_made_afresh(bundle: BundleFactory) -> None:
    spec = json.loads((bundle(["sleep", "1"]) / "config.json").read_text())
    base = exec_plan(spec, ["-"], compile_seccomp=compile_bpf)
    overrides: list[dict[str, Any]] = [
        {},
        {"env": {"A": "b"}, "cwd": "/tmp", "user": (5, 6), "terminal": True},
    ]
    for options in overrides:
        args = ["sh", "-c", "x"]
        fresh = exec_plan(spec, args, compile_seccomp=compile_bpf, **options)
        again = exec_plan(spec, args, compile_seccomp=compile_bpf, base=base, **options)
        assert again == fresh and again.seccomp is not None
    with pytest.raises(ValueError, match="non-empty"):
        exec_plan(spec, [], compile_seccomp=compile_bpf, base=base)


def test_the_agent_is_not_one_of_the_container_s_processes(running: Container) -> None:
    running.exec_run(["true"], check=True)
    (agent,) = agents(running)
    entry = procfs.read_process(agent)
    assert entry is not None
    with pytest.raises(ProcessNotFoundError):
        running.signal_process(entry.nspid[-1], signal.SIGTERM)
    assert procfs.read_stat(agent) is not None  # untouched
    # kill(all=True) goes through the cgroup: the container ends, and the agent with it.
    running.kill(signal.SIGKILL, all=True)
    assert running.wait() == -signal.SIGKILL
    eventually(lambda: procfs.read_stat(agent) is None, "the agent ended with the sandbox")


def pids_limit_1(document: dict[str, Any]) -> None:
    document["linux"].setdefault("resources", {})["pids"] = {"limit": 1}


def test_a_stopped_agent_is_replaced_not_waited_for(running: Container) -> None:
    """Any process of a pod may SIGSTOP an agent: it would answer nothing, and the
    supervisor (serving every container of the sandbox) would wait on it for 30 s."""
    first = running.exec(["true"])
    assert first.wait() == 0
    (agent,) = agents(running)
    os.kill(agent, signal.SIGSTOP)
    done = running.exec_run(["echo", "hi"], capture_output=True, check=True, timeout=60)
    assert done.stdout == b"hi\n"
    eventually(lambda: agent not in agents(running), "the stopped agent was ended")
    # No agent serves it any more (a new one could be stopped as well): the slow way.
    later = running.exec(["sleep", "60"])
    assert parent(running, later)[1] == SUPERVISOR_NAME and not agents(running)
    later.kill()
    assert later.wait() == -signal.SIGKILL


def test_what_a_stopped_agent_spawned_is_still_waited_for(running: Container) -> None:
    """The container stopping the agent (as any of its processes may) keeps no exit
    status from its waiters: the agent is ended, and what it spawned is reaped by us."""
    spawned = running.exec(["sh", "-c", "sleep 1; exit 3"])
    (agent,) = agents(running)
    assert parent(running, spawned)[0] == agent
    os.kill(agent, signal.SIGSTOP)
    assert spawned.wait(timeout=30) == 3
    eventually(lambda: agent not in agents(running), "the stopped agent was ended")


def test_a_full_pids_limit_refuses_the_exec_and_keeps_the_agent(
    store: FileStore, bundle: BundleFactory
) -> None:
    """The agent forks inside the cgroup, where the limit holds (EAGAIN); the slow way,
    which joins it after its fork, is refused too (as runc's exec), and the agent, which
    did no wrong, stays."""
    path = edit_config(bundle(["sleep", "1000"]), pids_limit_1)
    container = Container.create("ag6", path, store=store)
    try:
        container.start()
        with pytest.raises(ExecError, match="Resource temporarily unavailable"):
            container.exec(["sleep", "411"])
        (agent,) = agents(container)  # made for this exec, kept
        assert len(container.processes()) == 1  # the init alone
        with pytest.raises(ExecError, match=r"pids\.max, 1"):
            container.exec(["sleep", "411"])
        assert agents(container) == [agent]
    finally:
        container.destroy()


@pytest.mark.parametrize("how", ["agent", "slow way"])
def test_exec_meets_the_container_s_pids_limit(
    store: FileStore, bundle: BundleFactory, how: str
) -> None:
    """As runc's exec: once pids.max is reached an exec fails (EAGAIN), the agent's and
    the slow way's (another user: forked outside the cgroup, then moved in, which the
    kernel's limit does not check) alike."""
    path = bundle(["sleep", "1000"])
    edit_config(
        path, lambda doc: doc["linux"].setdefault("resources", {}).update(pids={"limit": 4})
    )
    container = Container.create("pids", path, store=store)
    try:
        container.start()
        user = {"user": 1000} if how == "slow way" else {}
        started: list[Process] = []
        refused = 0
        for _ in range(6):
            try:
                started.append(container.exec(["sleep", "100"], **user))
            except ExecError as error:
                assert "Resource temporarily unavailable" in str(error)
                refused += 1
        assert refused >= 3
        assert len(container.processes()) <= 4
        for process in started:
            process.kill()
            process.wait()
    finally:
        container.destroy()


def test_exec_meets_a_pids_limit_above_the_container_s_cgroup(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A full pids.max on a parent cgroup (a pod's, a kubelet's) refuses the exec the slow
    way too, which the kernel's limit does not check as it joins."""
    parent = Path("/sys/fs/cgroup/pids") / f"sbrt-test-pids-{os.getpid()}"
    if not (Path("/sys/fs/cgroup/pids") / "cgroup.procs").exists():
        pytest.skip("needs the v1 pids controller")
    path = bundle(["sleep", "1000"])
    where = f"/{parent.name}/c1"
    edit_config(path, lambda doc: doc["linux"].update(cgroupsPath=where))
    container = Container.create("pidsup", path, store=store)
    try:
        container.start()
        (parent / "pids.max").write_text((parent / "pids.current").read_text())
        for user in ({}, {"user": 1000}):
            with pytest.raises(ExecError, match="Resource temporarily unavailable"):
                container.exec(["sleep", "100"], **user)
        assert int((parent / "pids.current").read_text()) == 1
    finally:
        container.destroy()
        for controller in Path("/sys/fs/cgroup").iterdir():
            with contextlib.suppress(OSError):
                (controller / parent.name).rmdir()


def test_an_agent_the_container_reniced_spawns_nothing_more(running: Container) -> None:
    """A process of the container may lower the agent's priority (same user) or its
    limits: what it spawned after would inherit them. Those execs take the slow way."""
    assert running.exec(["true"]).wait() == 0
    (agent,) = agents(running)
    os.setpriority(os.PRIO_PROCESS, agent, 19)  # (as the container's renice would)
    niceness = running.exec_run(["sh", "-c", "cut -d' ' -f19 /proc/self/stat"],
                                capture_output=True, check=True)  # fmt: skip
    assert niceness.stdout == b"0\n"
    eventually(lambda: agent not in agents(running), "the reniced agent was ended")


def test_an_agent_whose_oom_score_the_container_raised_spawns_nothing_more(
    running: Container,
) -> None:
    """The container's root may raise the agent's oom_score_adj (its /proc file is root's,
    and raising it takes no privilege): later execs inherited it, not the spec's."""
    assert running.exec(["true"]).wait() == 0
    (agent,) = agents(running)
    procfs.set_oom_score_adj(900, agent)  # (as the container's root could)
    score = running.exec_run(["cat", "/proc/self/oom_score_adj"], capture_output=True, check=True)
    assert score.stdout != b"900\n"
    eventually(lambda: agent not in agents(running), "the agent was ended")


#: The container's init: SIGSYS to the exec agent as soon as it has a new child (any
#: process of its uid may signal it). Harmless: it signals only the sandbox's agent.
SIGSYS_AT_SPAWN = """
import os, signal, time
log = open("/tmp/fired", "a", buffering=1)
def agent():
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and open(f"/proc/{d}/comm").read().strip() == "sandboxrt-agent":
                return int(d)
        except OSError:
            pass
while True:
    a = agent()
    if a is None:
        time.sleep(0.001)
        continue
    known = None
    while True:
        try:
            with open(f"/proc/{a}/task/{a}/children") as f:
                kids = set(f.read().split())
        except OSError:
            break
        if known is not None and kids - known:
            os.kill(a, signal.SIGSYS)
            log.write("fired\\n")
            break
        known = kids
"""


def test_an_agent_killed_with_sigsys_as_it_spawns_never_runs_an_exec_twice(
    store: FileStore, bundle: BundleFactory
) -> None:
    """A SIGSYS was taken for the agent's own profile refusing a system call (unfit, so the
    exec went again the slow way) even once its spawn had begun: the container could make
    each exec run twice, both copies on the caller's stdio."""
    path = bundle(["python3", "/watch.py"], rootfs="host_usr")
    (path / "rootfs" / "watch.py").write_text(SIGSYS_AT_SPAWN)
    container = Container.create("sigsys", path, store=store)
    try:
        container.start()
        for i in range(5):
            script = f"echo run-{i} >> /tmp/count; sleep 0.2"
            with contextlib.suppress(ExecError):  # (the agent died as it spawned: said)
                assert container.exec_run(["sh", "-c", script], timeout=30).returncode == 0
        counted = container.exec_run(["cat", "/tmp/count"], capture_output=True).stdout
        fired = container.exec_run(["cat", "/tmp/fired"], capture_output=True).stdout
        assert fired, "the agent was never signalled: this tests nothing"
        runs = counted.decode().split()
        assert len(runs) == len(set(runs)), f"an exec ran twice: {runs}"
    finally:
        container.destroy()
