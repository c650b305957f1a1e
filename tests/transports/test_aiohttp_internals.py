"""Each private aiohttp/asyncio detail ``gateway.transports.aiohttp_internals`` relies on.

One test checks the detail is still there in the shape we use (a failure
names it, so an aiohttp upgrade says exactly what to fix), one drives it
against a real server on loopback.  A control without our helper shows the
detail still matters: if aiohttp changes so that it does not, the helper
can go.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from asyncio import selector_events
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web, web_protocol

from gateway.transports.aiohttp_internals import (
    RelayedResponse,
    limit_reads,
    never_resend,
    send_frames,
    set_shutdown_timeout,
    take_over_reading,
    write_frame_now,
    write_frames_now,
)
from tests.transports.conftest import StartLowLevel

pytestmark = pytest.mark.timeout(30)


def _internal(condition: bool, name: str, what: str) -> None:
    if not condition:
        pytest.fail(
            f"aiohttp internal {name} changed: {what}. "
            "Fix gateway/transports/aiohttp_internals.py (aiohttp "
            f"{aiohttp.__version__})",
            pytrace=False,
        )


async def _raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


def _head_names(raw: bytes) -> set[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return {line.split(":", 1)[0].strip().lower() for line in head.split("\r\n")[1:]}


# -- RelayedResponse: StreamResponse._prepare_headers ---------------------------------------


def test_prepare_headers_is_still_the_step_that_adds_default_headers() -> None:
    name = "web.StreamResponse._prepare_headers"
    method = getattr(web.StreamResponse, "_prepare_headers", None)
    _internal(method is not None, name, "the method is gone")
    _internal(inspect.iscoroutinefunction(method), name, "no longer a coroutine function")
    _internal(
        list(inspect.signature(method).parameters) == ["self"],  # type: ignore[arg-type]
        name,
        f"its parameters are now {inspect.signature(method)}",  # type: ignore[arg-type]
    )
    source = inspect.getsource(web.StreamResponse._start)
    _internal("_prepare_headers" in source, name, "StreamResponse._start no longer calls it")


@pytest.mark.parametrize("relayed", [True, False])
async def test_relayed_response_adds_no_content_type_or_server(
    low_level_server: StartLowLevel, relayed: bool
) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = RelayedResponse() if relayed else web.StreamResponse()
        response.headers["X-Kept"] = "1"
        await response.prepare(request)
        await response.write(b"untyped body")
        await response.write_eof()
        return response

    port = await low_level_server(handler)
    raw = await _raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    names = _head_names(raw)
    assert raw.endswith(b"untyped body\r\n0\r\n\r\n")
    assert {"x-kept", "date", "transfer-encoding"} <= names
    if relayed:
        assert "content-type" not in names and "server" not in names
    else:  # the control: what the override exists to undo
        assert {"content-type", "server"} <= names


async def test_relayed_response_keeps_the_upstreams_own_values(
    low_level_server: StartLowLevel,
) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = RelayedResponse()
        response.headers["Content-Type"] = "text/event-stream"
        response.headers["Server"] = "legacy-comet/1.0"
        await response.prepare(request)
        await response.write_eof()
        return response

    port = await low_level_server(handler)
    raw = await _raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Content-Type: text/event-stream\r\n" in raw
    assert b"Server: legacy-comet/1.0\r\n" in raw


def test_send_headers_immediately_still_decides_when_the_head_goes() -> None:
    name = "web.StreamResponse._send_headers_immediately"
    _internal(web.StreamResponse._send_headers_immediately is True, name, "not True by default")
    source = inspect.getsource(web.StreamResponse._write_headers)
    _internal("_send_headers_immediately" in source, name, "_write_headers no longer reads it")


@pytest.mark.parametrize("hold", [True, False])
async def test_a_held_head_leaves_with_the_first_body_bytes(
    low_level_server: StartLowLevel, hold: bool
) -> None:
    prepared = asyncio.Event()
    go_on = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = RelayedResponse(hold_head=hold)
        writer = await response.prepare(request)
        assert writer is not None
        prepared.set()
        await go_on.wait()
        await response.write(b"body")
        await response.write_eof()
        return response

    port = await low_level_server(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await asyncio.wait_for(prepared.wait(), 5)
        early = b""
        with contextlib.suppress(TimeoutError):
            early = await asyncio.wait_for(reader.read(65536), 0.3)
        go_on.set()
        rest = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    if hold:
        assert early == b"" and rest.startswith(b"HTTP/1.1 200") and b"body" in rest
    else:
        assert early.startswith(b"HTTP/1.1 200") and b"body" not in early  # the head first


# -- never_resend: ClientSession._retry_connection ------------------------------------------


async def test_retry_connection_is_still_a_session_attribute() -> None:
    name = "ClientSession._retry_connection"
    _internal("_retry_connection" in aiohttp.ClientSession.ATTRS, name, "not in ATTRS")
    async with aiohttp.ClientSession() as session:
        _internal(
            getattr(session, "_retry_connection", None) is True,
            name,
            "a new session no longer has it set to True",
        )
    source = inspect.getsource(aiohttp.ClientSession._request)
    _internal("self._retry_connection" in source, name, "ClientSession._request ignores it")


async def _count_requests_with_dropping_origin(resend_guard: bool) -> int:
    """Requests an origin saw for two GETs on one pooled connection it drops after the first."""
    seen = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                seen += 1
                if seen > 1:
                    break  # close without answering, as an origin restart would
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connector = aiohttp.TCPConnector(limit=1)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            if resend_guard:
                never_resend(session)
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert await resp.read() == b"ok"
            with pytest.raises(aiohttp.ServerDisconnectedError):
                async with session.get(f"http://127.0.0.1:{port}/"):
                    pass
    finally:
        server.close()
        await server.wait_closed()
    return seen


async def test_never_resend_sends_a_dropped_get_once() -> None:
    assert await _count_requests_with_dropping_origin(resend_guard=True) == 2
    # The control: aiohttp on its own sends the second GET again.
    assert await _count_requests_with_dropping_origin(resend_guard=False) == 3


# -- take_over_reading: RequestHandler.set_parser -------------------------------------------


def test_set_parser_still_takes_a_feed_for_the_connections_later_bytes() -> None:
    name = "web_protocol.RequestHandler.set_parser"
    method = getattr(web_protocol.RequestHandler, "set_parser", None)
    _internal(method is not None, name, "the method is gone")
    params = list(inspect.signature(method).parameters)  # type: ignore[arg-type]
    _internal(params[:2] == ["self", "parser"], name, f"its parameters are now {params}")
    source = inspect.getsource(web_protocol.RequestHandler.data_received)
    _internal(
        "_payload_parser.feed_data(" in source,
        name,
        "data_received no longer hands later bytes to the installed parser's feed_data",
    )


async def test_take_over_reading_gets_every_byte_after_a_connect_head(
    low_level_server: StartLowLevel,
) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(status=200, reason="Connection established")
        await response.prepare(request)
        reader = take_over_reading(request, 1024)
        got = bytearray()
        while len(got) < len(b"early+later"):
            got += await asyncio.wait_for(reader.readany(), 5)
        await response.write(b"echo:" + bytes(got))
        request.protocol.force_close()
        return response

    port = await low_level_server(handler)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\nearly")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 Connection established")
        writer.write(b"+later")
        assert await asyncio.wait_for(reader.read(-1), 5) == b"echo:early+later"
    finally:
        writer.close()


# -- limit_reads: the selector transport's max_size ------------------------------------------


def test_selector_transport_still_reads_max_size_bytes_at_a_time() -> None:
    name = "asyncio selector transport max_size"
    transport_class: type | None = getattr(selector_events, "_SelectorSocketTransport", None)
    _internal(transport_class is not None, name, "_SelectorSocketTransport is gone")
    assert transport_class is not None
    _internal(
        isinstance(getattr(transport_class, "max_size", None), int),
        name,
        "the class has no int max_size",
    )
    source = inspect.getsource(transport_class)
    _internal("self.max_size" in source, name, "its reads no longer use max_size")


async def _buffered_after_stall(start: StartLowLevel, read_limit: int | None) -> int:
    """Bytes the client holds for a 256 KiB body nobody reads (pause at 8 KiB buffered)."""
    sent = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 256 * 1024
        await response.prepare(request)
        await asyncio.sleep(0.2)  # the head goes out alone (prepare sends it)
        await response.write(b"x" * (256 * 1024))
        sent.set()
        return response

    port = await start(handler)
    async with (
        aiohttp.ClientSession(read_bufsize=4096) as session,
        session.get(f"http://127.0.0.1:{port}/") as resp,
    ):
        transport = resp.connection.transport if resp.connection else None
        _internal(
            isinstance(getattr(transport, "max_size", None), int),
            "asyncio selector transport max_size",
            f"{type(transport).__name__} has no int max_size",
        )
        if read_limit is not None:
            limit_reads(resp, read_limit)
            assert transport.max_size == read_limit  # type: ignore[union-attr]
        await asyncio.wait_for(sent.wait(), 5)
        await asyncio.sleep(0.3)
        held = len(resp.content.read_nowait())
        resp.close()
    return held


async def test_limit_reads_bounds_what_a_stalled_response_holds(
    low_level_server: StartLowLevel,
) -> None:
    # aiohttp pauses reading past 2 * read_bufsize; each read may add one max_size.
    assert await _buffered_after_stall(low_level_server, 1024) <= 8192 + 1024
    # The control: one asyncio read takes whatever the kernel holds, up to 256 KiB.
    assert await _buffered_after_stall(low_level_server, None) > 8192 + 1024


def test_websocket_writer_still_has_a_synchronous_frame_write() -> None:
    from aiohttp._websocket.writer import WebSocketWriter

    method = getattr(WebSocketWriter, "_write_websocket_frame", None)
    _internal(
        method is not None and not inspect.iscoroutinefunction(method),
        "WebSocketWriter._write_websocket_frame",
        "no longer a plain (synchronous) method",
    )
    params = list(inspect.signature(method).parameters)
    _internal(params[:4] == ["self", "message", "opcode", "rsv"], "_write_websocket_frame", "args")


async def test_write_frame_now_reaches_the_peer_and_declines_once_closing() -> None:
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            received.append(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            assert write_frame_now(ws, b"one") and write_frame_now(ws, b"two")
            await ws.send_bytes(b"three")  # the async path after sync writes: same stream
            async with asyncio.timeout(5):
                while len(received) < 3:
                    await asyncio.sleep(0.01)
            await ws.close()
            assert not write_frame_now(ws, b"late")
        assert received == [b"one", b"two", b"three"]
    finally:
        await runner.cleanup()


# -- send_frames: the writer's parts, BaseProtocol._drain_helper, websocket_mask ----------------


def test_websocket_writer_still_has_the_parts_send_frames_uses() -> None:
    from aiohttp._websocket import helpers
    from aiohttp._websocket.writer import WebSocketWriter
    from aiohttp.base_protocol import BaseProtocol

    loop = asyncio.new_event_loop()
    try:
        writer = WebSocketWriter(BaseProtocol(loop), asyncio.Transport(), use_mask=True)
    finally:
        loop.close()
    for name in ("protocol", "transport", "use_mask", "compress", "_closing", "_output_size"):
        _internal(hasattr(writer, name), f"WebSocketWriter.{name}", "attribute gone")
    helper = getattr(BaseProtocol, "_drain_helper", None)
    _internal(
        helper is not None and inspect.iscoroutinefunction(helper),
        "BaseProtocol._drain_helper",
        "no longer a coroutine method",
    )
    mask = getattr(helpers, "websocket_mask", None)
    _internal(mask is not None, "aiohttp._websocket.helpers.websocket_mask", "gone")
    data = bytearray(b"\x00\x01\x02\x03\x04")
    mask(b"\x0f\x0f\xf0\xf0", data)
    _internal(data == b"\x0f\x0e\xf2\xf3\x0b", "websocket_mask", "masks differently")


async def _ws_site(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/"


def _count_writes(ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> list[int]:
    """Record the size of every ``transport.write`` under ``ws`` (the real write still runs)."""
    assert ws._writer is not None
    transport = ws._writer.transport
    real, sizes = transport.write, []

    def write(data: Any) -> None:
        sizes.append(len(data))
        real(data)

    transport.write = write  # type: ignore[method-assign]
    return sizes


async def test_send_frames_writes_masked_and_plain_frames_in_one_write_each() -> None:
    from_client: list[tuple[WSMsgType, Any]] = []
    from_server = ["s1", b"s2" * 40_000, b"", "s\u00e9"]  # short, 64-bit length, empty, UTF-8
    server_writes: list[int] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sizes = _count_writes(ws)
        async for msg in ws:
            from_client.append((msg.type, msg.data))
            if len(from_client) == 5:
                assert await send_frames(ws, from_server)
                server_writes.append(len(sizes))
        return ws

    runner, url = await _ws_site(handler)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            sizes = _count_writes(ws)
            assert await send_frames(ws, ["a", b"b" * 300, b"c" * 70_000])
            assert len(sizes) == 1  # masked frames (we are the client), one write
            await ws.send_bytes(b"d")  # aiohttp's own path after ours: same stream
            assert await send_frames(ws, ["e"])
            got = [await ws.receive(timeout=5) for _ in from_server]
            await ws.close()
            assert not await send_frames(ws, [b"late"])
        assert from_client == [
            (WSMsgType.TEXT, "a"),
            (WSMsgType.BINARY, b"b" * 300),
            (WSMsgType.BINARY, b"c" * 70_000),
            (WSMsgType.BINARY, b"d"),
            (WSMsgType.TEXT, "e"),
        ]
        assert [(m.type, m.data) for m in got] == [
            (WSMsgType.TEXT, "s1"),
            (WSMsgType.BINARY, b"s2" * 40_000),
            (WSMsgType.BINARY, b""),
            (WSMsgType.TEXT, "s\u00e9"),
        ]
        assert server_writes == [1]  # plain frames (we are the server), one write
    finally:
        await runner.cleanup()


async def test_send_frames_waits_while_the_transport_is_above_its_high_water_mark() -> None:
    go = asyncio.Event()
    seen: list[int] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await go.wait()  # reads nothing until then: the client's socket fills
        async for msg in ws:
            seen.append(msg.data[0])
        return ws

    runner, url = await _ws_site(handler)
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            assert ws._writer is not None
            transport = ws._writer.transport
            _, high = transport.get_write_buffer_limits()
            batch = [bytes([i % 256]) + bytes(65535) for i in range(4)]
            calls = 0
            while True:
                calls += 1
                assert calls < 400, "send_frames never waited"  # loopback fills far earlier
                sending = asyncio.ensure_future(send_frames(ws, batch))
                done, _ = await asyncio.wait({sending}, timeout=0.5)
                if not done:
                    break
                assert sending.result()
                # Written only below the mark: at most the mark plus one call's frames.
                assert transport.get_write_buffer_size() <= high + 4 * (65536 + 14)
            assert transport.get_write_buffer_size() > high  # it waits for room, not for nothing
            before = transport.get_write_buffer_size()
            assert not write_frames_now(ws, [b"\xff"])  # the one that does not wait declines
            assert transport.get_write_buffer_size() == before
            go.set()
            async with asyncio.timeout(20):
                assert await sending
                while len(seen) < 4 * calls:
                    await asyncio.sleep(0.01)
            assert seen == [i % 256 for i in range(4)] * calls
    finally:
        await runner.cleanup()


# -- the lean origin client: ResponseHandler driven by hand ---------------------------------


def test_response_handler_still_has_what_the_lean_origin_client_calls() -> None:
    from aiohttp.client_proto import ResponseHandler

    params = inspect.signature(ResponseHandler.set_response_params).parameters
    wanted = {"skip_payload", "read_until_eof", "auto_decompress", "read_timeout", "read_bufsize"}
    _internal(wanted <= set(params), "ResponseHandler.set_response_params", f"lost {wanted}")
    for name in ("start_timeout", "read", "is_connected", "close", "abort", "_drain_helper"):
        _internal(callable(getattr(ResponseHandler, name, None)), f"ResponseHandler.{name}", "gone")
    for name in ("should_close", "writing_paused"):
        _internal(hasattr(ResponseHandler, name), f"ResponseHandler.{name}", "gone")


async def test_origin_protocol_reads_an_answer_written_by_hand(aiohttp_server: Any) -> None:
    from gateway.transports.aiohttp_internals import (
        drain_writes,
        expect_response,
        origin_protocol,
    )

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"answer")

    app = web.Application()
    app.router.add_get("/", answer)
    server = await aiohttp_server(app)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: origin_protocol(loop), "127.0.0.1", server.port
    )
    expect_response(protocol, head_only=False, read_timeout=5, read_size=16384)
    assert protocol.transport is not None
    protocol.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await drain_writes(protocol)
    message, payload = await asyncio.wait_for(protocol.read(), 5)
    assert message.code == 200 and await payload.read() == b"answer"
    assert not protocol.should_close
    protocol.close()


async def test_runner_still_keeps_the_shutdown_timeout_cleanup_reads() -> None:
    runner = web.ServerRunner(web.Server(lambda r: None), shutdown_timeout=60.0)  # type: ignore[arg-type,return-value]
    set_shutdown_timeout(runner, 0.5)
    assert runner._shutdown_timeout == 0.5, "BaseRunner._shutdown_timeout: set_shutdown_timeout"
