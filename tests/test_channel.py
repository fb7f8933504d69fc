"""The control channel: messages and fds over a SOCK_SEQPACKET pair."""

from __future__ import annotations

import os

import pytest

from sandboxrt._core.protocol import Progress
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
