"""The next poll read from an answer: cursors, Engine.IO payloads, and when not to predict."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.pollahead.predict import Answer, engineio_closes, next_target, with_param
from gateway.core.pollahead.rules import parse_rule, split_target

JSON = (("Content-Type", "application/json"),)
GENERIC = parse_rule("GET /poll since=json:next")


def answer(doc: object, status: int = 200, headers: tuple[tuple[str, str], ...] = JSON) -> Answer:
    return Answer(status, headers, json.dumps(doc).encode())


def test_json_cursor_replaces_the_parameter_in_place() -> None:
    got = next_target(GENERIC, b"/poll?a=1&since=3&b=2", answer({"next": 7}))
    assert got == b"/poll?a=1&since=7&b=2"
    assert next_target(GENERIC, b"/poll", answer({"next": "x y"})) == b"/poll?since=x%20y"


def test_dotted_and_header_sources() -> None:
    dotted = parse_rule("GET /f c=json:meta.next")
    assert next_target(dotted, b"/f", answer({"meta": {"next": "k"}})) == b"/f?c=k"
    assert next_target(dotted, b"/f", answer({"meta": 3})) is None
    header = parse_rule("GET /f c=header:X-Next")
    got = Answer(200, (("x-next", "42"),), b"")
    assert next_target(header, b"/f?c=1", got) == b"/f?c=42"


def test_no_prediction_without_a_usable_answer() -> None:
    assert next_target(GENERIC, b"/poll", answer({"next": 1}, status=204)) is None
    assert next_target(GENERIC, b"/poll", answer({"next": 1}, status=500)) is None
    cookie = (*JSON, ("Set-Cookie", "s=2"))
    assert next_target(GENERIC, b"/poll", answer({"next": 1}, headers=cookie)) is None
    for doc in ({}, {"next": None}, {"next": True}, {"next": 1.5}, {"next": ""}, [1]):
        assert next_target(GENERIC, b"/poll", answer(doc)) is None, doc
    assert next_target(GENERIC, b"/poll", Answer(200, JSON, b"not json")) is None


def test_engineio_predicts_the_same_request_until_a_close_packet() -> None:
    rule = parse_rule("engineio")
    target = b"/socket.io/?EIO=4&transport=polling&sid=s&t=1"
    assert next_target(rule, target, Answer(200, (), b'42["a",1]\x1e2')) == target
    assert next_target(rule, target, Answer(200, (), b"6")) == target
    assert next_target(rule, target, Answer(200, (), b'42["a"]\x1e1')) is None
    assert next_target(rule, target, Answer(400, (), b'"Unknown sid"')) is None
    v3 = b"/socket.io/?EIO=3&transport=polling&sid=s"
    assert next_target(rule, v3, Answer(200, (), b'9:42["a",1]1:2')) == v3
    assert next_target(rule, v3, Answer(200, (), b"1:1")) is None
    assert next_target(rule, v3, Answer(200, (), b'5:42["a",1]')) is None  # unreadable


def test_engineio_v3_binary_payload() -> None:
    assert not engineio_closes(b"\x00\x02\xff42\x01\x01\xff\x04", "3")
    assert engineio_closes(b"\x00\x01\xff1", "3")
    assert engineio_closes(b"\x00\x09\xff42", "3")  # short


@given(st.text(min_size=1, max_size=20), st.text(max_size=20))
def test_with_param_round_trips_any_value(param: str, value: str) -> None:
    target = with_param(b"/p?x=1", param, value)
    path, query = split_target(target)
    assert path == "/p"
    assert [v for k, v in query if k == param] == [value]
    if param != "x":
        assert ("x", "1") in query


@given(st.binary(max_size=200), st.sampled_from(["3", "4"]))
def test_engineio_payload_reader_never_raises(body: bytes, version: str) -> None:
    assert engineio_closes(body, version) in (True, False)
