"""Poll-ahead, the pure part: rules, what a poll's answer predicts, and who may use it.

A long-poll client re-polls the moment an answer reaches it; across a slow
hop that re-poll costs half a round trip before the origin holds it again.
With a rule naming the poll endpoint, the server gateway issues the client's
next poll itself as soon as the previous answer left, sends the origin's
answer down the hop at once, and the client gateway answers the client's next
poll from it locally (``docs/howto/poll-ahead.md``).

=============  ================================================================
``rules``      ``--poll-ahead`` rules and dialects, parsed and matched to requests
``predict``    the next request from an answer (cursor sources, Engine.IO payloads)
``book``       the client gateway's held predictions: matching, caps, expiry
``codec``      the PUSH frame payloads both gateways exchange (hostile-input safe)
=============  ================================================================

No clock, no I/O: callers pass ``now``.
"""

from gateway.core.pollahead.book import Book, Hit, Identity
from gateway.core.pollahead.codec import Descriptor, Op
from gateway.core.pollahead.predict import Answer, next_target
from gateway.core.pollahead.rules import RULE_FORMS, Rule, RuleError, parse_rule, parse_rules

__all__ = [
    "RULE_FORMS",
    "Answer",
    "Book",
    "Descriptor",
    "Hit",
    "Identity",
    "Op",
    "Rule",
    "RuleError",
    "next_target",
    "parse_rule",
    "parse_rules",
]
