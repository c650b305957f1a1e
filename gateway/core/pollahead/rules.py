"""``--poll-ahead`` rules: which requests are polls whose next request an answer predicts.

Forms (``RULE_FORMS``)::

    METHOD PATH PARAM=json:FIELD      the cursor is a JSON field of the answer (a.b dotted)
    METHOD PATH PARAM=header:NAME     the cursor is a response header
    engineio [PATH]                   Engine.IO v3/v4 polling GETs of one sid

Any form may end in ``hold=SECONDS``: how long the client gateway keeps an
answer nobody asked for yet (default 30 s). ``bayeux`` is refused with the
reason (the docs say it again): its next ``/meta/connect`` is a POST whose
body the client numbers, so a gateway cannot issue it for the client.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import parse_qsl

__all__ = [
    "DEFAULT_HOLD",
    "RULE_FORMS",
    "Rule",
    "RuleError",
    "Source",
    "parse_rule",
    "parse_rules",
    "rule_for",
    "split_target",
]

DEFAULT_HOLD: Final = 30.0
MAX_HOLD: Final = 3600.0

RULE_FORMS: Final = (
    "a rule is 'METHOD PATH PARAM=json:FIELD' (FIELD may be dotted: json:a.b), "
    "'METHOD PATH PARAM=header:NAME', or a dialect: 'engineio [PATH]'; any may end in "
    "hold=SECONDS. Example: --poll-ahead 'GET /poll since=json:next'"
)

_BAYEUX_WHY: Final = (
    "the bayeux dialect is not supported: a CometD /meta/connect is a POST whose body "
    "carries a message id the client numbers itself, so a gateway cannot issue the next "
    "one without the origin seeing a request the client never sent (see "
    "docs/howto/poll-ahead.md)"
)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ENGINEIO_VERSIONS: Final = frozenset({"3", "4"})


class RuleError(ValueError):
    """A ``--poll-ahead`` rule that cannot be read; the message shows what one looks like."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where an answer gives the next cursor."""

    kind: Literal["json", "header"]
    name: str

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.name.split("."))


@dataclass(frozen=True, slots=True)
class Rule:
    """One poll endpoint. ``path`` None: any path (a dialect that recognises its query)."""

    text: str
    dialect: Literal["generic", "engineio"]
    method: str
    path: str | None
    param: str | None
    source: Source | None
    ignored: frozenset[str]
    hold: float

    def applies(self, method: str, target: bytes) -> bool:
        """Whether a body-less request ``method target`` is a poll of this endpoint."""
        if method != self.method:
            return False
        path, query = split_target(target)
        if self.path is not None and path != self.path:
            return False
        if self.dialect == "engineio":
            return _engineio_poll(query)
        return True


def split_target(target: bytes | str) -> tuple[str, list[tuple[str, str]]]:
    """(raw path, decoded query pairs in order) of an origin-form target."""
    text = target.decode("latin-1") if isinstance(target, bytes) else target
    path, _, query = text.partition("?")
    return path, parse_qsl(query, keep_blank_values=True)


def _engineio_poll(query: list[tuple[str, str]]) -> bool:
    values: dict[str, list[str]] = {}
    for key, value in query:
        values.setdefault(key, []).append(value)
    return (
        len(values.get("EIO", ())) == 1
        and values["EIO"][0] in _ENGINEIO_VERSIONS
        and values.get("transport") == ["polling"]
        and len(values.get("sid", [])) == 1
        and bool(values["sid"][0])
    )


def parse_rule(text: str) -> Rule:
    """One rule from its text; RuleError says what was wrong and what a rule looks like."""
    words = text.split()
    hold = DEFAULT_HOLD
    if words and words[-1].startswith("hold="):
        hold = _hold(words.pop()[5:], text)
    if not words:
        raise RuleError(f"empty --poll-ahead rule: {RULE_FORMS}")
    head = words[0].lower()
    if head == "bayeux":
        raise RuleError(f"--poll-ahead {text!r}: {_BAYEUX_WHY}")
    if head == "engineio":
        if len(words) > 2 or (len(words) == 2 and not words[1].startswith("/")):
            raise RuleError(f"--poll-ahead {text!r}: engineio takes at most a PATH; {RULE_FORMS}")
        path = words[1] if len(words) == 2 else None
        return Rule(text, "engineio", "GET", path, None, None, frozenset({"t"}), hold)
    if len(words) != 3:
        raise RuleError(f"--poll-ahead {text!r} is not a rule: {RULE_FORMS}")
    method, path, binding = words
    if method.upper() not in _METHODS or method != method.upper():
        raise RuleError(f"--poll-ahead {text!r}: {method!r} is no HTTP method; {RULE_FORMS}")
    if not path.startswith("/") or "?" in path:
        raise RuleError(f"--poll-ahead {text!r}: PATH must start with / (no query); {RULE_FORMS}")
    param, source = _binding(binding, text)
    return Rule(text, "generic", method, path, param, source, frozenset(), hold)


def _binding(binding: str, text: str) -> tuple[str, Source]:
    param, eq, where = binding.partition("=")
    kind, colon, name = where.partition(":")
    if not (eq and colon and param and name) or kind not in ("json", "header"):
        raise RuleError(
            f"--poll-ahead {text!r}: {binding!r} is not PARAM=json:FIELD or "
            f"PARAM=header:NAME; {RULE_FORMS}"
        )
    if kind == "json" and not all(name.split(".")):
        raise RuleError(
            f"--poll-ahead {text!r}: empty part in the dotted field {name!r}; {RULE_FORMS}"
        )
    return param, Source("json" if kind == "json" else "header", name)


def _hold(value: str, text: str) -> float:
    try:
        hold = float(value)
    except ValueError:
        hold = -1.0
    if not 0 < hold <= MAX_HOLD:
        raise RuleError(
            f"--poll-ahead {text!r}: hold= takes seconds in (0, {MAX_HOLD:g}]; {RULE_FORMS}"
        )
    return hold


def parse_rules(texts: Iterable[str]) -> tuple[Rule, ...]:
    return tuple(parse_rule(text) for text in texts)


def rule_for(rules: Iterable[Rule], method: str, target: bytes) -> Rule | None:
    """The first rule a request is a poll of, if any."""
    for rule in rules:
        if rule.applies(method, target):
            return rule
    return None
