"""The control channel: messages and fds over a SOCK_SEQPACKET pair."""

from __future__ import annotations

import os

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
