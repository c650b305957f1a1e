"""A legacy long-poll ("Comet") chat server that knows nothing of hopgate.

It is the kind of origin hopgate is built to sit in front of, written the way
such servers were: a client holds ``GET /poll?since=N`` open until there is
something newer than message ``N`` (or until ``hold`` seconds pass, when it
gets an empty list and simply polls again), and sends with a separate
``POST /send``.  Nothing here may import or mention the gateway: the demo
only proves transparency if the origin is genuinely unaware of it.

Protocol::

    GET  /poll?since=N   -> {"messages": [{"id", "from", "text", "ts"}...], "next": M}
    POST /send {"from", "text"[, "client_msg_id"]}
                         -> {"id", "ts", "client_msg_id", "duplicate"}
    GET  /               -> a small HTML page with a plain long-poll JS client

Ids are consecutive integers starting at 1, so ``since`` is simply "the last
id I have".  ``client_msg_id`` lets a client retry a ``POST`` safely: a
repeated ``(from, client_msg_id)`` returns the first message instead of
storing a second one.  Messages carry their ``client_msg_id`` (when one was
given) so a sender can recognise its own message in the poll stream before
the ``POST`` answer arrives.

Everything a misbehaving client could grow is bounded: the history is a ring
buffer, bodies are size-limited (413), and so is the number of held polls
(503 with ``Retry-After``).  Held polls sleep on one ``asyncio.Condition``
that ``/send`` notifies; nothing polls a clock.

Run on its own with ``python -m gateway.demo.comet --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_HOLD = 25.0
DEFAULT_HISTORY = 1000
DEFAULT_MAX_BODY = 4096
DEFAULT_MAX_HELD = 512
MAX_NAME = 64
MAX_CLIENT_MSG_ID = 128

NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, kw_only=True)
class Message:
    """One chat message as stored and as sent to pollers."""

    id: int
    sender: str
    text: str
    ts: float
    client_msg_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "from": self.sender, "text": self.text, "ts": self.ts}
        if self.client_msg_id is not None:
            doc["client_msg_id"] = self.client_msg_id
        return doc


@dataclass
class ChatRoom:
    """The server's state: bounded history plus the condition held polls sleep on."""

    hold: float
    history: int
    max_body: int
    max_held: int
    messages: deque[Message] = field(init=False)
    last_id: int = 0
    held: int = 0
    closing: bool = False
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    #: ``(from, client_msg_id)`` -> message, so a retried ``POST`` is not stored twice.
    by_client_id: OrderedDict[tuple[str, str], Message] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.messages = deque(maxlen=self.history)

    def after(self, since: int) -> list[Message]:
        """Messages with ``id > since`` still in the history (ids are consecutive)."""
        if not self.messages or since >= self.last_id:
            return []
        skip = max(0, since - self.messages[0].id + 1)
        return list(itertools.islice(self.messages, skip, None))

    def add(self, sender: str, text: str, client_msg_id: str | None) -> tuple[Message, bool]:
        """Store a message unless it is a retry; returns ``(message, duplicate)``."""
        key = (sender, client_msg_id) if client_msg_id is not None else None
        if key is not None and key in self.by_client_id:
            return self.by_client_id[key], True
        self.last_id += 1
        message = Message(
            id=self.last_id, sender=sender, text=text, ts=time.time(), client_msg_id=client_msg_id
        )
        self.messages.append(message)
        if key is not None:
            self.by_client_id[key] = message
            while len(self.by_client_id) > self.history:
                self.by_client_id.popitem(last=False)
        return message, False


ROOM = web.AppKey("room", ChatRoom)


def make_app(
    hold: float = DEFAULT_HOLD,
    history: int = DEFAULT_HISTORY,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_held: int = DEFAULT_MAX_HELD,
) -> web.Application:
    """The chat application; ``hold`` is how long an empty poll is held open."""
    if hold <= 0 or history < 1 or max_body < 1 or max_held < 1:
        raise ValueError("hold, history, max_body and max_held must all be positive")
    app = web.Application(client_max_size=max_body + 1)
    app[ROOM] = ChatRoom(hold=hold, history=history, max_body=max_body, max_held=max_held)
    app.router.add_get("/", index)
    app.router.add_get("/poll", poll)
    app.router.add_post("/send", send)
    app.on_shutdown.append(_release_held_polls)
    return app


async def _release_held_polls(app: web.Application) -> None:
    """On shutdown answer every held poll now instead of after ``hold`` seconds."""
    room = app[ROOM]
    async with room.changed:
        room.closing = True
        room.changed.notify_all()


def _json(doc: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, headers=NO_STORE)


def _error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    headers = dict(NO_STORE)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return web.json_response({"error": message}, status=status, headers=headers)


def _parse_since(request: web.Request) -> int | None:
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return None
    return since if since >= 0 else None


async def poll(request: web.Request) -> web.Response:
    """``GET /poll?since=N``: answer now if there is news, else hold up to ``hold`` s."""
    room = request.app[ROOM]
    since = _parse_since(request)
    if since is None:
        return _error(400, "since must be a non-negative integer message id")
    if since > room.last_id:
        # The client knows ids this server never issued (it restarted): resync.
        return _json({"messages": [], "next": room.last_id})
    if since == room.last_id:
        if room.held >= room.max_held:
            limit = room.max_held
            return _error(503, f"too many held polls (limit {limit}); retry shortly", retry_after=1)
        await _hold(room, since)
    messages = room.after(since)
    next_id = messages[-1].id if messages else since
    return _json({"messages": [m.as_json() for m in messages], "next": next_id})


async def _hold(room: ChatRoom, since: int) -> None:
    """Sleep until a message newer than ``since`` exists, shutdown, or ``hold`` passes."""
    room.held += 1
    try:
        async with asyncio.timeout(room.hold), room.changed:
            await room.changed.wait_for(lambda: room.last_id > since or room.closing)
    except TimeoutError:
        pass
    finally:
        room.held -= 1


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or ``None`` as soon as it exceeds ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(8192):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _parse_send(body: bytes) -> tuple[str, str, str | None] | str:
    """``(from, text, client_msg_id)`` from a ``/send`` body, or what is wrong with it."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return 'body must be a JSON object like {"from": "ann", "text": "hi"}'
    if not isinstance(doc, dict):
        return "body must be a JSON object"
    sender, text, client_msg_id = doc.get("from"), doc.get("text"), doc.get("client_msg_id")
    if not isinstance(sender, str) or not 0 < len(sender) <= MAX_NAME:
        return f'"from" must be a non-empty string of at most {MAX_NAME} characters'
    if not isinstance(text, str):
        return '"text" must be a string'
    if client_msg_id is not None and not (
        isinstance(client_msg_id, str) and len(client_msg_id) <= MAX_CLIENT_MSG_ID
    ):
        return f'"client_msg_id" must be a string of at most {MAX_CLIENT_MSG_ID} characters'
    return sender, text, client_msg_id


async def send(request: web.Request) -> web.Response:
    """``POST /send``: store the message and wake every held poll."""
    room = request.app[ROOM]
    body = await _read_limited(request, room.max_body)
    if body is None:
        return _error(413, f"message too large: the limit is {room.max_body} bytes of JSON")
    parsed = _parse_send(body)
    if isinstance(parsed, str):
        return _error(400, parsed)
    async with room.changed:
        message, duplicate = room.add(*parsed)
        room.changed.notify_all()
    answer = {"id": message.id, "ts": message.ts, "client_msg_id": message.client_msg_id}
    return _json({**answer, "duplicate": duplicate})


async def index(request: web.Request) -> web.Response:
    """A minimal browser client: long-poll loop plus a send form, no libraries."""
    return web.Response(text=INDEX_HTML, content_type="text/html", headers=NO_STORE)


INDEX_HTML = """\
<!doctype html>
<html><head><meta charset="utf-8"><title>Comet chat</title>
<style>body{font:14px sans-serif;max-width:40em;margin:2em auto}
#log{height:20em;overflow-y:auto;border:1px solid #ccc;padding:.5em}</style></head>
<body><h1>Comet chat</h1><div id="log"></div>
<form id="f"><input id="name" size="8" placeholder="name">
<input id="text" size="40" placeholder="message" autofocus><button>Send</button></form>
<script>
var since = 0, log = document.getElementById("log");
function show(m) {
  var p = document.createElement("div");
  p.textContent = "#" + m.id + " " + m.from + ": " + m.text;
  log.appendChild(p); log.scrollTop = log.scrollHeight;
}
function poll() {
  fetch("poll?since=" + since, {cache: "no-store"})
    .then(function (r) { if (!r.ok) throw r.status; return r.json(); })
    .then(function (d) { d.messages.forEach(show); since = d.next; poll(); })
    .catch(function () { setTimeout(poll, 2000); });
}
document.getElementById("f").onsubmit = function (e) {
  e.preventDefault();
  var t = document.getElementById("text");
  fetch("send", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({from: document.getElementById("name").value || "anon",
                          text: t.value})});
  t.value = "";
};
poll();
</script></body></html>
"""


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.demo.comet``: serve the chat until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo.comet",
        description="A legacy long-poll chat server (knows nothing of hopgate).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--hold", type=float, default=DEFAULT_HOLD, help="seconds an empty poll is held"
    )
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, help="messages kept")
    args = parser.parse_args(argv)
    web.run_app(
        make_app(args.hold, args.history), host=args.host, port=args.port, handler_cancellation=True
    )


if __name__ == "__main__":
    main()
