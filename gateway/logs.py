"""Log lines an operator reads: text for a person, JSON for a log shipper.

``setup_logging(level, fmt)`` is called once by the CLI. Both formats carry
the same records; only the rendering differs.

Text (``--log-format text``, the default), time with date and zone::

    2026-12-03T11:53:24.255+00:00 INFO    hopgate.link: = hop to http://sidecar:8080:
        session nc8K7w… settled on long-poll (WebSocket upgrade refused (400))
    2026-12-03T11:53:24.297+00:00 INFO    hopgate.access: 127.0.0.1 "GET /poll" 200 24
        0.0180s tunnel
    2026-12-03T11:53:25.310+00:00 WARNING hopgate.session: [nc8K7w…] < protocol error,
        closing the session: ...

(one line each, wrapped here).

The first character of a message says what it is about, as in the
websockets library's logs:

* ``=`` this gateway's own state: listening, a hop upgraded, moved between
  WebSocket and long-poll or fell back to plain HTTP, shutting down;
* ``<`` something a peer sent: a refused stream, a protocol error, a bad probe;
* no mark: a request (access lines) or the upstream (connect failures, timeouts).

``[2Avsnp…]`` names a hop session by the first characters of its id (a
full id is a credential: it never appears in a log line, nor does a resume
token).

JSON (``--log-format json``): one object per line with ``time`` (ISO 8601,
date and zone), ``level`` (lower case, as ``--log-level`` spells it),
``logger``, ``event`` (the message, without the mark) and, where they apply,
``session`` (shortened), ``upstream``, ``transport``, ``reason``; a traceback
goes under ``error``. Access lines add ``route`` ("tunnel": the request went
over the hop session; "plain": plain HTTP), ``method``, ``target``,
``status``, ``duration`` (seconds), ``peer`` ("hop" for a request that
arrived over the hop session) and ``size`` (answer body bytes, -1 unknown).

Levels: WARNING is what an operator must act on (an upstream unreachable,
a hop secret refused, a foreign origin refused); INFO a gateway's state and
one access line per legacy request; DEBUG the hop's own housekeeping (its
long-poll GETs and POSTs, session creation, hello, the gateway's own pages).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime
from typing import Any, ClassVar, Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.core.discovery import DEFAULT_SESSION_PATH
from gateway.status import GatewayStats, RequestRecord, Route

__all__ = [
    "ACCESS_LOG",
    "ROUTE_KEY",
    "AccessLog",
    "JsonFormatter",
    "TextFormatter",
    "access_line",
    "access_log_class",
    "log_request",
    "say",
    "setup_logging",
    "short_session",
]

#: The access log's logger: one line per legacy request.
ACCESS_LOG: Final = logging.getLogger("hopgate.access")
#: Where the router marks how it relayed a request (``Route``); unmarked requests went plain.
ROUTE_KEY: Final = web.RequestKey[Route]("route")
#: Paths a gateway answers itself (status, metrics, hello, hop sessions) unless it relays them.
OWN_PREFIX: Final = "/.hopgate/"
#: Characters of a session id a log line shows.
SESSION_CHARS: Final = 6
#: Record attributes (passed with ``extra=``) the JSON object carries.
FIELDS: Final = ("session", "upstream", "transport", "reason")
ACCESS_FIELDS: Final = ("route", "method", "target", "status", "duration", "peer", "size")
_SESSION_IN_PATH: Final = re.compile(re.escape(DEFAULT_SESSION_PATH) + r"/([^/?#]+)")


def short_session(session_id: str) -> str:
    """The first characters of a session id and "…": enough to follow one session."""
    if session_id.endswith("…") and len(session_id) <= SESSION_CHARS + 1:
        return session_id
    return session_id[:SESSION_CHARS] + "…"


def _iso_time(created: float) -> str:
    return datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


def _hide_sessions(text: str) -> str:
    """``text`` with every session id in a session URL shortened.

    A safety net under the log calls (which never pass a full id): an
    aiohttp error names the URL it failed on, and a hop's URLs carry the id.
    """
    if DEFAULT_SESSION_PATH not in text:
        return text
    return _SESSION_IN_PATH.sub(
        lambda m: m.group(0)[: m.start(1) - m.start(0)] + short_session(m.group(1)), text
    )


def _unmarked(message: str) -> str:
    """The message without its leading ``=``/``<`` mark (JSON has keys instead)."""
    if len(message) > 2 and message[0] in "=<" and message[1] == " ":
        return message[2:]
    return message


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: [session…] message``, the time with its date and zone."""

    def format(self, record: logging.LogRecord) -> str:
        message = _hide_sessions(record.getMessage())
        session = getattr(record, "session", None)
        if session:
            message = f"[{short_session(str(session))}] {message}"
        line = f"{_iso_time(record.created)} {record.levelname:<7} {record.name}: {message}"
        if record.exc_info:
            line += "\n" + _hide_sessions(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is escaped into ``error``)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _unmarked(_hide_sessions(record.getMessage())),
        }
        for key in (*FIELDS, *ACCESS_FIELDS):
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = short_session(str(value)) if key == "session" else value
        if record.exc_info:
            doc["error"] = _hide_sessions(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` ("debug"..."error") in ``fmt`` ("text" or "json").

    Access lines follow the level: one per legacy request at info, the
    hop's own requests too at debug, none above info.
    """
    global _handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    if _handler is not None:  # called again (a test): replace only what we installed
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    _handler = handler


_handler: logging.Handler | None = None


def say(command: str, level: str, text: str) -> None:
    """A message of the command line itself (a config warning, the error it exits on).

    ``hopgate ROLE: LEVEL: text`` on stderr, as before logging is set up; once
    ``--log-format json`` is, a JSON line like every other, so a log shipper
    reading the stream never meets a line it cannot parse.
    """
    if _handler is not None and isinstance(_handler.formatter, JsonFormatter):
        logging.getLogger("hopgate").log(getattr(logging, level.upper()), "%s", text)
    else:
        print(f"hopgate {command}: {level}: {text}", file=sys.stderr)


# -- the access log ----------------------------------------------------------------------


def access_line(rec: RequestRecord) -> str:
    """``PEER "METHOD TARGET" STATUS SIZE DURATIONs ROUTE``: one finished request."""
    return (
        f'{rec.peer} "{rec.method} {rec.target}" {rec.status} {rec.size} '
        f"{rec.duration:.4f}s {rec.route}"
    )


def log_request(rec: RequestRecord) -> None:
    """A ``GatewayStats`` observer: one info line per legacy request, with its fields."""
    if ACCESS_LOG.isEnabledFor(logging.INFO):
        fields = {key: getattr(rec, key) for key in ACCESS_FIELDS}
        fields["duration"] = round(rec.duration, 6)
        ACCESS_LOG.info("%s", access_line(rec), extra=fields)


def _hide_session(target: str) -> tuple[str, str | None]:
    """``target`` with a session id in its path shortened, and that shortened id."""
    match = _SESSION_IN_PATH.search(target)
    if match is None:
        return target, None
    short = short_session(match.group(1))
    return target[: match.start(1)] + short + target[match.end(1) :], short


def _body_size(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """Body bytes of the answer: its declared length (-1 when it had none).

    aiohttp counts the head in ``body_length`` and chunk framing too, so a
    streamed answer without ``Content-Length`` is "unknown" rather than wrong.
    """
    if request.method == "HEAD" or response.status in (101, 204, 304):
        return 0
    length = response.content_length
    return -1 if length is None else length


class AccessLog(AbstractAccessLogger):
    """aiohttp's access logger for a gateway's listener (see ``access_log_class``).

    A legacy request becomes a ``RequestRecord`` handed to ``stats.record``
    (the access line and the metrics are its observers), marked "tunnel"
    when the router sent it over the hop session. A request the gateway
    answered itself (hop session paths, hello, status, metrics) is no legacy
    request: one debug line, its session id shortened, and no record.
    """

    stats: ClassVar[GatewayStats]

    @property
    def enabled(self) -> bool:
        return True  # the metrics count every request, whatever the log level

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = request.get(ROUTE_KEY)
        peer = request.remote or "-"
        if route is None and request.path.startswith(OWN_PREFIX):
            if self.logger.isEnabledFor(logging.DEBUG):
                self._log_own(request, response, time, peer)
            return
        self.stats.record(
            RequestRecord(
                route=route or "plain",
                method=request.method,
                target=request.raw_path,
                status=response.status,
                duration=time,
                peer=peer,
                size=_body_size(request, response),
            )
        )

    def _log_own(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float, peer: str
    ) -> None:
        target, session = _hide_session(request.raw_path)
        self.logger.debug(
            '%s "%s %s" %d %d %.4fs own',
            peer,
            request.method,
            target,
            response.status,
            _body_size(request, response),
            time,
            extra={
                "session": session,
                "method": request.method,
                "target": target,
                "status": response.status,
                "peer": peer,
            },
        )


def access_log_class(stats: GatewayStats) -> type[AccessLog]:
    """An ``AccessLog`` bound to one gateway's ``stats`` (aiohttp builds the instance)."""

    class GatewayAccessLog(AccessLog):
        pass

    GatewayAccessLog.stats = stats
    return GatewayAccessLog
