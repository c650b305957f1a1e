"""The discovery wire format: marks, notes, and the well-known hello proof."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.core import discovery
from gateway.core.discovery import Note
from gateway.core.headers import strip_hop_by_hop


def test_mark_is_hop_by_hop_and_dropped_by_a_compliant_hop() -> None:
    headers: CIMultiDict[str] = CIMultiDict({"Connection": "keep-alive", "X-App": "1"})
    discovery.add_mark(headers)
    assert headers["Hopgate"] == "v=1"
    assert headers["Connection"] == "keep-alive, Hopgate"
    assert discovery.has_mark(headers)
    forwarded = strip_hop_by_hop(headers)
    assert "Hopgate" not in forwarded
    assert forwarded["X-App"] == "1"
    assert not discovery.has_mark(forwarded)


def test_mark_is_listed_once_even_when_added_twice() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    discovery.add_mark(headers)
    discovery.add_mark(headers)
    assert headers.getall("Connection") == ["Hopgate"]
    assert headers.getall("Hopgate") == ["v=1"]


def test_note_round_trips_and_is_hop_by_hop() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    discovery.add_note(headers, "/.hopgate/session")
    assert discovery.note_from(headers) == Note(version=1, session_path="/.hopgate/session")
    assert "Hopgate" not in strip_hop_by_hop(headers)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "v=2",
        "v=one",
        'v=1; session="relative/path"',
        'v=1; session="//evil.example/x"',
        'v=1; session="/a?b"',
        'v=1; session="/a b"',
        "v=1; =x",
        "garbage without equals",
        "v=1; " + "x=" + "a" * 600,
    ],
)
def test_unusable_notes_are_ignored(value: str) -> None:
    assert discovery.parse_note(value) is None


def test_an_echoed_mark_is_not_a_note() -> None:
    request: CIMultiDict[str] = CIMultiDict()
    discovery.add_mark(request)
    echoed = CIMultiDict(request)  # an origin that echoes request headers back
    assert discovery.note_from(echoed) is None


@given(st.text(max_size=200))
def test_parse_note_never_raises(value: str) -> None:
    note = discovery.parse_note(value)
    assert note is None or note.session_path.startswith("/")


def test_hello_answer_is_verified_against_the_nonce() -> None:
    body = json.loads(json.dumps(discovery.hello_body("n1", "/.hopgate/session")))
    assert discovery.check_hello(body, "n1") == Note(version=1, session_path="/.hopgate/session")
    assert discovery.check_hello(body, "n2") is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        "ok",
        [],
        {},
        {"hopgate": 1},
        {"hopgate": 1, "proof": "n1"},  # an echo of the nonce is no proof
        {"hopgate": 2, "proof": discovery.hello_proof("n1")},
        {"hopgate": 1, "proof": discovery.hello_proof("n1"), "session": 5},
        {"hopgate": 1, "proof": discovery.hello_proof("n1"), "session": "//x/y"},
    ],
)
def test_catch_all_or_echoing_answers_are_not_a_gateway(body: object) -> None:
    assert discovery.check_hello(body, "n1") is None
