"""``--poll-ahead`` rules: parsing, refusals that say what a rule is, matching requests."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, build_config
from gateway.core.pollahead.rules import RULE_FORMS, RuleError, parse_rule, rule_for


def test_generic_json_rule() -> None:
    rule = parse_rule("GET /poll since=json:next")
    assert (rule.dialect, rule.method, rule.path, rule.param) == (
        "generic",
        "GET",
        "/poll",
        "since",
    )
    assert rule.source is not None and rule.source.path == ("next",)
    assert rule.hold == 30.0
    assert rule.applies("GET", b"/poll?since=3")
    assert rule.applies("GET", b"/poll")
    assert not rule.applies("POST", b"/poll?since=3")
    assert not rule.applies("GET", b"/polls?since=3")


def test_dotted_header_and_hold() -> None:
    rule = parse_rule("GET /feed cursor=json:meta.next hold=5")
    assert rule.source is not None and rule.source.path == ("meta", "next")
    assert rule.hold == 5.0
    header = parse_rule("GET /feed c=header:X-Next")
    assert header.source is not None and (header.source.kind, header.source.name) == (
        "header",
        "X-Next",
    )


def test_engineio_matches_polling_gets_of_one_sid() -> None:
    rule = parse_rule("engineio")
    assert rule.ignored == frozenset({"t"})
    assert rule.applies("GET", b"/socket.io/?EIO=4&transport=polling&sid=abc&t=1")
    assert rule.applies("GET", b"/engine.io/?EIO=3&transport=polling&sid=abc")
    assert not rule.applies("GET", b"/socket.io/?EIO=4&transport=polling&t=1")  # handshake
    assert not rule.applies("GET", b"/socket.io/?EIO=4&transport=websocket&sid=abc")
    assert not rule.applies("POST", b"/socket.io/?EIO=4&transport=polling&sid=abc")
    assert not rule.applies("GET", b"/socket.io/?EIO=5&transport=polling&sid=abc")
    scoped = parse_rule("engineio /socket.io/")
    assert not scoped.applies("GET", b"/other/?EIO=4&transport=polling&sid=abc")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "GET",
        "GET /poll",
        "get /poll since=json:next",
        "GET poll since=json:next",
        "GET /poll?x=1 since=json:next",
        "GET /poll since=body:next",
        "GET /poll since=json:",
        "GET /poll =json:next",
        "GET /poll since=json:a..b",
        "GET /poll since=json:next hold=0",
        "GET /poll since=json:next hold=x",
        "engineio socket.io",
        "engineio /a /b",
    ],
)
def test_a_bad_rule_says_what_a_rule_looks_like(text: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(text)
    assert RULE_FORMS in str(caught.value)
    assert repr(text) in str(caught.value) or not text


def test_bayeux_is_refused_with_the_reason() -> None:
    with pytest.raises(RuleError, match=r"not supported.*/meta/connect is a POST"):
        parse_rule("bayeux")


def test_first_rule_that_applies() -> None:
    rules = (parse_rule("GET /a x=json:n"), parse_rule("engineio"))
    assert rule_for(rules, "GET", b"/a?x=1") is rules[0]
    assert rule_for(rules, "GET", b"/s/?EIO=4&transport=polling&sid=q") is rules[1]
    assert rule_for(rules, "GET", b"/b") is None


def test_bad_rule_is_a_startup_error() -> None:
    with pytest.raises(ConfigError, match=r"is not a rule.*GET /poll since=json:next"):
        build_config("server", {"upstream": "http://127.0.0.1:9", "poll_ahead": ["GET /poll"]})
    with pytest.raises(ConfigError, match="hopgate server setting"):
        build_config("client", {"upstream": "http://127.0.0.1:9", "poll_ahead": ["engineio"]})
    config = build_config("server", {"upstream": "http://127.0.0.1:9", "poll_ahead": ["engineio"]})
    assert config.poll_ahead == ("engineio",)
