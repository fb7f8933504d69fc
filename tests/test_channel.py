"""The control channel: messages and fds over a SOCK_SEQPACKET pair."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from sandboxrt._core.plan import SandboxPlan, build_plan
from sandboxrt._core.protocol import Progress, decode, encode
from sandboxrt._core.spec import dump_spec
from sandboxrt._core.spec_default import default_spec
from sandboxrt._os import channel


def test_a_message_and_its_fds_arrive_close_on_exec() -> None:
    ours, theirs = channel.socket_pair()
    r, w = os.pipe()
    try:
        channel.send(theirs, Progress("created"), [r])
        step, fds = channel.receive(ours, Progress)
        assert step == Progress("created") and len(fds) == 1
        assert not os.get_inheritable(fds[0])
        os.write(w, b"x")
        assert os.read(fds[0], 1) == b"x"
        channel.close_fds(fds)
    finally:
        os.close(r)
        os.close(w)
        ours.close()
        theirs.close()


def test_what_a_peer_sent_before_closing_outlives_our_unread_message() -> None:
    # The kernel reports ECONNRESET once, ahead of the data, when the peer closed with a
    # message of ours unread: the peer's last word (an error report) must still arrive.
    ours, theirs = channel.socket_pair()
    with ours:
        channel.send(theirs, Progress("error", error="rootfs is missing"))
        channel.send(ours, Progress("cgroup"))  # never read
        theirs.close()
        step, _ = channel.receive(ours, Progress)
        assert step.error == "rootfs is missing"
        with pytest.raises(channel.ChannelClosedError):
            channel.receive(ours, Progress)


def test_a_nested_plan_round_trips_through_its_encoding() -> None:
    spec = dump_spec(default_spec())
    spec["linux"].pop("seccomp", None)  # no compiler needed
    spec["mounts"].append(
        {"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "ro"]}
    )
    plan = build_plan(
        container_id="c",
        sandbox_id="c",
        spec=spec,
        bundle="/b",
        runtime_root="/run/x",
        compile_seccomp=lambda _section: b"",
    )
    raw = encode(plan)
    assert decode(raw, SandboxPlan) == plan
    assert encode(decode(raw, SandboxPlan)) == raw
    assert any(m.bind and m.destination == "/data" for m in plan.init.mounts)


def test_listeners_bound_from_many_threads_leave_the_umask_alone(tmp_path: Path) -> None:
    """The process's umask is every thread's: binding a socket 0600 must not set it, even
    for a moment (threads racing to set and restore it left it 0177 for good)."""
    before = os.umask(0o022)
    try:

        def bind_many(worker: int) -> list[int]:
            modes = []
            for i in range(40):
                path = tmp_path / f"w{worker}-{i}.sock"
                with channel.bind_listener(str(path)):
                    modes.append(stat.S_IMODE(path.lstat().st_mode))
                (tmp_path / f"w{worker}-{i}.txt").touch()
            return modes

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            modes = [m for ms in pool.map(bind_many, range(8)) for m in ms]
        assert set(modes) == {0o600}
        assert os.umask(0o022) == 0o022
        files = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("*.txt")}
        assert files == {0o644}  # made while other threads bound sockets
        assert not list(tmp_path.glob(".bind-*"))
    finally:
        os.umask(before)


def test_a_listener_is_not_bound_over_an_existing_path(tmp_path: Path) -> None:
    path = tmp_path / "taken.sock"
    path.write_text("mine")
    with pytest.raises(FileExistsError):
        channel.bind_listener(str(path))
    assert path.read_text() == "mine"
    long_dir = tmp_path / ("d" * 120)
    long_dir.mkdir()
    path = long_dir / "long.sock"  # longer than sun_path holds
    with channel.bind_listener(str(path)) as sock, channel.connect(str(path), timeout=5.0):
        accepted, _ = sock.accept()
        accepted.close()


def test_a_peer_that_closes_between_our_peek_and_our_read_still_gets_its_word_in() -> None:
    """The same reset, reported at the read rather than at the peek: the peer closed (with
    a message of ours unread) after we peeked at its message's size."""
    ours, theirs = channel.socket_pair()

    class PeerClosesNow(socket.socket):
        def recvmsg(self, *args: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
            theirs.close()  # right between the peek and the read
            return super().recvmsg(*args)

    with ours, PeerClosesNow(fileno=os.dup(ours.fileno())) as reader:
        channel.send(theirs, Progress("error", error="overlayfs refused"))
        channel.send(ours, Progress("cgroup"))  # never read
        step, _ = channel.receive(reader, Progress)
        assert step.error == "overlayfs refused"
