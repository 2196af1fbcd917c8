from __future__ import annotations

from protocol.membership import MemberState, Source, StaticMembership


def test_seeds_inbound_contacts_and_self_exclusion() -> None:
    m = StaticMembership("127.0.0.1:1")
    m.add_seed("127.0.0.1:1")  # ourselves: ignored
    m.add_seed("127.0.0.1:2")
    m.add_seed("127.0.0.1:2")  # duplicate: ignored
    m.note_contact("127.0.0.1:3", "c", now=5.0, inbound=True)
    assert [(x.address, x.source) for x in m.members()] == [("127.0.0.1:2", Source.SEED),
                                                          ("127.0.0.1:3", Source.INBOUND)]
    assert m.get("127.0.0.1:3").peer_id == "c" and m.get("127.0.0.1:3").last_contact == 5.0
    assert m.note_contact("127.0.0.1:1", "self", now=6.0) is None


def test_repeated_failures_suspect_then_bury_and_contact_revives() -> None:
    m = StaticMembership("me:1")
    m.add_seed("p:2")
    m.note_failure("p:2", 1.0)
    assert m.get("p:2").state is MemberState.SUSPECT and m.live()
    m.note_failure("p:2", 2.0)
    m.note_failure("p:2", 3.0)
    assert m.get("p:2").state is MemberState.DEAD and not m.live()
    m.note_contact("p:2", "p", now=4.0)
    assert m.get("p:2").state is MemberState.ALIVE and m.get("p:2").consecutive_failures == 0
