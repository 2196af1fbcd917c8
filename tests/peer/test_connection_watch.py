"""The bookkeeping that tells silent connections closed at gRPC's handshake deadline
(peer/transport/connection_watch.py) from honest ones, poll by poll."""

from __future__ import annotations

from peer.transport.connection_watch import Lifetimes


def test_a_connection_gone_at_the_deadline_is_silent_and_others_are_not() -> None:
    watch = Lifetimes(deadline=5.0, late=1.0)
    assert watch.poll(0.0, {}) == []
    # 1: opened and gone at the deadline; 2: an honest channel kept open; 3: a probe that hung up at once;
    # 4: closed by gRPC 0.8 s late.
    assert watch.poll(0.5, {1: "chttp2 ipv4:10.0.0.1:1", 2: "chttp2 ipv4:10.0.0.2:2", 3: "c3", 4: "c4"}) == []
    assert watch.poll(1.0, {1: "chttp2 ipv4:10.0.0.1:1", 2: "chttp2 ipv4:10.0.0.2:2", 4: "c4"}) == []  # 3 gone
    for t in (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0):
        assert watch.poll(t, {1: "chttp2 ipv4:10.0.0.1:1", 2: "chttp2 ipv4:10.0.0.2:2", 4: "c4"}) == []
    assert watch.poll(5.5, {2: "chttp2 ipv4:10.0.0.2:2", 4: "c4"}) == [("chttp2 ipv4:10.0.0.1:1", 4.5)]
    assert watch.poll(6.0, {2: "chttp2 ipv4:10.0.0.2:2", 4: "c4"}) == []
    assert watch.poll(6.5, {2: "chttp2 ipv4:10.0.0.2:2"}) == [("c4", 5.5)]
    for t in (7.0, 20.0):
        assert watch.poll(t, {2: "chttp2 ipv4:10.0.0.2:2"}) == []
    assert watch.poll(21.0, {}) == []  # an honest channel closed after 20 s: not at the deadline


def test_a_connection_closed_early_is_not_counted_however_coarse_the_polls() -> None:
    watch = Lifetimes(deadline=5.0)
    watch.poll(0.0, {})
    watch.poll(1.0, {7: "c7"})
    assert watch.poll(3.0, {}) == []  # lived at most 3 s: the caller hung up itself
