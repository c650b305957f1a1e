"""Logs an operator can use: ``--log-format text|json``, levels that mean something.

The formatters on their own first, then real ``hopgate server`` and
``hopgate client`` processes: every line they write in JSON parses, tunnelled
requests appear in the sidecar's access log marked "tunnel" (once per
gateway), the hop's own long-poll requests only at debug and never with a
full session id, an unreachable upstream at WARNING, and a text line's time
has its date and zone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.logs import JsonFormatter, TextFormatter, short_session
from tests.conftest import MakeOrigin
from tests.faultproxy import FaultProxy
from tests.helpers import until
from tests.processes import GatewayProcess, SpawnGateway, free_port, gateway_command

pytestmark = pytest.mark.timeout(120)

ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")
SESSION_FIELD = re.compile(r"^[A-Za-z0-9_-]{6}…$")
KEYS = {"time", "level", "logger", "event"}
FULL_ID = "Zx9ab_cdEFghIJklMNopQr"  # 22 characters, as new_session_id makes them


def record(msg: str, *args: Any, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("hopgate.test", level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


# -- the formatters -----------------------------------------------------------------------


def test_a_json_line_has_the_keys_and_never_a_full_session_id() -> None:
    line = JsonFormatter().format(
        record("= hop to %s moved", "http://up", session=FULL_ID, upstream="http://up", reason="x")
    )
    doc = json.loads(line)
    assert "\n" not in line
    assert ISO_TIME.match(doc["time"]), doc["time"]
    assert doc["level"] == "info" and doc["logger"] == "hopgate.test"
    assert doc["event"] == "hop to http://up moved"  # the "=" mark is for text lines
    assert doc["session"] == FULL_ID[:6] + "…" and FULL_ID not in line
    assert (doc["upstream"], doc["reason"]) == ("http://up", "x")
    assert "transport" not in doc  # a field is there only where it applies


def test_a_session_url_in_a_message_is_shortened_too() -> None:
    """aiohttp errors name the URL they failed on; a hop's URLs carry the session id."""
    url = f"http://up/.hopgate/session/{FULL_ID}?epoch=2"
    rec = record("lost long-poll: poll failed: 404, message='Not Found', url='%s'", url)
    event = json.loads(JsonFormatter().format(rec))["event"]
    for line in (event, TextFormatter().format(rec)):
        assert FULL_ID not in line and f"/.hopgate/session/{FULL_ID[:6]}…?epoch=2" in line


def test_a_traceback_stays_inside_its_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("handler failed", level=logging.ERROR)
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert line.count("\n") == 0
    doc = json.loads(line)
    assert doc["level"] == "error" and "ValueError: boom" in doc["error"]


def test_a_text_line_has_date_zone_and_the_short_session() -> None:
    rec = record("< protocol error", level=logging.WARNING, session=FULL_ID)
    line = TextFormatter().format(rec)
    stamp, rest = line.split(" ", 1)
    assert ISO_TIME.match(stamp), line
    assert rest == f"WARNING hopgate.test: [{FULL_ID[:6]}…] < protocol error"


def test_short_session_is_idempotent() -> None:
    assert short_session(FULL_ID) == short_session(short_session(FULL_ID)) == "Zx9ab_…"


# -- real processes ------------------------------------------------------------------------


def parsed(gw: GatewayProcess) -> list[dict[str, Any]]:
    """Every line the process wrote, each parsed as JSON (a line that does not parse fails)."""
    docs = []
    for line in gw.lines:
        try:
            doc = json.loads(line)
        except ValueError:
            pytest.fail(f"{gw.name} wrote a line that is not JSON: {line!r}\n{gw.output()}")
        assert set(doc) >= KEYS, line
        assert ISO_TIME.match(doc["time"]), line
        docs.append(doc)
    return docs


def access(docs: list[dict[str, Any]], route: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["logger"] == "hopgate.access" and d.get("route") == route]


def assert_no_full_session_id(gateways: list[GatewayProcess], docs: list[dict[str, Any]]) -> None:
    """Every session a line names is shortened, and no line anywhere holds more of its id."""
    prefixes = {d["session"] for d in docs if "session" in d}
    assert prefixes, "no line named a session"
    for prefix in prefixes:
        assert SESSION_FIELD.match(prefix), prefix
        longer = re.compile(re.escape(prefix[:6]) + r"[A-Za-z0-9_-]")
        for gw in gateways:
            leaked = [line for line in gw.lines if longer.search(line)]
            assert leaked == [], f"{gw.name} logged a full session id: {leaked[:3]}"


async def legacy(request: web.Request) -> web.Response:
    return web.Response(text=f"legacy answer to {request.path}")


async def hop_transport(client: GatewayProcess) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{client.url}/.hopgate/status") as resp,
    ):
        status = await resp.json()
    return str(status["upstreams"][0]["transport"])


async def test_json_logs_of_a_long_poll_hop_name_each_request_once_per_gateway(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway
) -> None:
    origin = await make_origin(legacy)
    sidecar = await asyncio.to_thread(
        spawn_gateway, "server", "--upstream", origin, "--log-format", "json", log_level="debug"
    )
    # A path that refuses WebSocket: the hop settles on a long-poll session.
    async with FaultProxy("127.0.0.1", sidecar.port) as proxy:
        proxy.refuse_upgrades = True
        client = await asyncio.to_thread(
            spawn_gateway, "client", "--upstream", proxy.url, "--log-format", "json"
        )

        async def on_long_poll() -> bool:
            return await hop_transport(client) == "long-poll"

        await until(on_long_poll, "the hop on a long-poll session", timeout=30)
        async with aiohttp.ClientSession() as http:
            for i in range(5):
                async with http.get(f"{client.url}/chat/{i}?since=0") as resp:
                    assert resp.status == 200
            async with http.get(f"{sidecar.url}/direct") as resp:
                assert resp.status == 200
        await until(
            lambda: len(access(parsed(sidecar), "tunnel")) == 5, "the sidecar's access lines"
        )
        await asyncio.to_thread(client.stop)
    await asyncio.to_thread(sidecar.stop)
    side, near = parsed(sidecar), parsed(client)

    # Each request once per gateway: tunnelled at both ends, the direct one plain at the sidecar.
    chat = [f"/chat/{i}?since=0" for i in range(5)]
    assert [d["target"] for d in access(side, "tunnel")] == chat
    assert [d["target"] for d in access(near, "tunnel")] == chat
    assert all(d["peer"] == "hop" and d["status"] == 200 for d in access(side, "tunnel"))
    assert [d["target"] for d in access(side, "plain")] == ["/direct"]
    assert access(near, "plain") == []
    for doc in access(side, "tunnel") + access(near, "tunnel"):
        assert doc["level"] == "info" and doc["method"] == "GET" and doc["duration"] >= 0

    # The hop's own requests: at debug only, the session id shortened.
    # (A streamed poll is logged when it ends, which may come after the sidecar
    # stopped; the session's POSTs always end: the creating one, the streamed one.)
    own = [d for d in side if str(d.get("target", "")).startswith("/.hopgate/session")]
    assert any(d["method"] == "POST" and "/.hopgate/session/" in d["target"] for d in own), own
    assert {d["level"] for d in own} == {"debug"}
    loud = [d for d in side + near if d["level"] != "debug" and "/.hopgate/" in json.dumps(d)]
    assert loud == []
    assert_no_full_session_id([sidecar, client], side + near)

    # The client says its hop is on long-poll, and why (never "upgraded").
    settled = [d for d in near if d.get("transport") == "long-poll" and d.get("upstream")]
    assert settled and all("upgraded" not in d["event"] for d in near), near


async def test_an_unreachable_upstream_is_a_warning(spawn_gateway: SpawnGateway) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    flags = ("--upstream", dead, "--log-format", "json")
    client = await asyncio.to_thread(spawn_gateway, "client", *flags, log_level="warning")
    sidecar = await asyncio.to_thread(spawn_gateway, "server", *flags, log_level="warning")
    async with aiohttp.ClientSession() as http:
        for gw in (client, sidecar):
            async with http.get(f"{gw.url}/anything") as resp:
                assert resp.status == 502
    for gw in (client, sidecar):

        def warned(gw: GatewayProcess = gw) -> bool:
            return any(dead in d.get("upstream", "") for d in parsed(gw))

        await until(warned, f"{gw.name}'s warning naming the upstream")
        await asyncio.to_thread(gw.stop)
        docs = parsed(gw)
        assert {d["level"] for d in docs} <= {"warning", "error"}, docs
        assert not [d for d in docs if "Error(" in d["event"]], "an exception repr was logged"


async def test_a_hop_secret_mismatch_is_a_warning_at_both_ends(
    make_origin: MakeOrigin, spawn_gateway: SpawnGateway, tmp_path: Path
) -> None:
    (tmp_path / "a").write_text("the sidecar's secret\n")
    (tmp_path / "b").write_text("another secret, 16+ bytes\n")
    origin = await make_origin(legacy)
    quiet = {"log_level": "warning"}
    sidecar = await asyncio.to_thread(
        spawn_gateway, "server", "--upstream", origin, "--hop-secret-file", str(tmp_path / "a"),
        "--log-format", "json", **quiet,
    )  # fmt: skip
    client = await asyncio.to_thread(
        spawn_gateway, "client", "--upstream", sidecar.url, "--hop-secret-file",
        str(tmp_path / "b"), "--log-format", "json", **quiet,
    )  # fmt: skip

    def refused() -> bool:
        near = [d for d in parsed(client) if "(403)" in d["event"] and d.get("upstream")]
        side = [d for d in parsed(sidecar) if "refused 1 hop session" in d["event"]]
        return bool(near and side)

    await until(refused, "a warning at each end")
    for gw in (client, sidecar):
        await asyncio.to_thread(gw.stop)
        assert {d["level"] for d in parsed(gw)} == {"warning"}, gw.output()


def test_the_error_a_json_gateway_exits_on_is_a_json_line_too() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            gateway_command(
                "server", "--listen", f"127.0.0.1:{port}", "--upstream", "http://127.0.0.1:9",
                "--log-format", "json",
            ),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    docs = [json.loads(line) for line in done.stderr.splitlines()]
    assert docs[-1]["level"] == "error" and f"127.0.0.1:{port}" in docs[-1]["event"], docs


async def test_text_lines_carry_the_date_and_zone(spawn_gateway: SpawnGateway) -> None:
    server = await asyncio.to_thread(
        spawn_gateway, "server", "--upstream", f"http://127.0.0.1:{free_port()}"
    )
    await asyncio.to_thread(server.stop)
    lines = [line for line in server.lines if line.strip()]
    assert lines
    for line in lines:
        stamp, level, logger, _ = line.split(None, 3)
        assert ISO_TIME.match(stamp), line
        assert level in ("INFO", "WARNING") and logger.startswith("hopgate"), line
