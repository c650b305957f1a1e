"""The client gateway's book of predictions: whose they are, matching, chains, expiry, codec."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.pollahead.book import WINDOW, Book, Chain, Hit, Identity, identity_of
from gateway.core.pollahead.codec import (
    AnswerHead,
    Descriptor,
    decode_answer,
    decode_descriptor,
    decode_part,
    encode_answer,
    encode_descriptor,
    encode_part,
)

ALICE: Identity = identity_of("10.0.0.1", [("Cookie", "s=a")])
BOB: Identity = identity_of("10.0.0.2", [("Cookie", "s=a")])
EVE: Identity = identity_of("10.0.0.1", [("Cookie", "s=e")])


def poll(push_id: int, since: int, hold: float = 30.0) -> Descriptor:
    return Descriptor(push_id, "GET", f"/poll?since={since}".encode(), (), "since", hold)


def eio(push_id: int, sid: str = "S") -> Descriptor:
    target = f"/socket.io/?EIO=4&transport=polling&sid={sid}&t=1".encode()
    return Descriptor(push_id, "GET", target, ("t",), None, 30.0)


def test_identity_is_address_cookie_and_authorization() -> None:
    assert identity_of("1.2.3.4", [("cookie", "a"), ("Authorization", "B x"), ("X", "y")]) == (
        "1.2.3.4",
        ("a",),
        ("B x",),
    )


def test_the_predicted_poll_is_served_and_only_to_its_client() -> None:
    book = Book()
    assert book.announce(ALICE, poll(1, 5)) is not None
    for other in (BOB, EVE):
        assert book.lookup(other, "GET", "/poll?since=5") is None
    assert book.lookup(ALICE, "POST", "/poll?since=5") is None
    hit = book.lookup(ALICE, "GET", "/poll?since=5")
    assert isinstance(hit, Hit) and hit.held.answer is None  # announced, not answered yet
    assert book.answered(1, "A1", 10, poll(2, 6), now=0.0) is hit.held
    book.take(hit)
    assert book.held_bytes == 0
    following = book.lookup(ALICE, "GET", "/poll?since=6")
    assert isinstance(following, Hit) and following.held.push_id == 2


def test_only_a_prediction_still_unanswered_awaits_its_answer() -> None:
    book = Book()
    chain = book.announce(ALICE, poll(1, 5))
    assert chain is not None
    assert book.awaits(1) and not book.awaits(2)  # 2: never predicted
    book.answered(1, "A1", 10, None, now=0.0)
    assert not book.awaits(1) and book.holds(1)  # answered: held, no second answer
    other = Book()
    dropped = other.announce(ALICE, poll(3, 9))
    assert dropped is not None and other.awaits(3)
    other.drop(dropped)
    assert not other.awaits(3)  # an orphan: its late answer is only counted


def test_another_cursor_contradicts_the_chain() -> None:
    book = Book()
    book.announce(ALICE, poll(1, 5))
    found = book.lookup(ALICE, "GET", "/poll?since=9")
    assert isinstance(found, Chain)
    assert [h.push_id for h in book.drop(found)] == [1]
    assert book.chains == 0
    assert book.answered(1, "late", 3, None, now=0.0) is None  # the orphan's answer: dropped
    assert book.answered(1, "again", 3, None, now=0.0) is None


def test_engineio_endpoint_is_the_sid_and_t_is_ignored() -> None:
    book = Book()
    book.announce(ALICE, eio(1, "S"))
    assert book.announce(ALICE, eio(2, "S")) is None  # one chain per client and endpoint
    assert book.announce(ALICE, eio(3, "T")) is not None
    hit = book.lookup(ALICE, "GET", "/socket.io/?EIO=4&transport=polling&sid=S&t=99")
    assert isinstance(hit, Hit) and hit.held.push_id == 1
    other = book.lookup(ALICE, "GET", "/socket.io/?EIO=4&transport=polling&sid=T&t=5")
    assert isinstance(other, Hit) and other.held.push_id == 3


def test_expiry_after_the_hold_time() -> None:
    book = Book()
    book.announce(ALICE, poll(1, 5, hold=2.0))
    assert book.next_expiry(0.0) is None
    book.answered(1, "A", 4, None, now=10.0)
    assert book.next_expiry(11.0) == 1.0
    assert book.expired(11.9) == []
    [chain] = book.expired(12.5)
    assert [h.answer for h in book.drop(chain)] == ["A"]
    assert book.held_bytes == 0


def test_void_ends_the_chain() -> None:
    book = Book()
    book.announce(ALICE, poll(1, 5))
    assert book.voided(1) is not None
    assert book.lookup(ALICE, "GET", "/poll?since=5") is None
    assert book.chains == 0


def test_window_bounds_a_chain() -> None:
    book = Book()
    book.announce(ALICE, poll(1, 0))
    for n in range(1, 3 * WINDOW):
        book.answered(n, n, 1, poll(n + 1, n), now=0.0)
    chain = book.lookup(ALICE, "GET", "/poll?since=0")
    assert isinstance(chain, Hit)
    assert len(chain.chain.entries) <= WINDOW + 1


def test_a_full_window_keeps_the_next_prediction() -> None:
    """WINDOW answers held and the prediction announced with the last of them (the server's
    chain pauses there until a USED, it does not end); one answer more overruns the window."""
    book = Book()
    book.announce(ALICE, poll(1, 0))
    for n in range(1, WINDOW + 1):
        assert book.answered(n, n, 1, poll(n + 1, n), now=0.0) is not None
    assert book.holds(WINDOW + 1)
    book.answered(WINDOW + 1, WINDOW + 1, 1, poll(WINDOW + 2, WINDOW + 1), now=0.0)
    assert not book.holds(WINDOW + 2)
    for n in range(WINDOW + 1):
        hit = book.lookup(ALICE, "GET", f"/poll?since={n}")
        assert isinstance(hit, Hit) and hit.held.answer == n + 1
        book.take(hit)
    assert book.chains == 0 and book.held_bytes == 0


@given(
    st.lists(
        st.tuples(st.sampled_from(["answer", "poll-alice", "poll-bob", "void"]), st.integers(0, 3)),
        max_size=60,
    )
)
def test_each_answer_served_once_in_order_to_its_client_only(steps: list[tuple[str, int]]) -> None:
    """Whatever the interleaving, Alice's polls get answers 1, 2, 3... once each; Bob none."""
    book = Book()
    book.announce(ALICE, eio(1))
    answered, served = 0, []
    for step, _ in steps:
        if step == "answer" and book.holds(answered + 1):
            answered += 1
            book.answered(answered, answered, 1, eio(answered + 1), now=0.0)
        elif step == "void" and book.holds(answered + 1):
            book.voided(answered + 1)
        elif step.startswith("poll"):
            who = ALICE if step == "poll-alice" else BOB
            found = book.lookup(who, "GET", "/socket.io/?EIO=4&transport=polling&sid=S&t=7")
            if who == BOB:
                assert found is None
            elif isinstance(found, Hit) and found.held.answer is not None:
                served.append(found.held.answer)
                book.take(found)
    assert served == list(range(1, len(served) + 1))


def test_codec_round_trips_and_refuses_garbage() -> None:
    d = poll(7, 3)
    assert decode_descriptor(encode_descriptor(d)) == d
    head = AnswerHead(7, 200, "OK", ((b"a", b"b"),), b"body", True, d)
    assert decode_answer(7, encode_answer(head)) == head
    assert decode_part(encode_part(b"x", False)) == (b"x", False)
    for junk in (b"", b"\xc1", b"\x93\x01\x02\x03", encode_part(b"x", True)):
        assert decode_descriptor(junk) is None
        assert decode_answer(1, junk) is None
    assert decode_part(encode_descriptor(d)) is None


@given(st.binary(max_size=300))
def test_codec_never_raises(data: bytes) -> None:
    decode_descriptor(data)
    decode_answer(1, data)
    decode_part(data)
