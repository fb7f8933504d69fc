"""The processes exec'd into a sandbox's containers, as its supervisor runs them
(:class:`Execs`): through a container's exec agent (decision 31) or the slow way
(``init.run_exec``), each exit status kept until it is waited for.

Standard library only: the supervisor imports it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import mmap
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence

from sandboxrt._core import abi
from sandboxrt._core.protocol import EXEC_EXITS_KEPT, ExecPlan, Progress, Reply, Request
from sandboxrt._os import capabilities, channel, procfs
from sandboxrt._proc.children import death_before_exec, died_before_exec, fork_linked
from sandboxrt._proc.init import (
    AGENT_BOARD,
    EXEC_PROCESS_NAME,
    give_stdio,
    join_cgroup_fds,
    open_cgroup,
    run_agent,
    run_exec,
)
from sandboxrt._proc.members import Agent, Member, exited_reply, not_ours_reply

__all__ = ["AGENT_REAP_TRIES", "EXEC_START_TIMEOUT", "UNWAITED_KEPT", "WAITED_KEPT", "Execs"]


#: Exit statuses of exec'd processes kept after their first wait (the latest ones).
WAITED_KEPT = 4096
#: Exit statuses of exec'd processes nobody waited for: kept until waited, up to this many.
UNWAITED_KEPT = 65536
#: How long an exec'd process may take to reach ``execve`` before it is killed (seconds).
EXEC_START_TIMEOUT = 30.0
#: How often (over a second) the supervisor looks for a dying agent it waits for, before
#: leaving it to the reaping of any child.
AGENT_REAP_TRIES = 200


@dataclasses.dataclass(eq=False)
class _ExecStart:
    """A process exec'd the slow way (``run_exec``), on its way to ``execve``: the reply
    goes to ``conn`` once it gets there or fails (its ``status`` socket is close-on-exec),
    while we serve other requests (a process of the container that stops it cannot
    stall the sandbox)."""

    pid: int
    member: Member
    plan: ExecPlan
    status: socket.socket
    conn: socket.socket
    #: The agent's failed reply, when it tried first (see :meth:`Execs.run`).
    by_agent: Reply | None
    deadline: float
    pty: list[int] = dataclasses.field(default_factory=list)
    timed_out: bool = False


#: The answer to an exec on its way when the sandbox ends.
_EXEC_STOPPED = Reply(False, error="the container's init has exited", error_type="Stopped")


#: How long the supervisor waits for an agent's reply before it looks whether the agent
#: was stopped (then killed, its request handed over).
_AGENT_REPLY_SLICE = 0.05

#: Failures of an agent that say nothing of its fitness: ``EAGAIN`` (a pids limit reached,
#: which the slow way then meets too, :func:`_pids_limit_reached`), its death by another's
#: hand.
_TRANSIENT = frozenset({"BlockingIOError", "AgentDied"})


def _pids_limit_reached(dirs: Iterable[int]) -> int | None:
    """The ``pids.max`` of the cgroup directories ``dirs`` (fds), or of a cgroup above
    one (a pod's, a kubelet's), when its ``pids.current`` has reached it, else ``None``."""
    for directory in dirs:
        level = os.dup(directory)
        try:
            for _ in range(64):  # (up to the hierarchy's root, which has no pids.max)
                try:
                    limit = _read_at(level, "pids.max")
                    current = _read_at(level, "pids.current")
                except OSError:  # (not the pids hierarchy's, or its root)
                    break
                if limit != "max" and int(current) >= int(limit):
                    return int(limit)
                try:
                    parent = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=level)
                except OSError:
                    break
                os.close(level)
                level = parent
        finally:
            os.close(level)
    return None


def _read_at(directory: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
    try:
        return os.read(fd, 64).decode().strip()
    finally:
        os.close(fd)


_AGENT_DIED = {"cause_type": "AgentDied"}


def _profile(plan: ExecPlan) -> ExecPlan:
    """What an exec agent becomes ahead for ``plan``: the plan without what each spawn
    sets (args, env, cwd)."""
    return dataclasses.replace(plan, args=[], env=[], cwd="/")


class Execs:
    """The processes exec'd into a sandbox's containers, for its supervisor: spawned by
    a container's exec agent (decision 31) or forked the slow way (``run_exec``), their
    exit statuses kept until waited for, and the connections waiting for them.

    What it needs of the supervisor comes in explicitly: the containers by id
    (``members``, the supervisor's own dict) and its ``selector`` (agents' and
    slow starts' sockets are watched there: ``("agent", member)``,
    ``("exec-start", start)``); ``settle`` before any fork; ``close_in_child``,
    which closes in a child just forked what it must not hold, but the fds
    given; ``agent_homes``, the files of our own cgroups where a member's agent
    waits between spawns (``None``: it can have none); and ``member_pids``, a
    member's processes.
    """

    def __init__(
        self,
        members: dict[str, Member],
        selector: selectors.BaseSelector,
        *,
        settle: Callable[[], None],
        close_in_child: Callable[[Sequence[int]], None],
        agent_homes: Callable[[Member], list[int] | None],
        member_pids: Callable[[Member], set[int]],
    ) -> None:
        self.members = members
        self.selector = selector
        self.settle = settle
        self.close_in_child = close_in_child
        self.agent_homes = agent_homes
        self.member_pids = member_pids
        # Exec'd processes (pids in our PID namespace). Running ones are in ``running``; once
        # reaped, their status waits in ``unwaited`` until a wait asks for it, then moves to
        # ``waited`` (the latest WAITED_KEPT). A pid the kernel hands out again (after the
        # PID space wraps) replaces an old status nobody asked for.
        self.running: set[int] = set()
        self.unwaited: dict[int, int] = {}
        self.waited: collections.OrderedDict[int, int] = collections.OrderedDict()
        #: The container each exec'd process (running, or with a status kept) was exec'd into.
        self.owner: dict[int, str] = {}
        #: Each exec's serial (its reply's ``serial``), by pid: a pid taken again is
        #: another exec. The status of one whose pid was taken before anyone asked is
        #: kept in ``superseded``, by serial, with its container (the latest UNWAITED_KEPT).
        #: They start anywhere: a handle of an earlier sandbox of the same id (its runtime
        #: directory's path) never names one of our execs in what we leave there.
        self.serial = int.from_bytes(os.urandom(6), "big")
        self.serials: dict[int, int] = {}
        self.superseded: dict[int, tuple[str, int]] = {}
        #: Connections waiting for an exec'd process, by pid, and the pid each waits for.
        self.waiters: dict[int, list[socket.socket]] = {}
        self.waiting_on: dict[socket.socket, int] = {}
        #: Every exec agent not reaped yet (its member's, or one ended), by pid.
        self.agents: dict[int, Agent] = {}
        #: Processes exec'd the slow way that have not reached ``execve`` yet, by pid.
        self.starts: dict[int, _ExecStart] = {}

    def running_in(self, member_id: str) -> list[int]:
        """The running processes exec'd into container ``member_id``."""
        return [p for p, owner in self.owner.items() if owner == member_id and p in self.running]

    def stop_waiting(self, conn: socket.socket) -> None:
        """``conn`` closed: it waits for no exec'd process any more."""
        pid = self.waiting_on.pop(conn, None)
        if pid is not None:
            with contextlib.suppress(ValueError):
                self.waiters[pid].remove(conn)

    def forget_member(self, member: Member) -> None:
        """``member`` is removed: what is on its way to ``execve`` there is killed, and
        what is kept of its exec'd processes goes."""
        for start in self.starts.values():  # (stopped before it joined the cgroup, say)
            if start.member is member:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(start.pid, signal.SIGKILL)
        # Its exec'd processes' statuses go; running ones are kept from a later container
        # of the same id (their waiters are still answered).
        for pid in [p for p, owner in self.owner.items() if owner == member.id]:
            self.unwaited.pop(pid, None)
            self.waited.pop(pid, None)
            if pid in self.running:
                self.owner[pid] = ""
            else:
                self._forget(pid)
        for serial in [s for s, (owner, _) in self.superseded.items() if owner == member.id]:
            del self.superseded[serial]

    def kept_exits(self) -> list[tuple[int, int, str, int]]:
        """The statuses of exec'd processes we keep (``ExecExits``: serial, pid, container,
        status), the latest: a record of bounded size."""
        exits = [
            (self.serials[pid], pid, self.owner.get(pid, ""), returncode)
            for pid, returncode in (*self.unwaited.items(), *self.waited.items())
            if pid in self.serials
        ]
        exits += [(serial, 0, owner, code) for serial, (owner, code) in self.superseded.items()]
        return sorted(exits)[-EXEC_EXITS_KEPT:]  # the latest: a record of bounded size

    def end_all(self) -> None:
        """The sandbox ends: kill every exec'd process's group, what is on its way to
        ``execve`` (its caller told so) and every agent; waiters get ``-SIGKILL``."""
        for pid in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for start in list(self.starts.values()):  # on their way: never to run
            with contextlib.suppress(ProcessLookupError):
                os.kill(start.pid, signal.SIGKILL)
            channel.close_fds(start.pty)
            with contextlib.suppress(OSError):
                channel.send(start.conn, _EXEC_STOPPED)
        for pid in self.agents:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid, conns in self.waiters.items():
            for conn in conns:
                with contextlib.suppress(OSError):
                    channel.send(conn, Reply(True, pid=pid, returncode=-signal.SIGKILL))

    def run(
        self, conn: socket.socket, member: Member, request: Request, fds: list[int]
    ) -> tuple[Reply, list[int]] | None:
        """Run ``request.exec`` in ``member``: spawned by its exec agent when one may serve
        it (:meth:`_by_agent`), else (or if the agent failed) the slow way, whose
        reply goes to ``conn`` later (None here: :meth:`start_step`).

        The reply carries its pid, and its pty master.
        """
        plan = request.exec
        if plan is None or len(fds) != (0 if plan.terminal else 3):
            return Reply(False, error="malformed exec request", error_type="ProtocolError"), []
        if member.returncode is not None or not member.init_pid:
            return _EXEC_STOPPED, []
        capabilities.last_cap()  # probed once here, not in every child
        if member.cgroup_fds is None:  # opened once: every exec'd child writes to them
            member.cgroup_fds = open_cgroup(member.cgroup_dirs or [])
        by_agent = self._by_agent(member, plan, fds)
        if by_agent is not None and (by_agent.ok or by_agent.error_type != "AgentFailed"):
            return by_agent, []
        # The slow way forks outside the container's cgroup and joins it, which pids.max
        # does not refuse: it is checked here, as the agent's fork inside meets it.
        full = _pids_limit_reached(member.cgroup_dirs or [])
        if full is not None:
            error = f"fork: Resource temporarily unavailable (the container's pids.max, {full})"
            return Reply(False, error=error, error_type="ExecError"), []
        self._fork(conn, member, plan, fds, by_agent)
        return None

    def answer(self, conn: socket.socket, reply: Reply, pty: list[int]) -> None:
        try:
            with contextlib.suppress(OSError):
                channel.send(conn, reply, pty)
        finally:
            channel.close_fds(pty)

    def _fork(
        self,
        conn: socket.socket,
        member: Member,
        plan: ExecPlan,
        fds: list[int],
        by_agent: Reply | None,
    ) -> None:
        """The slow way: fork a process that joins the init's namespaces and root and execs
        (``run_exec``); answered once it exec'd or failed (:meth:`start_step`), or
        killed after EXEC_START_TIMEOUT."""
        assert member.cgroup_fds is not None
        cgroup = member.cgroup_fds
        self.settle()
        pid, mask, ours, theirs = fork_linked()
        if pid == 0:
            ours.close()
            run_exec(plan, member.handles, theirs, fds, mask, cgroup=cgroup)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        deadline = time.monotonic() + EXEC_START_TIMEOUT
        start = _ExecStart(pid, member, plan, ours, conn, by_agent, deadline)
        self.starts[pid] = start
        self.selector.register(ours, selectors.EVENT_READ, ("exec-start", start))

    def start_step(self, start: _ExecStart, *, dead: bool = False) -> None:
        """Read what ``start``'s process said (a pty master, an error) or that its status
        socket closed, and answer once that tells how it went; ``dead``: it exited (not
        reaped yet, see ``Supervisor._reap``), so all it said is there to read."""
        try:
            while True:
                step, fds = channel.receive(start.status, Progress)
                if step.step == "pty":
                    channel.close_fds(start.pty)
                    start.pty = fds
                    if dead:
                        continue
                    return  # (the rest comes later)
                channel.close_fds(fds)
                details = {"cause_type": step.error_type}
                reply = Reply(False, error=step.error, error_type="ExecError", details=details)
                # Not waited for: it exits now, unless stopped (by a process of the
                # container), which must not hold us: killed, and collected by _reap then.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(start.pid, signal.SIGKILL)
                self._reap_failed(start.pid, hang=False)
                break
        except channel.ChannelClosedError:
            reply = self._start_outcome(start)
        except (OSError, ValueError) as exc:
            with contextlib.suppress(ProcessLookupError):
                os.kill(start.pid, signal.SIGKILL)
            self._reap_failed(start.pid, hang=False)
            reply = Reply(False, error=f"the process did not start: {exc}", error_type="ExecError")
        self._start_done(start, reply)

    def _start_outcome(self, start: _ExecStart) -> Reply:
        """Its status socket closed: on exec (the program runs), or as it died before."""
        pid = start.pid
        if not died_before_exec(pid, (EXEC_PROCESS_NAME,)):
            serial = self._record(pid, start.member.id)
            return Reply(True, pid=pid, details={"serial": serial})
        _, wait_status = os.waitpid(pid, 0)
        if start.timed_out:
            error = f"the process did not start within {EXEC_START_TIMEOUT:g} s"
        else:
            returncode = os.waitstatus_to_exitcode(wait_status)
            error = death_before_exec("process", returncode, start.plan)
        return Reply(False, error=error, error_type="ExecError")

    def _start_done(self, start: _ExecStart, reply: Reply) -> None:
        self.starts.pop(start.pid, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(start.status)
        start.status.close()
        pty, start.pty = start.pty, []
        if not reply.ok:
            channel.close_fds(pty)
            pty = []
        by_agent, member = start.by_agent, start.member
        transient = by_agent is not None and by_agent.details.get("cause_type") in _TRANSIENT
        if by_agent is not None and reply.ok and not transient and member.id in self.members:
            # The agent failed where the slow way works: never again for this profile.
            member.agent_unfit.append(_profile(start.plan))
            self.end_agent(member)
        self.answer(start.conn, reply, pty)

    def start_timeouts(self) -> float | None:
        """Kill the processes that did not reach ``execve`` in time (each answered as it
        is reaped); seconds until the next one's deadline, or None."""
        now, next_deadline = time.monotonic(), None
        for start in self.starts.values():
            if start.timed_out:
                continue
            if start.deadline <= now:
                start.timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(start.pid, signal.SIGKILL)
            elif next_deadline is None or start.deadline < next_deadline:
                next_deadline = start.deadline
        return None if next_deadline is None else next_deadline - now

    def _by_agent(self, member: Member, plan: ExecPlan, fds: list[int]) -> Reply | None:
        """Run ``plan`` through ``member``'s exec agent (made now if it has none).

        ``None`` when no agent may serve it (a terminal, a user to look up, no
        cgroup, another profile than the agent's, one an agent failed at, a seccomp
        profile that pretends);
        a reply with ``error_type`` ``AgentFailed`` when the agent could not
        spawn it (the caller then goes the slow way, whose outcome counts).
        """
        profile = _profile(plan)
        if plan.terminal or plan.user or not member.cgroup_procs or profile in member.agent_unfit:
            return None
        if plan.seccomp is not None and plan.seccomp.pretends:
            return None
        if (
            plan.scheduler is not None
            and plan.scheduler[1] & abi.SCHED_FLAGS["SCHED_FLAG_RESET_ON_FORK"]
        ):
            return None  # (the agent's would not reach what it spawns)
        agent = member.agent
        if agent is not None and agent.profile != profile:
            return None  # the first profile keeps the agent; others go the slow way
        if agent is None:
            agent = self._start_agent(member, profile)
            if agent is None:
                return None
        assert member.cgroup_fds is not None
        failed = Reply(False, error="the exec agent failed", error_type="AgentFailed")
        # Gone before it took the request: nothing ran, and nothing is said of its fitness.
        lost = Reply(
            False, error="the exec agent died", error_type="AgentFailed", details=_AGENT_DIED
        )
        info = procfs.read_stat(agent.pid)
        if info is not None and info.state in ("T", "t"):
            # Stopped (any process of the pod may signal it): it would not answer, and
            # we would wait for it with every other request of the sandbox behind. No
            # agent serves this container any more: the next one could be stopped too.
            self.end_agent(member)
            member.agent_unfit.append(profile)
            return lost
        try:
            join_cgroup_fds(member.cgroup_fds, agent.pid)  # what it spawns is born inside
            give_stdio(fds, plan.uid)  # (the agent has dropped the privilege to)
            # What varies between its spawns, and nothing else: a short message.
            channel.send(agent.sock, ExecPlan(args=plan.args, env=plan.env, cwd=plan.cwd), fds)
            agent.sent += 1
        except OSError:
            self.end_agent(member)
            return lost
        try:
            step = self._agent_reply(member, agent)
        finally:
            if member.agent is agent:
                # Back to our cgroups before the reply: then it is never one of the
                # container's processes to anyone who knows of the exec.
                self._agent_home(member, agent)
        if step is None:
            error = "the exec agent died or did not answer"
            return Reply(False, error=error, error_type="ExecError", details=_AGENT_DIED)
        if step.step == "unready":
            return failed  # unfit: the slow way runs it, and says whether it could
        if step.step == "lost":
            return lost
        if step.step != "spawned":
            details = {"cause_type": step.error_type}
            return Reply(False, error=step.error, error_type="AgentFailed", details=details)
        pid = int(step.details.get("pid", 0))
        serial = self._agent_spawned(member, agent, pid)
        return Reply(True, pid=pid, details={"serial": serial})

    def _agent_spawned(self, member: Member, agent: Agent, pid: int) -> int:
        """Note ``pid``, which ``agent`` spawned for ``member``; its exec's serial."""
        if pid in agent.children:
            return self.serials[pid]
        agent.children.add(pid)
        return self._record(pid, member.id)

    def _record(self, pid: int, member_id: str) -> int:
        """Note ``pid`` as a process exec'd into ``member_id``; its serial. The status an
        earlier exec with that pid left unasked is kept apart, by that exec's serial."""
        earlier, status = self.serials.get(pid), self.unwaited.pop(pid, None)
        if earlier is not None and status is not None:
            self.superseded[earlier] = (self.owner.get(pid, ""), status)
            while len(self.superseded) > UNWAITED_KEPT:
                del self.superseded[next(iter(self.superseded))]
        self.waited.pop(pid, None)
        self.running.add(pid)
        self.owner[pid] = member_id
        self.serial += 1
        self.serials[pid] = self.serial
        return self.serial

    def _forget(self, pid: int) -> None:
        self.owner.pop(pid, None)
        self.serials.pop(pid, None)

    def _agent_reply(self, member: Member, agent: Agent) -> Progress | None:
        """The agent's answer to the request just sent (``spawned`` or an error).

        If it dies without one, its ``board`` says how far it got: ``spawned``
        (then died); ``Progress("unready")`` if its seccomp filter killed it
        (``SIGSYS``: a syscall it needs is not allowed) or its preparation failed;
        ``Progress("lost")`` if it died otherwise before it spawned; ``None`` if it
        died while spawning (or hung). Exits it reports meanwhile are handled.
        """
        # Waited for in slices: a process of the pod may stop the agent (SIGSTOP) once it
        # took the request, and every other request of the sandbox would wait behind it.
        deadline = time.monotonic() + EXEC_START_TIMEOUT
        agent.sock.settimeout(_AGENT_REPLY_SLICE)
        try:
            while True:
                try:
                    step, fds = channel.receive(agent.sock, Progress)
                except TimeoutError:
                    info = procfs.read_stat(agent.pid)
                    stopped = info is not None and info.state in ("T", "t")
                    if stopped or time.monotonic() >= deadline:
                        raise
                    continue
                channel.close_fds(fds)
                if self._agent_news(agent, step):
                    continue
                if not agent.ready:
                    self.end_agent(member)  # its preparation failed
                    return Progress("unready", error=step.error)
                return step
        except channel.ChannelClosedError:
            return self._agent_dead(member, agent)
        except (OSError, ValueError):  # TimeoutError included: stopped, say
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, signal.SIGKILL)
            return self._agent_dead(member, agent)
        finally:
            if member.agent is agent:
                agent.sock.settimeout(None)

    def _agent_dead(self, member: Member, agent: Agent) -> Progress | None:
        """What became of the request of an agent that died (or was killed) without an
        answer (see :meth:`_agent_reply`), once it is reaped."""
        begun, done, pid = (
            int.from_bytes(agent.board[i : i + 8], "little") for i in range(0, 24, 8)
        )
        if done >= agent.sent:  # it spawned, and died before it said so
            self._agent_spawned(member, agent, pid)
        returncode = self._reap_agent(agent)
        if done >= agent.sent:
            return Progress("spawned", details={"pid": pid})
        if returncode == -signal.SIGSYS:  # a syscall it needs is denied, say: unfit
            if begun < agent.sent:
                return Progress("unready")  # (the slow way runs it, and says whether)
            # Its spawn had begun, so it may have spawned (a SIGSYS any process of its uid
            # may send as its child execs): never run it twice, nor this profile here.
            member.agent_unfit.append(agent.profile)
            return None
        if begun < agent.sent and returncode is not None:
            return Progress("lost")  # nothing was spawned
        return None  # killed while it spawned: it may have, so never run it twice

    def _agent_home(self, member: Member, agent: Agent) -> None:
        """Move ``agent`` back to our cgroups, where it waits between spawns."""
        try:
            join_cgroup_fds(agent.home_fds, agent.pid)
        except OSError:  # left in the container's cgroup, it would count as one of its own
            self.end_agent(member)

    def _agent_news(self, agent: Agent, step: Progress) -> bool:
        """Take in what ``agent`` says unasked (``ready``, an ``exited`` child); ``False``
        for any other step."""
        if step.step == "ready":
            agent.ready = True
        elif step.step == "exited":
            self._agent_child_exited(agent, step)
        else:
            return False
        return True

    def _agent_child_exited(self, agent: Agent, step: Progress) -> None:
        pid = int(step.details.get("pid", 0))
        if pid in agent.children:
            agent.children.discard(pid)
            if pid in self.running:
                self.exited(pid, int(step.details.get("returncode", -signal.SIGKILL)))

    def agent_message(self, member: Member) -> None:
        """The agent spoke (an exit, ``ready``) or ended, between requests."""
        agent = member.agent
        if agent is None:
            return
        agent.sock.settimeout(0.0)
        try:
            while True:
                step, fds = channel.receive(agent.sock, Progress)
                channel.close_fds(fds)
                self._agent_news(agent, step)
        except BlockingIOError:
            pass
        except (channel.ChannelClosedError, OSError, ValueError):
            self.end_agent(member)
            return
        finally:
            if member.agent is agent:
                agent.sock.settimeout(None)

    def _start_agent(self, member: Member, profile: ExecPlan) -> Agent | None:
        """Fork ``member``'s exec agent for ``profile``; ``None`` if it cannot have one
        (see ``agent_homes``)."""
        home = self.agent_homes(member)
        if home is None:
            member.agent_unfit.append(profile)
            return None
        try:
            home_fds = open_cgroup(home)
        except OSError:
            member.agent_unfit.append(profile)
            return None
        self.settle()
        board: mmap.mmap | None = None
        try:
            board = mmap.mmap(-1, 8 * AGENT_BOARD)  # anonymous, shared with the child
            pid, mask, ours, theirs = fork_linked()
        except BaseException:
            channel.close_fds(home_fds)
            if board is not None:
                board.close()
            raise
        if pid == 0:
            ours.close()
            self.close_in_child(member.handles)
            run_agent(profile, member.handles, theirs, mask, board)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        member.agent = self.agents[pid] = Agent(pid, ours, profile, home_fds, board)
        self.selector.register(ours, selectors.EVENT_READ, ("agent", member))
        return member.agent

    def end_agent(self, member: Member) -> None:
        """SIGKILL ``member``'s agent and detach it; it is forgotten once reaped
        (:meth:`agent_exited`)."""
        agent, member.agent = member.agent, None
        if agent is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(agent.sock)
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent.pid, signal.SIGKILL)

    def _reap_agent(self, agent: Agent) -> int | None:
        """Wait (a second at most: a frozen one would not end) for ``agent``, which is
        exiting or killed, and forget it; its exit status. ``None`` if it is not reaped
        by then: it is ended, and ``Supervisor._reap`` collects it later."""
        for _ in range(AGENT_REAP_TRIES):
            try:
                done, status = os.waitpid(agent.pid, os.WNOHANG)
            except ChildProcessError:  # not ours to wait for any more: gone
                self.agents.pop(agent.pid, None)
                self.agent_exited(agent)
                return None
            if done:
                self.agents.pop(agent.pid, None)
                self.agent_exited(agent)
                return os.waitstatus_to_exitcode(status)
            time.sleep(1.0 / AGENT_REAP_TRIES)
        for member in self.members.values():
            if member.agent is agent:
                self.end_agent(member)
        return None

    def agent_exited(self, agent: Agent) -> None:
        """An agent was reaped: read the exits it reported, then settle what it spawned.

        What still runs is our child now (we are its subreaper) and is reaped
        as any exec'd process; what it reaped without telling us is reported
        killed.
        """
        for member in self.members.values():
            if member.agent is agent:
                member.agent = None
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(agent.sock)
        agent.sock.settimeout(0.0)
        with contextlib.suppress(OSError, ValueError):  # end of stream included
            while True:
                step, fds = channel.receive(agent.sock, Progress)
                channel.close_fds(fds)
                if step.step == "exited":
                    self._agent_child_exited(agent, step)
        agent.sock.close()
        agent.board.close()
        channel.close_fds(agent.home_fds)
        for pid in sorted(agent.children & self.running):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by the agent, which died before it said so
                self.exited(pid, -signal.SIGKILL)
                continue
            if done:
                self.exited(pid, os.waitstatus_to_exitcode(status))

    @staticmethod
    def _reap_failed(pid: int, *, hang: bool = True) -> None:
        """Reap a child that failed to start; without ``hang`` only if it has exited
        already (killed in a cgroup frozen from outside, it ends once thawed: then
        ``Supervisor._reap`` collects it, as no process of ours)."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0 if hang else os.WNOHANG)

    def exited(self, pid: int, returncode: int) -> None:
        self.running.discard(pid)
        waiters = self.waiters.pop(pid, [])
        if self.owner.get(pid) not in self.members:
            self._forget(pid)  # its container was destroyed: status not kept
        elif not waiters:
            self.unwaited[pid] = returncode
            if len(self.unwaited) > UNWAITED_KEPT:
                oldest = next(iter(self.unwaited))
                del self.unwaited[oldest]
                self._forget(oldest)
            return
        else:
            self._remember_waited(pid, returncode)
        for conn in waiters:
            self.waiting_on.pop(conn, None)
            with contextlib.suppress(OSError):
                channel.send(conn, Reply(True, pid=pid, returncode=returncode))

    def _remember_waited(self, pid: int, returncode: int) -> None:
        self.waited[pid] = returncode
        self.waited.move_to_end(pid)
        while len(self.waited) > WAITED_KEPT:
            oldest, _ = self.waited.popitem(last=False)
            self._forget(oldest)

    def wait(
        self, conn: socket.socket, member: Member, pid: int, *, nohang: bool, serial: int = 0
    ) -> Reply | None:
        if serial and self.serials.get(pid) != serial:  # its pid is another exec's now
            owner, returncode = self.superseded.get(serial, (member.id, None))
            if owner != member.id:
                return not_ours_reply(member, pid)
            if returncode is None:
                return exited_reply(pid, "has exited; its status was not kept")
            return Reply(True, pid=pid, returncode=returncode)
        if self.owner.get(pid) != member.id:
            return self._not_waitable(member, pid)
        if pid in self.running:
            if nohang:
                return Reply(True, pid=pid)
            self.waiters.setdefault(pid, []).append(conn)
            self.waiting_on[conn] = pid
            return None
        if pid in self.unwaited:
            self._remember_waited(pid, self.unwaited.pop(pid))
        if pid in self.waited:
            return Reply(True, pid=pid, returncode=self.waited[pid])
        return not_ours_reply(member, pid)

    def _not_waitable(self, member: Member, pid: int) -> Reply:
        """The answer to a wait for a pid that is no exec'd process: ``ProcessNotFoundError``,
        saying so of one of the container's other processes."""
        if pid in self.member_pids(member):
            return Reply(
                False,
                error=f'process {pid} of container "{member.id}" is neither its init nor '
                "exec'd into it: only those are waited for",
                error_type="ProcessNotFoundError",
                details={"pid": pid},
            )
        return not_ours_reply(member, pid)

    def end_stopped_agents(self) -> None:
        """End the exec agents the container stopped (its processes may signal them):
        what one spawned would wait for it for ever. Ended, it leaves them to us (their
        subreaper); no agent serves its container any more (another could be stopped)."""
        for agent in list(self.agents.values()):
            try:
                stopped = os.waitid(os.P_PID, agent.pid, os.WSTOPPED | os.WNOHANG)
            except ChildProcessError:
                continue
            if stopped is None or stopped.si_pid == 0:
                continue
            for member in self.members.values():
                if member.agent is agent:
                    member.agent_unfit.append(agent.profile)
                    self.end_agent(member)
